"""/metrics and /healthz of a live runtime against the real PostgreSQL."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from cdcflow.bootstrap import bootstrap
from tests.conftest import RunningPipeline, wait_caught_up, wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


def value(page: str, name: str, **labels: str) -> float | None:
    """One sample of the Prometheus text page (labels given must match)."""
    for line in page.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        m = re.match(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    return None


@pytest.fixture
def live(edbs, request):
    """A running pipeline with its endpoint on a free port; the freshness limit is 2 s."""
    port = free_port()
    overrides = getattr(request, "param", {})
    settings = edbs.settings.replace(
        metrics_port=port, health_max_freshness_seconds=2.0, enable_proj_orders_latest=True, **overrides
    )
    bootstrap(settings, demo=True).source.close()
    with RunningPipeline(settings) as p:
        p.runtime.telemetry.sampler.interval = 0.1
        yield edbs, settings, port, p.runtime


def test_metrics_page_shows_every_family_and_lag_and_freshness_move(live):
    edbs, settings, port, runtime = live
    wait_caught_up(settings)
    wait_until(lambda: get(port, "/healthz")[0] == 200, timeout=20, what="healthy")
    wait_until(
        lambda: "cdcflow_projection_cycle_duration_seconds_bucket" in get(port, "/metrics")[1],
        timeout=20,
        what="a projection cycle",
    )
    kpi = "proj_orders_kpi_by_minute_segment"
    wait_until(
        lambda: value(get(port, "/metrics")[1], "cdcflow_projection_status", projection=kpi, status="OK") == 1,
        timeout=20,
        what="projection status OK on /metrics",
    )
    status, page = get(port, "/metrics")
    assert status == 200
    for family in (
        "cdcflow_capture_lag_seconds",
        "cdcflow_capture_lag_bytes",
        "cdcflow_changes_staged_total",
        "cdcflow_batch_duration_seconds_bucket",
        "cdcflow_projection_freshness_seconds",
        "cdcflow_projection_cycle_duration_seconds_bucket",
        "cdcflow_projection_status",
        "cdcflow_errors_total",
        "cdcflow_slot_retained_wal_bytes",
        "cdcflow_worker_alive",
        "cdcflow_database_up",
    ):
        assert family in page, family
    assert value(page, "cdcflow_projection_status", projection=kpi, status="ERROR") == 0
    assert value(page, "cdcflow_worker_alive", worker=f"ingest[{settings.source_name}]") == 1
    assert value(page, "cdcflow_slot_retained_wal_bytes") is not None
    staged0 = value(page, "cdcflow_changes_staged_total", capture="public_orders") or 0
    batches0 = value(page, "cdcflow_batch_duration_seconds_count") or 0

    # Changes flow: the counters move, freshness stays under the threshold.
    with edbs.source() as src:
        src.execute("INSERT INTO orders (customer_id, amount) SELECT 1, g FROM generate_series(1, 50) g")
    wait_caught_up(settings)
    wait_until(
        lambda: (
            (value(get(port, "/metrics")[1], "cdcflow_changes_staged_total", capture="public_orders") or 0)
            >= staged0 + 50
        ),
        timeout=20,
        what="changes_staged to count the inserts",
    )
    _, page = get(port, "/metrics")
    assert value(page, "cdcflow_batch_duration_seconds_count") > batches0
    assert value(page, "cdcflow_projection_cycle_duration_seconds_count", projection=kpi) >= 1

    # Hold the source ahead: stop the ingestion worker alone, write, and watch lag grow.
    ingest = runtime.workers[0]
    thread = next(t for t in runtime.threads if t.name == ingest.name)
    ingest.stop = threading.Event()
    ingest.stop.set()
    thread.join(20)
    assert not ingest.alive
    with edbs.source() as src:
        src.execute("INSERT INTO orders (customer_id, amount) SELECT 1, g FROM generate_series(1, 50) g")
    time.sleep(1.0)
    _, page = get(port, "/metrics")
    lag1 = value(page, "cdcflow_capture_lag_seconds", capture="public_orders")
    fresh1 = value(page, "cdcflow_projection_freshness_seconds", projection=kpi)
    assert lag1 is not None and lag1 >= 0.5
    assert fresh1 is not None and fresh1 >= 0.5
    assert (value(page, "cdcflow_capture_lag_bytes", capture="public_orders") or 0) > 0
    assert value(page, "cdcflow_worker_alive", worker=ingest.name) == 0
    code, body = get(port, "/healthz")
    assert code == 503 and json.loads(body)["reason"] == f"worker {ingest.name} is not running"
    assert "\n" not in body.strip()
    time.sleep(0.5)
    _, page = get(port, "/metrics")
    assert value(page, "cdcflow_capture_lag_seconds", capture="public_orders") > lag1  # moving
    assert value(page, "cdcflow_projection_freshness_seconds", projection=kpi) > fresh1


@pytest.mark.parametrize("live", [{"compaction_interval_seconds": 0.2}], indirect=True)
def test_healthz_fails_while_a_worker_is_stopped_and_recovers(live):
    edbs, settings, port, runtime = live
    wait_until(lambda: get(port, "/healthz")[0] == 200, timeout=20, what="healthy")
    worker = next(w for w in runtime.workers if w.name.startswith("compaction["))
    thread = next(t for t in runtime.threads if t.name == worker.name)
    worker.stop = threading.Event()
    worker.stop.set()
    thread.join(20)
    code, body = get(port, "/healthz")
    assert code == 503 and json.loads(body) == {"status": "failing", "reason": f"worker {worker.name} is not running"}
    worker.stop = runtime.stop
    t = threading.Thread(target=runtime._guard, args=(worker,), name=worker.name, daemon=True)
    t.start()
    runtime.threads.append(t)
    wait_until(lambda: get(port, "/healthz") == (200, '{"status": "ok"}\n'), timeout=20, what="healthy again")


@pytest.mark.parametrize("live", [{"projection_interval_seconds": 3600}], indirect=True)
def test_healthz_fails_when_freshness_exceeds_threshold_and_recovers(live):
    edbs, settings, port, runtime = live
    wait_caught_up(settings)
    wait_until(lambda: get(port, "/healthz")[0] == 200, timeout=20, what="healthy")
    # WAL moves without a captured change: ingestion advances its watermark, but nothing
    # wakes the projections (interval 3600 s), so they fall behind the source's position.
    with edbs.source() as src:
        src.execute("CREATE TABLE not_captured (x int)")
        src.execute("INSERT INTO not_captured SELECT generate_series(1, 100)")

    def failing() -> bool:
        code, body = get(port, "/healthz")
        return code == 503 and "behind the source (limit 2s)" in json.loads(body)["reason"]

    wait_until(failing, timeout=20, what="/healthz to fail on freshness")
    assert all(w.alive for w in runtime.workers)
    # A captured change wakes the projections: fresh again.
    with edbs.source() as src:
        src.execute("INSERT INTO orders (customer_id, amount) VALUES (1, 3.5)")
    wait_until(lambda: get(port, "/healthz")[0] == 200, timeout=20, what="/healthz back to 200")
    assert get(port, "/nope")[0] == 404


def test_port_in_use_does_not_stop_the_pipeline(edbs):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        settings = edbs.settings.replace(metrics_port=port)
        bootstrap(settings, demo=True).source.close()
        with RunningPipeline(settings) as p:
            assert p.runtime.telemetry.server is None
            wait_caught_up(settings)
            assert all(w.alive for w in p.runtime.workers)


def test_metrics_off_with_port_zero(edbs):
    settings = edbs.settings.replace(metrics_port=0)
    bootstrap(settings, demo=True).source.close()
    with RunningPipeline(settings) as p:
        assert p.runtime.telemetry.server is None
        assert [t.name for t in p.runtime.threads if t.name.startswith("http")] == []
