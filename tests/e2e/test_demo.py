"""The demo as a user runs it: from an empty data dir, non-interactive and under a terminal."""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time

import psycopg

from cdcflow.embedded import EmbeddedPostgres
from tests.conftest import ROOT
from tests.oracle import assert_projections_equal_source
from tests.pgutil import running_postmasters


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("SOURCE_", "SERVING_", "CDC_", "ENABLE_PROJ"))}


def _dsn(data_dir, db: str) -> str:
    return f"host={data_dir / 'pg'} port=5432 user=postgres dbname={db}"


def _demo(data_dir, seconds: int) -> subprocess.CompletedProcess:
    """``cdcflow demo --no-live`` for ``seconds``; it must exit 0."""
    proc = subprocess.run(
        [sys.executable, "-m", "cdcflow", "demo", "--no-live", "--duration", str(seconds), "--data-dir", str(data_dir)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_demo_non_interactive_from_empty_data_dir():
    data_dir = ROOT / ".cdcflow" / "e2e-demo"
    EmbeddedPostgres.wipe(data_dir / "pg")
    shutil.rmtree(data_dir, ignore_errors=True)
    try:
        _demo_runs_and_is_reused(data_dir)
    finally:
        EmbeddedPostgres.stop_data_dir(data_dir / "pg")  # the demo keeps it up for its queries
    assert running_postmasters(data_dir) == {}


def _demo_runs_and_is_reused(data_dir) -> None:
    proc = _demo(data_dir, seconds=8)
    out = proc.stdout
    assert "ingestion caught up with the source" in out
    assert re.search(r"the load generator made [1-9][\d,]* changes", out)
    assert "psql" in out and "proj_orders_kpi_by_minute_segment" in out
    assert f"stop it with: cdcflow demo --stop --data-dir {data_dir}" in out
    with psycopg.connect(_dsn(data_dir, "source")) as src, psycopg.connect(_dsn(data_dir, "serving")) as srv:
        assert_projections_equal_source(src, srv)
        statuses = dict(srv.execute("SELECT projection_name, status FROM ctl_projection_metadata").fetchall())
        assert statuses == {"proj_orders_kpi_by_minute_segment": "OK", "proj_orders_latest": "OK"}
        # The seed rows came through the snapshot: their orders have real segments.
        unknown = srv.execute("SELECT count(*) FROM proj_orders_latest WHERE order_id <= 5 AND segment IS NULL")
        assert unknown.fetchone()[0] == 0
    # A second run reuses the data dir.
    _demo(data_dir, seconds=3)


def test_live_view_under_a_terminal_shows_throughput_and_kpi_rows():
    data_dir = ROOT / ".cdcflow" / "e2e-demo-live"
    pid, fd = pty.fork()
    if pid == 0:  # child: the demo, its stdout a terminal
        os.execvpe(
            sys.executable, [sys.executable, "-m", "cdcflow", "demo", "--reset", "--data-dir", str(data_dir)], _env()
        )
    screen = b""
    seen = False
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if ready:
                try:
                    screen += os.read(fd, 65536)
                except OSError:
                    break
            frames = screen.decode(errors="replace").split("\x1b[H\x1b[2J")
            last = frames[-2] if len(frames) > 2 else ""
            m = re.search(r"staged: ([\d,]+) changes/s", last)
            if m and int(m.group(1).replace(",", "")) > 0 and re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d \w+ +\d", last):
                seen = True
                break
        os.kill(pid, signal.SIGINT)
        tail = b""
        end = time.monotonic() + 60
        while time.monotonic() < end:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                tail += chunk
        _, code = os.waitpid(pid, 0)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        EmbeddedPostgres.stop_data_dir(data_dir / "pg")  # the demo keeps it up for its queries
    assert seen, screen.decode(errors="replace")[-3000:]
    assert os.waitstatus_to_exitcode(code) == 0, tail.decode(errors="replace")
    assert b"Query the results" in tail
    assert b"PostgreSQL keeps running in" in tail
