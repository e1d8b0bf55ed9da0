"""Nothing is left running behind the user's back: a benchmark stops the embedded servers
it started, and the demo, stopped with Ctrl-C, says that its server stays up for the
printed queries and how to stop it (``cdcflow demo --stop``), which does."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

from cdcflow.embedded import EmbeddedPostgres
from tests.conftest import ROOT
from tests.pgutil import running_postmasters


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("SOURCE_", "SERVING_", "CDC_", "ENABLE_PROJ"))}


def _cdcflow(*args: str, cwd, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "cdcflow", *args], env=_env(), cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _fresh(name: str):
    """A folder of its own under .cdcflow/ (the benchmarks put their data dirs under the
    current directory's .cdcflow/)."""
    where = ROOT / ".cdcflow" / name
    for data_dir in running_postmasters(where).values():
        EmbeddedPostgres.stop_data_dir(data_dir)
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    return where


def test_benchmarks_stop_the_embedded_servers_they_started(tmp_path):
    where = _fresh("e2e-bench-servers")
    try:
        _cdcflow("bench", "catchup", "--quick", "--changes", "2000", "--out", str(tmp_path), cwd=where)
        assert running_postmasters(where) == {}
        _cdcflow("bench", "sustained", "--quick", "--rate", "200", "--duration", "2", "--out", str(tmp_path), cwd=where)
        assert running_postmasters(where) == {}
        _cdcflow("bench", "snapshot", "--quick", "--out", str(tmp_path), cwd=where)
        assert running_postmasters(where) == {}
        _cdcflow("bench", "projections", "--quick", "--out", str(tmp_path), cwd=where)
        assert running_postmasters(where) == {}
        used = sorted(p.name for p in (where / ".cdcflow").iterdir() if (p / "PG_VERSION").exists())
        assert used == ["bench-pg", "bench-pg-projections", "bench-sustained-pg"]  # each form started its own
    finally:
        for data_dir in running_postmasters(where).values():
            EmbeddedPostgres.stop_data_dir(data_dir)
    shutil.rmtree(where, ignore_errors=True)


def test_demo_stopped_with_ctrl_c_says_its_server_stays_up_and_demo_stop_stops_it():
    where = _fresh("e2e-demo-ctrl-c")
    cmd = [sys.executable, "-m", "cdcflow", "demo", "--no-live", "--duration", "600", "--data-dir", str(where)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        out = ""
        deadline = time.monotonic() + 120
        while "running the pipeline" not in out and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            out += line
        assert "running the pipeline" in out, out
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        out += proc.communicate(timeout=90)[0]
        assert proc.returncode == 0, out
        assert "Query the results" in out
        assert f"PostgreSQL keeps running in {where / 'pg'}" in out
        assert f"cdcflow demo --stop --data-dir {where}" in out
        assert list(running_postmasters(where).values()) == [where / "pg"]  # up for the printed queries
        stop = _cdcflow("demo", "--stop", "--data-dir", str(where), cwd=ROOT, timeout=90)
        assert "stopped" in stop.stdout
        assert running_postmasters(where) == {}
        again = _cdcflow("demo", "--stop", "--data-dir", str(where), cwd=ROOT, timeout=90)
        assert "no PostgreSQL runs" in again.stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        for data_dir in running_postmasters(where).values():
            EmbeddedPostgres.stop_data_dir(data_dir)
    shutil.rmtree(where, ignore_errors=True)
