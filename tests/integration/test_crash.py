"""Crash safety: the ingesting process is SIGKILLed at random points and restarted, while
a workload keeps writing; at the end staging holds every change exactly once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from cdcflow.bootstrap import bootstrap
from tests import fault_run
from tests.conftest import wait_caught_up, wait_until
from tests.workload import Recorder, Workload, assert_staging_matches

ROOT = Path(__file__).resolve().parents[2]


def _start(env: dict[str, str], log, *, fault: bool = False) -> subprocess.Popen:
    """``cdcflow run``; with ``fault``, through tests/fault_run.py, which exits with
    EXIT_CODE between a serving commit and the slot confirm."""
    module = "tests.fault_run" if fault else "cdcflow"
    return subprocess.Popen(
        [sys.executable, "-m", module, "run"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
    )


def _staged_rows(dbs) -> int:
    with dbs.serving() as s:
        return int(s.execute("SELECT coalesce(sum(rows_staged), 0) FROM ctl_ingestion_watermarks").fetchone()[0])


def test_sigkill_at_random_points_loses_and_doubles_nothing(dbs, tmp_path):
    settings = dbs.settings.replace(cdc_batch_max_rows=20)
    bootstrap(settings, demo=True).source.close()
    env = dbs.env(CDC_BATCH_MAX_ROWS="20", ENABLE_PROJ_ORDERS_KPI="false", LOG_LEVEL="info", LEASE_SECONDS="3")
    rec = Recorder()
    stop = threading.Event()
    errors: list[BaseException] = []

    def load() -> None:
        try:
            with dbs.source() as src:
                wl = Workload(src, 42, rec)
                while not stop.is_set():
                    wl.transaction()
                    if rec.transactions % 97 == 0:
                        wl.bulk_transaction(60)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    rng = random.Random(7)
    kills = 0
    fault_exits = 0
    loader = threading.Thread(target=load)
    loader.start()
    with open(tmp_path / "run.log", "wb") as log:
        try:
            for i in range(12):
                fault = i == 5  # once: die exactly between the serving commit and the slot confirm
                proc = _start(env, log, fault=fault)
                before = _staged_rows(dbs)
                if fault:
                    assert proc.wait(60) == fault_run.EXIT_CODE
                    fault_exits += 1
                    continue
                # Let it make some progress, then kill it at a random moment.
                wait_until(lambda b=before: _staged_rows(dbs) > b, timeout=60, what="progress after restart")
                time.sleep(rng.uniform(0.0, 0.8))
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(30)
                kills += 1
        finally:
            stop.set()
            loader.join(60)
        assert not errors, errors
        proc = _start(env, log)
        try:
            wait_caught_up(settings, timeout=90)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
    assert kills >= 10 and fault_exits == 1
    with dbs.serving() as serving:
        assert_staging_matches(serving, rec)
    assert rec.count > 500


def test_sigkill_while_idle_never_leaves_a_false_gap(dbs, tmp_path):
    """Nothing captured changes, but the server's WAL keeps moving (another table is written):
    the idle stream advances the watermark to the server's position. If the slot were
    confirmed to that position before the watermark was committed (a client that answers a
    keepalive with the keepalive's own position does), a SIGKILL then would leave the slot
    ahead of the watermark, and the next start would report a GAP for changes that never
    existed. Killed at random moments a dozen times, no start may see a GAP."""
    bootstrap(dbs.settings, demo=True).source.close()
    env = dbs.env(ENABLE_PROJ_ORDERS_KPI="false", ENABLE_PROJ_ORDERS_LATEST="false", LEASE_SECONDS="3")
    stop = threading.Event()

    def churn() -> None:  # WAL that is nobody's capture
        with dbs.source() as src:
            src.execute("CREATE TABLE IF NOT EXISTS not_captured (id serial PRIMARY KEY, v text)")
            while not stop.is_set():
                src.execute("INSERT INTO not_captured (v) VALUES ('x')")
                time.sleep(0.01)

    def states() -> set[str]:
        with dbs.serving() as s:
            return {r[0] for r in s.execute("SELECT state FROM ctl_ingestion_watermarks")}

    writer = threading.Thread(target=churn, daemon=True)
    writer.start()
    rng = random.Random(5)
    proc = None
    try:
        with open(tmp_path / "run.log", "wb") as log:
            for _ in range(12):
                proc = _start(env, log)
                time.sleep(rng.uniform(1.0, 2.5))
                assert "GAP" not in states(), (tmp_path / "run.log").read_text()[-3000:]
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
            proc = _start(env, log)
            time.sleep(2.0)
            assert "GAP" not in states(), (tmp_path / "run.log").read_text()[-3000:]
    finally:
        stop.set()
        writer.join(10)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
