"""Several ``cdcflow run`` processes against one serving database: one owner at a time,
takeover after the owner dies, and a paused owner that lost its lease cannot commit."""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import threading
import time

import psycopg
import pytest

from cdcflow import leases
from cdcflow.bootstrap import bootstrap
from tests.conftest import wait_caught_up, wait_until
from tests.oracle import assert_projections_equal_source
from tests.workload import Recorder, Workload, assert_staging_matches


def test_fence_refuses_a_stale_owner(edbs):
    bootstrap(edbs.settings, demo=True).source.close()
    a = leases.Lease("test:fence", "A", ttl=1.0)
    b = leases.Lease("test:fence", "B", ttl=1.0)
    with psycopg.connect(edbs.serving_dsn) as ca, psycopg.connect(edbs.serving_dsn) as cb:
        assert a.acquire(ca)
        assert not b.acquire(cb)  # held by A
        token_a = a.token
        time.sleep(1.2)  # A "paused": no renewal, the lease expires
        assert b.acquire(cb) and b.token == token_a + 1
        ca.execute("SELECT 1")
        with pytest.raises(leases.LeaseLost):
            a.fence(ca, token_a)
        ca.rollback()
        cb.execute("SELECT 1")
        b.fence(cb, b.token)  # the new owner commits fine
        cb.commit()
        assert not a.acquire(ca)  # and A cannot take it back while B renews


def test_a_takeover_that_waited_for_a_lock_gets_a_full_lease(edbs):
    """A takeover can wait on the lease row: a frozen owner's commit holds it (its fence
    locks the row) until the server ends that transaction. The new lease must run from when
    the takeover went through, not from when it started waiting, or it is born expired and
    the new owner loses it again at once (with another token: seen as a flaky takeover)."""
    bootstrap(edbs.settings, demo=True).source.close()
    a = leases.Lease("test:wait", "A", ttl=1.0)
    b = leases.Lease("test:wait", "B", ttl=1.0)
    with (
        psycopg.connect(edbs.serving_dsn) as ca,
        psycopg.connect(edbs.serving_dsn, autocommit=True) as cb,
        psycopg.connect(edbs.serving_dsn) as check,
    ):
        assert a.acquire(ca)
        ca.execute("SELECT 1")
        a.fence(ca, a.token)  # A is about to commit, and freezes here: the row stays locked
        time.sleep(1.1)  # A's lease expires meanwhile
        got: list[bool] = []
        taker = threading.Thread(target=lambda: got.append(b.acquire(cb)))
        taker.start()
        time.sleep(1.5)  # B waits on the row lock for longer than a lease
        assert taker.is_alive() and not got
        ca.rollback()  # the server ends A's transaction (idle_in_transaction_session_timeout)
        taker.join(10)
        assert got == [True] and b.token == 2
        left = check.execute(
            "SELECT extract(epoch FROM expires_at - clock_timestamp()) FROM ctl_leases WHERE resource = 'test:wait'"
        ).fetchone()[0]
        assert 0.5 < left <= 1.0  # a whole lease from now, not one that ran out while B waited
        assert b.acquire(cb) and b.token == 2  # the next renewal keeps the token


def _owner(dbs, resource: str) -> tuple[int, int] | None:
    with dbs.serving() as s:
        row = s.execute(
            "SELECT owner, token FROM ctl_leases WHERE resource = %s AND expires_at > clock_timestamp()", (resource,)
        ).fetchone()
    if row is None:
        return None
    return int(row[0].split(":")[1]), int(row[1])


@contextlib.contextmanager
def _reaped(procs: list[subprocess.Popen]):
    """Whatever happens in the test, no pipeline process outlives it (nor stays stopped)."""
    try:
        yield
    finally:
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGCONT)
                    p.kill()
                p.wait(30)


def _projections_caught_up(dbs) -> bool:
    with dbs.serving() as s:
        low = s.execute(
            "SELECT max(m) FROM (SELECT max(__lsn) m FROM stg_cdc_orders UNION ALL "
            "SELECT max(__lsn) FROM stg_cdc_customers UNION ALL SELECT max(__lsn) FROM stg_cdc_payments) t"
        ).fetchone()[0]
        rows = s.execute("SELECT status, as_of_lsn FROM ctl_projection_metadata").fetchall()
    return len(rows) == 2 and all(st == "OK" and lsn is not None and lsn >= low for st, lsn in rows)


def _start(env, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cdcflow", "run"], env=env, stdout=log, stderr=subprocess.STDOUT)


def _load(dbs, rec: Recorder, stop: threading.Event, errors: list) -> None:
    try:
        with dbs.source() as src:
            wl = Workload(src, 5, rec)
            while not stop.is_set():
                wl.transaction()
                time.sleep(0.005)
    except BaseException as exc:
        errors.append(exc)


def test_three_instances_owner_killed_repeatedly(edbs, tmp_path):
    """Ingestion and both projections, three processes, owners killed under load: at the end
    staging holds every change once and both projections equal the oracle."""
    dbs = edbs
    bootstrap(dbs.settings.replace(enable_proj_orders_latest=True), demo=True).source.close()
    env = dbs.env(LEASE_SECONDS="2", ENABLE_PROJ_ORDERS_KPI="true", ENABLE_PROJ_ORDERS_LATEST="true", METRICS_PORT="0")
    resource = f"ingest:{dbs.settings.source_name}"
    rec, stop, errors = Recorder(), threading.Event(), []
    loader = threading.Thread(target=_load, args=(dbs, rec, stop, errors))
    takeovers: list[float] = []
    everything: list[subprocess.Popen] = []
    with open(tmp_path / "runs.log", "wb") as log, _reaped(everything):
        procs = {p.pid: p for p in (_start(env, log) for _ in range(3))}
        everything.extend(procs.values())
        loader.start()
        try:
            for _ in range(int(os.environ.get("CDCFLOW_TEST_TAKEOVERS", "3"))):  # 20 for the documented figures
                wait_until(lambda: _owner(dbs, resource) is not None, timeout=30, what="an owner")
                pid, token = _owner(dbs, resource)
                assert pid in procs
                procs[pid].send_signal(signal.SIGKILL)
                procs.pop(pid).wait(10)
                killed = time.monotonic()
                wait_until(lambda t=token: (_owner(dbs, resource) or (0, 0))[1] > t, timeout=30, what="a takeover")
                takeovers.append(time.monotonic() - killed)
                new = _start(env, log)
                procs[new.pid] = new
                everything.append(new)
        finally:
            stop.set()
            loader.join(30)
        try:
            assert not errors, errors
            wait_caught_up(dbs.settings, timeout=60)
            wait_until(lambda: _projections_caught_up(dbs), timeout=60, what="projections to catch up")
            for name in ("projection:proj_orders_kpi_by_minute_segment", "projection:proj_orders_latest"):
                assert _owner(dbs, name)[0] in procs  # one live process owns each projection
        finally:
            for p in procs.values():
                p.send_signal(signal.SIGTERM)
            for p in procs.values():
                assert p.wait(30) == 0
    with dbs.serving() as serving, dbs.source() as src:
        assert_staging_matches(serving, rec)
        assert_projections_equal_source(src, serving)
    ranked = sorted(takeovers)
    print(
        f"\ntakeover seconds (LEASE_SECONDS=2, {len(ranked)} kills): p50 {statistics.median(ranked):.2f}, "
        f"p95 {ranked[max(0, -(-95 * len(ranked) // 100) - 1)]:.2f}, max {ranked[-1]:.2f}"
    )
    assert max(takeovers) < 2 * 2 + 4  # lease time + renewal period + margin on a shared machine


def test_paused_owner_cannot_commit_after_resuming(dbs, tmp_path):
    bootstrap(dbs.settings, demo=True).source.close()
    env = dbs.env(LEASE_SECONDS="2", ENABLE_PROJ_ORDERS_KPI="false", METRICS_PORT="0")
    resource = f"ingest:{dbs.settings.source_name}"
    rec, stop, errors = Recorder(), threading.Event(), []
    loader = threading.Thread(target=_load, args=(dbs, rec, stop, errors))
    procs: list[subprocess.Popen] = []
    with open(tmp_path / "a.log", "wb") as alog, open(tmp_path / "b.log", "wb") as blog, _reaped(procs):
        a = _start(env, alog)
        procs.append(a)
        wait_until(lambda: _owner(dbs, resource) is not None, timeout=30, what="A to own")
        assert _owner(dbs, resource)[0] == a.pid
        b = _start(env, blog)
        procs.append(b)
        loader.start()
        try:
            time.sleep(1.0)
            token = _owner(dbs, resource)[1]
            os.kill(a.pid, signal.SIGSTOP)  # frozen mid-work, holding whatever it had read
            wait_until(
                lambda: (_owner(dbs, resource) or (0, 0)) == (b.pid, token + 1), timeout=30, what="B to take over"
            )
            from cdcflow import status

            shown = {o["resource"]: o["owner"] for o in status.collect(dbs.settings).owners}
            assert shown[resource].split(":")[1] == str(b.pid)  # `cdcflow status` says who owns what
            time.sleep(1.0)
            os.kill(a.pid, signal.SIGCONT)
            time.sleep(3.0)
        finally:
            stop.set()
            loader.join(30)
        assert not errors, errors
        wait_caught_up(dbs.settings, timeout=60)
        for p in (a, b):
            p.send_signal(signal.SIGTERM)
        assert a.wait(30) == 0 and b.wait(30) == 0
    with dbs.serving() as serving:
        assert_staging_matches(serving, rec)  # A's resumed work added nothing twice
