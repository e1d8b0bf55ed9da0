"""``cdcflow loadgen`` run as a user runs it: a subprocess with SOURCE_DSN set."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, Databases


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "cdcflow", "loadgen", *args]


def _live_orders(dbs: Databases) -> int:
    with dbs.source() as conn:
        return conn.execute("SELECT count(*) FROM orders").fetchone()[0]


def test_loadgen_runs_reports_progress_and_stops_by_itself(demo_source: Databases) -> None:
    env = demo_source.env()
    before = _live_orders(demo_source)
    proc = subprocess.run(
        _cmd("--profile", "smoke", "--rate", "200", "--duration", "2", "--progress-interval", "0.5", "--json"),
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["stopped_by"] == "duration"
    assert summary["changes"] > 0 and summary["changes_per_second"] > 0
    assert summary["inserts"]["orders"] > 200
    progress = [line for line in proc.stderr.splitlines() if line.startswith("loadgen smoke:")]
    assert len(progress) >= 2, proc.stderr
    assert "/s avg" in progress[-1]
    assert _live_orders(demo_source) == before + summary["inserts"]["orders"] - summary["deletes"]["orders"]


def test_loadgen_ctrl_c_stops_cleanly(demo_source: Databases) -> None:
    proc = subprocess.Popen(
        _cmd("--profile", "moderate", "--duration", "120", "--dsn", demo_source.source_dsn),
        env={k: v for k, v in demo_source.env().items() if k != "SOURCE_DSN"},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopped by stop" in out
    assert "changes/s" in out


def test_loadgen_without_a_source_is_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOURCE_", "SERVING_"))}
    proc = subprocess.run(_cmd("--duration", "1"), env=env, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "cdcflow: error: loadgen needs a source: set SOURCE_DSN or pass --dsn (a PostgreSQL connection string)"
    ]


def test_loadgen_unknown_profile(capsys: pytest.CaptureFixture[str]) -> None:
    from cdcflow import cli

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        code = cli.main(["loadgen", "--profile", "nope", "--dsn", "host=/nonexistent dbname=x"], env={})
    finally:  # cli.main configures logging for a process; give pytest its handlers back
        root.handlers[:] = handlers
        root.setLevel(level)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("cdcflow: error: loadgen profile 'nope' is not valid: expected one of smoke")
