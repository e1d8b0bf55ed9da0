"""Metrics and health logic without databases: the position clock, hooks, the endpoint."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest

from cdcflow import health
from cdcflow.config import Settings
from cdcflow.metrics import Metrics, PositionClock, Sampler, attach
from cdcflow.projections.base import CycleResult
from cdcflow.redact import REDACTOR
from cdcflow.sources.base import BatchResult
from cdcflow.worker import Worker


class Idle(Worker):
    """A worker whose steps do nothing: its observers are what these tests look at."""

    def step(self, token: int | None) -> float:
        return 1.0


def clock() -> PositionClock:
    c = PositionClock()
    for t, lsn in ((100.0, 10), (101.0, 20), (102.0, 30)):
        c.add(t, lsn)
    return c


def test_staleness_is_the_age_of_the_newest_covered_sample():
    c = clock()
    assert c.staleness(30, now=105) == 3
    assert c.staleness(29, now=105) == 3  # one byte short (an idle watermark) still covers it
    assert c.staleness(24, now=105) == pytest.approx(3.5)  # halfway between the samples at 20 and 30
    assert c.staleness(19, now=105) == 4
    assert c.staleness(14, now=105) == pytest.approx(4.5)
    assert c.staleness(5, now=105) == 5  # covers nothing sampled: at least as old as the oldest sample
    assert c.staleness(None, now=105) == 5
    assert c.staleness(10**9, now=101.5) == 0  # ahead of every sample: fresh
    assert c.latest == 30


def test_positions_never_go_back_and_prune_keeps_what_is_asked_for():
    c = clock()
    c.add(103.0, 25)  # a lower reading is clamped
    assert c.latest == 30
    c.prune(19)
    assert c.staleness(19, now=105) == 4 and c.staleness(30, now=105) == 2
    c.prune(10**9)
    assert c.staleness(30, now=105) == 2


def test_empty_clock_counts_from_its_start():
    c = PositionClock()
    assert c.staleness(123, now=c.started + 7) == pytest.approx(7)


class FakeWorker:
    def __init__(self, name: str, alive: bool = True) -> None:
        self.name = name
        self.alive = alive


def telemetry(workers, fresh: dict[str, float], limit: float = 10.0) -> SimpleNamespace:
    sampler = SimpleNamespace(projection_names=list(fresh), freshness=lambda name: fresh[name])
    return SimpleNamespace(  # what health reads of a Telemetry
        workers=workers,
        sampler=sampler,
        metrics=Metrics(),
        settings=Settings(health_max_freshness_seconds=limit),
        console=None,
    )


def test_health_needs_live_workers_and_fresh_projections():
    assert health.check(telemetry([FakeWorker("a")], {"p": 1.0})) == (True, "ok")
    ok, why = health.check(telemetry([FakeWorker("a"), FakeWorker("b", alive=False)], {"p": 1.0}))
    assert not ok and why == "worker b is not running"
    ok, why = health.check(telemetry([FakeWorker("a")], {"p": 12.5}))
    assert not ok and why == "projection p is 12.5s behind the source (limit 10s)"


def test_observers_count_batches_errors_cycles_and_compaction():
    m = Metrics()
    ingest = Idle("ingest[s]", threading.Event())
    attach(ingest, m, "s")
    ingest.notify(lambda o: o.batch_staged(ingest, BatchResult(end_lsn=5, rows=3, rows_by_capture={"orders": 3}), 0.25))
    ingest.errored(TimeoutError("x"))
    assert ingest.last_error == "x"
    proj = Idle("projection[p]", threading.Event())
    attach(proj, m, "s")
    proj.notify(lambda o: o.cycle_done(proj, "p", CycleResult(), 0.5))
    proj.errored(ValueError("boom"))
    compaction = Idle("compaction[s]", threading.Event())
    attach(compaction, m, "s")
    compaction.notify(lambda o: o.compacted(compaction, "orders", 7))
    page = generate_latest(m.registry).decode()
    assert 'cdcflow_changes_staged_total{capture="orders",source="s"} 3.0' in page
    assert 'cdcflow_batch_duration_seconds_count{source="s"} 1.0' in page
    assert 'cdcflow_errors_total{kind="TimeoutError",worker="ingest[s]"} 1.0' in page
    assert 'cdcflow_errors_total{kind="ValueError",worker="projection[p]"} 1.0' in page
    assert 'cdcflow_projection_cycle_duration_seconds_count{projection="p"} 1.0' in page
    assert 'cdcflow_compaction_deleted_rows_total{capture="orders"} 7.0' in page


def test_a_failing_observer_never_reaches_the_worker():
    m = Metrics()
    ingest = Idle("ingest[s]", threading.Event())
    attach(ingest, m, "s")
    ingest.notify(lambda o: o.batch_staged(ingest, None, 0.1))  # type: ignore[arg-type]  # a broken result: swallowed


def test_sampler_publishes_from_positions_without_databases():
    s = Sampler(Settings(source_dsn="x", serving_dsn="y"), Metrics(), threading.Event(), ["p"], interval=1)
    s.clock = clock()
    s.watermarks = {"public_orders": 20}
    s.as_of = {"p": 10}
    s.projection_states = {"p": "OK"}
    s.publish(now=105)
    page = generate_latest(s.metrics.registry).decode()
    assert 'cdcflow_capture_lag_seconds{capture="public_orders",source="source1"} 3.9' in page
    assert 'cdcflow_capture_lag_bytes{capture="public_orders",source="source1"} 10.0' in page
    assert 'cdcflow_projection_freshness_seconds{projection="p"} 4.9' in page
    assert 'cdcflow_projection_status{projection="p",status="OK"} 1.0' in page
    assert 'cdcflow_projection_status{projection="p",status="ERROR"} 0.0' in page


def test_endpoint_serves_metrics_and_health_on_loopback():
    stop = threading.Event()
    t = telemetry([FakeWorker("a", alive=False)], {"p": 1.0})
    REDACTOR.add_secret("sekrit-in-a-label")
    t.metrics.errors.labels("sekrit-in-a-label", "X").inc()
    server = health.serve(t, "127.0.0.1", 0, stop)
    assert server is not None
    server.thread.start()
    port = server.server_address[1]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            page = r.read().decode()
            assert r.headers["Content-Type"].startswith("text/plain")
        assert "cdcflow_errors_total" in page and "sekrit-in-a-label" not in page
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        with info.value as resp:
            assert resp.code == 503
            assert json.loads(resp.read()) == {"status": "failing", "reason": "worker a is not running"}
        t.workers[0].alive = True
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert r.status == 200 and json.loads(r.read()) == {"status": "ok"}
    finally:
        stop.set()
        server.thread.join(5)
    assert not server.thread.is_alive()
