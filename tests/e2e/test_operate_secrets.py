"""Invariant 8 as a user would see it: run the pipeline with password DSNs, break its
connections (killed backends, a changed password, a wrong one), and grep everything it
printed: logs (text and JSON), errors, status (text and JSON), /metrics, /healthz, and the
web console's page and event stream."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import psycopg
import pytest
from psycopg import sql

from tests.conftest import wait_until
from tests.e2e.test_cli import cdcflow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stream(port: int, seconds: float = 4.0, ticks: int = 2) -> str:
    """The console's event stream: what it sent within ``seconds`` or its first ``ticks`` ticks."""
    out: list[str] = []
    deadline, seen = time.monotonic() + seconds, 0
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/events", timeout=5) as r:
            while time.monotonic() < deadline:
                line = r.readline().decode()
                if not line:
                    break
                out.append(line)
                seen += line.startswith("event: tick")
                if seen >= ticks and line == "\n":
                    break
    except OSError as exc:
        out.append(f"unreachable: {exc}")
    return "".join(out)


def fetch(port: int, path: str) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.read().decode()
    except OSError as exc:
        return f"unreachable: {exc}"


@pytest.fixture
def secret_role(embedded_server, edbs):
    """A (non-superuser) role that must log in with a password; its line in pg_hba.conf is removed afterwards."""
    role = f"cdct_pwop_{os.getpid()}"
    password = "Pw-" + secrets.token_hex(8)
    hba = embedded_server.embedded.data_dir / "pg_hba.conf"  # type: ignore[union-attr]
    line = f"local all {role} scram-sha-256\n"
    hba.write_text(line + hba.read_text())
    r = sql.Identifier(role)
    with embedded_server.admin() as c:
        c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(r))
        c.execute(sql.SQL("CREATE ROLE {} LOGIN REPLICATION PASSWORD {}").format(r, sql.Literal(password)))
        c.execute("SELECT pg_reload_conf()")
    for dsn in (edbs.source_dsn, edbs.serving_dsn):
        name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
        with embedded_server.admin() as c:
            c.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(name), r))
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(r))
    yield role, password
    hba.write_text(hba.read_text().replace(line, ""))
    with embedded_server.admin() as c:
        c.execute("SELECT pg_reload_conf()")
        c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
    for dsn in (edbs.source_dsn, edbs.serving_dsn):
        name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
        with embedded_server.admin() as c:
            c.execute(sql.SQL("ALTER DATABASE {} OWNER TO postgres").format(sql.Identifier(name)))
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(sql.SQL("REASSIGN OWNED BY {} TO postgres").format(r))
            c.execute(sql.SQL("DROP OWNED BY {}").format(r))
    with embedded_server.admin() as c:
        c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(r))


def test_password_never_printed_even_when_connections_fail(secret_role, edbs):
    role, password = secret_role
    sock = edbs.server.embedded.socket_dir  # type: ignore[union-attr]

    def dsn(db: str, pw: str) -> str:
        return f"postgresql://{role}:{pw}@/{db}?host={sock}"

    src_db = psycopg.conninfo.conninfo_to_dict(edbs.source_dsn)["dbname"]
    srv_db = psycopg.conninfo.conninfo_to_dict(edbs.serving_dsn)["dbname"]
    port = free_port()
    env = edbs.env(
        SOURCE_DSN=dsn(src_db, password),
        SERVING_DSN=dsn(srv_db, password),
        METRICS_PORT=str(port),
        LOG_LEVEL="debug",
        LOG_FORMAT="json",
        HEALTH_MAX_FRESHNESS_SECONDS="5",
    )
    printed: list[str] = []

    boot = cdcflow("bootstrap", "--demo", env=env)
    printed += [boot.stdout, boot.stderr]
    assert boot.returncode == 0, boot.stderr

    run = subprocess.Popen(
        [sys.executable, "-m", "cdcflow", "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:

        def insert_and_wait(n: int) -> None:
            with edbs.source() as src:
                src.execute("INSERT INTO orders (customer_id, amount) VALUES (1, %s)", (n,))

            def staged() -> bool:
                with edbs.serving() as s:
                    return s.execute("SELECT count(*) FROM stg_cdc_orders WHERE amount = %s", (n,)).fetchone()[0] > 0

            wait_until(staged, timeout=40, what=f"order {n} staged")

            def applied() -> bool:  # the KPI projection has it too (a commit of its own)
                with edbs.serving() as s:
                    return s.execute(
                        "SELECT m.status = 'OK' AND m.as_of_lsn >= (SELECT max(__lsn) FROM stg_cdc_orders"
                        " WHERE amount = %s) FROM ctl_projection_metadata m"
                        " WHERE m.projection_name = 'proj_orders_kpi_by_minute_segment'",
                        (n,),
                    ).fetchone()[0]

            wait_until(applied, timeout=40, what=f"order {n} in the KPI projection")

        insert_and_wait(101)
        wait_until(lambda: "cdcflow_capture_lag_seconds" in fetch(port, "/metrics"), timeout=20, what="/metrics")
        printed += [fetch(port, "/metrics"), fetch(port, "/healthz"), fetch(port, "/")]
        live = stream(port)
        assert "event: tick" in live and "public_orders" in live, live[-2000:]
        printed.append(live)

        # Connection errors: every backend of the role killed, then logins rejected for a while.
        with edbs.server.admin() as a:
            a.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal("x" + password)))
            a.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
        outage = ""
        deadline = time.monotonic() + 20
        while "password authentication failed" not in outage and time.monotonic() < deadline:
            outage += stream(port, seconds=3, ticks=3)  # the console says why it cannot read the pipeline
        assert "password authentication failed" in outage, outage[-3000:]
        printed += [outage, fetch(port, "/metrics"), fetch(port, "/healthz")]
        status = cdcflow("status", env=env)
        printed += [status.stdout, status.stderr]
        assert status.returncode != 0
        with edbs.server.admin() as a:
            a.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
        try:
            insert_and_wait(102)  # it recovered on its own
        except AssertionError:
            run.send_signal(signal.SIGTERM)
            raise AssertionError("did not recover: " + run.communicate(timeout=30)[1][-3000:]) from None
        printed += [fetch(port, "/metrics"), fetch(port, "/healthz"), stream(port)]
    finally:
        if run.poll() is None:
            run.send_signal(signal.SIGTERM)
        out, err = run.communicate(timeout=30)
        printed += [out, err]
    assert run.returncode == 0, err[-2000:]
    assert "password authentication failed" in err  # the driver's errors were logged ...

    for args in (("status",), ("status", "--json"), ("compact", "--retention", "0")):
        proc = cdcflow(*args, env=env)
        printed += [proc.stdout, proc.stderr]
        assert proc.returncode in (0, 3), proc.stderr
    assert "compaction of source" in proc.stdout and "compacted public_orders:" in proc.stdout
    # A wrong password from the start: one line, and neither password printed.
    wrong = "Wrong-" + secrets.token_hex(6)
    bad = cdcflow("run", env={**env, "SOURCE_DSN": dsn(src_db, wrong), "STARTUP_WAIT_SECONDS": "3"})
    printed += [bad.stdout, bad.stderr]
    assert bad.returncode == 1 and "password authentication failed" in bad.stderr
    text = "\n".join(printed)
    assert password not in text and wrong not in text  # ... and never the password
    assert f'user "{role}"' in text  # the driver's messages about this role were printed, so the check bites

    # Every JSON log line of the run names its thread; worker lines name their worker.
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert len(lines) > 10
    for rec in lines:
        assert rec["thread"] and rec["level"] and rec["msg"], rec
        if rec["logger"] == "cdcflow.ingest":
            assert rec["thread"].startswith("ingest["), rec
        if rec["logger"].startswith("cdcflow.projections"):
            assert rec["thread"].startswith(("projection[", "MainThread")), rec
