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
import pytest

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


class _Terminal:
    """The demo run under a pseudo-terminal: everything it prints is read as it comes, so
    it never blocks on a full terminal buffer, and its exit is awaited with a deadline."""

    def __init__(self, argv: list[str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # child: the demo, its stdout a terminal
            os.execvpe(sys.executable, [sys.executable, *argv], _env())
        self.out = b""
        self.status: int | None = None

    def read(self, seconds: float, until=lambda out: False) -> bool:
        """Read for up to ``seconds``; True as soon as ``until(out)`` holds or the demo exited."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ready, _, _ = select.select([self.fd], [], [], 0.5)
            if ready:
                try:
                    self.out += os.read(self.fd, 65536)
                except OSError:  # the child closed the terminal: it is exiting
                    time.sleep(0.1)
            if self.status is None:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.status = status
            if self.status is not None or until(self.out):
                return True
        return False

    def stacks(self) -> str:
        """What every thread of a demo that does not exit is doing (SIGQUIT), then kill it."""
        os.kill(self.pid, signal.SIGQUIT)
        before = len(self.out)
        self.read(5)
        os.kill(self.pid, signal.SIGKILL)
        return self.out[before:].decode(errors="replace")

    def kill(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def _shows_throughput_and_a_kpi_row(out: bytes) -> bool:
    frames = out.decode(errors="replace").split("\x1b[H\x1b[2J")
    last = frames[-2] if len(frames) > 2 else ""
    m = re.search(r"staged: ([\d,]+) changes/s", last)
    return bool(m and int(m.group(1).replace(",", "")) > 0 and re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d \w+ +\d", last))


def test_live_view_under_a_terminal_shows_throughput_and_kpi_rows():
    data_dir = ROOT / ".cdcflow" / "e2e-demo-live"
    term = _Terminal(["-m", "cdcflow", "demo", "--reset", "--data-dir", str(data_dir)])
    try:
        term.read(90, until=_shows_throughput_and_a_kpi_row)
        assert term.status is None, term.out.decode(errors="replace")[-3000:]
        seen = _shows_throughput_and_a_kpi_row(term.out)
        assert seen, term.out.decode(errors="replace")[-3000:]
        shown = len(term.out)
        os.kill(term.pid, signal.SIGINT)  # Ctrl-C
        exited = term.read(120)
        tail = term.out[shown:].decode(errors="replace")
        assert exited, f"the demo did not exit within 120 s of Ctrl-C; its threads:\n{term.stacks()}\n{tail[-3000:]}"
        assert os.waitstatus_to_exitcode(term.status) == 0, tail
        assert "Query the results" in tail
        assert "PostgreSQL keeps running in" in tail
    finally:
        term.kill()
        EmbeddedPostgres.stop_data_dir(data_dir / "pg")  # the demo keeps it up for its queries


@pytest.mark.parametrize("when", ["starting embedded PostgreSQL", "bootstrapping:"])
def test_ctrl_c_before_the_pipeline_runs_stops_the_demo_at_once(when):
    """Ctrl-C before the pipeline runs (as the server starts, as bootstrap starts) stops the
    demo right away with exit code 130, and the server it was starting is stopped with it."""
    data_dir = ROOT / ".cdcflow" / "e2e-demo-startup"
    term = _Terminal(["-m", "cdcflow", "demo", "--reset", "--data-dir", str(data_dir)])
    try:
        assert term.read(90, until=lambda out: when.encode() in out), term.out.decode(errors="replace")
        assert term.status is None, term.out.decode(errors="replace")
        os.kill(term.pid, signal.SIGINT)
        exited = term.read(30)
        out = term.out.decode(errors="replace")
        assert exited, f"the demo did not exit within 30 s of Ctrl-C; its threads:\n{term.stacks()}\n{out[-3000:]}"
        assert os.waitstatus_to_exitcode(term.status) == 130, out[-3000:]
        assert "cdcflow: interrupted" in out
        assert "staged" not in out.split(when, 1)[1]  # stopped before the pipeline ran
        assert running_postmasters(data_dir) == {}
    finally:
        term.kill()
        EmbeddedPostgres.stop_data_dir(data_dir / "pg")
        shutil.rmtree(data_dir, ignore_errors=True)
