"""The seed's startup sequence: wait for both databases, run idempotent bootstrap SQL,
create control rows if missing, and take the initial snapshot when nothing is staged.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import psycopg

from cdcflow import backfill, db, privileges, projections, snapshot
from cdcflow.config import Settings
from cdcflow.serving import schema
from cdcflow.sources.base import TableSpec
from cdcflow.sources.postgres import PostgresSource

log = logging.getLogger(__name__)


@dataclass
class Bootstrapped:
    source: PostgresSource
    specs: list[TableSpec]


def make_source(settings: Settings) -> PostgresSource:
    """The source engine SOURCE_DSN names: mssql:// or sqlserver:// is SQL Server, else PostgreSQL."""
    source_dsn, _ = settings.require_dsns()
    from cdcflow.sources.mssql_support import is_sqlserver_dsn

    if is_sqlserver_dsn(source_dsn):
        from cdcflow.sources.sqlserver import SqlServerSource

        # One ingestor per capture instance: callers split it with .per_capture().
        return SqlServerSource(source_dsn, settings.capture_tables)  # type: ignore[return-value]
    return PostgresSource(source_dsn, settings.capture_tables, settings.slot, settings.publication)


def wait_for_databases(settings: Settings, stop: threading.Event | None = None) -> None:
    """Seed step 1: bounded wait for source and serving, one line per attempt."""
    _, serving_dsn = settings.require_dsns()

    def source_up() -> None:
        source = make_source(settings)
        try:
            source.conn()
        finally:
            source.close()

    db.wait_for("source", source_up, settings.startup_wait_seconds, stop)
    db.wait_for(
        "serving", lambda: db.connect(serving_dsn, "serving", timeout=5).close(), settings.startup_wait_seconds, stop
    )


def bootstrap(settings: Settings, *, demo: bool = False, snapshot_now: bool = True) -> Bootstrapped:
    """Idempotent: safe to run on every start."""
    _, serving_dsn = settings.require_dsns()
    with db.connect(serving_dsn, "serving") as serving:
        schema.check_serving_version(serving)  # before anything is created, here or on the source
        source, specs = _bootstrap_source(settings, demo)
        try:
            # A rollback on a lost connection fails too: rolled_back_on_error's is quiet, and
            # the error stays the transient one it wraps (the start is retried, not ended).
            with db.rolled_back_on_error(serving, "bootstrapping the serving database"):
                schema.run_scripts(serving, "serving")
                for spec in specs:
                    schema.ensure_staging(serving, spec)
                    schema.ensure_indexes(serving, spec)  # a copy that a crash stopped may have dropped them
                schema.ensure_control_rows(serving, settings.source_name, source.engine, specs)
                projections.bootstrap(serving, settings)
                serving.commit()
            if snapshot_now:
                initial_snapshots(source, serving, settings, specs)
        except BaseException:
            source.close()
            raise
    return Bootstrapped(source, specs)


def _bootstrap_source(settings: Settings, demo: bool) -> tuple[PostgresSource, list[TableSpec]]:
    """The source checked and prepared (demo schema, CDC enablement, publication): the
    source and its captured tables."""
    source = make_source(settings)
    source.check()
    privileges.check(settings, source)  # one line naming each missing privilege
    if source.engine == "sqlserver":
        source.bootstrap_source(demo=demo)  # type: ignore[attr-defined]  # demo schema, CDC enablement
    elif demo:
        conn = source.conn()
        for name, text in _source_scripts(demo=True):
            log.info("source: running %s", name)
            conn.execute(text)  # type: ignore[arg-type]  # packaged script
    specs = source.describe_tables()
    if source.engine == "postgres":
        source.ensure_publication()
    return source, specs


def initial_snapshots(source, serving: psycopg.Connection, settings: Settings, specs: list[TableSpec]) -> None:
    """Stage the rows that existed before capture began, where nothing is staged yet."""
    source_name = settings.source_name
    if source.engine == "sqlserver":
        from cdcflow.serving.control import read_watermarks
        from cdcflow.sources.sqlserver import stage_initial_snapshot

        wms = read_watermarks(serving, source_name)
        serving.rollback()
        for one in source.per_capture():
            (spec,) = one.describe_tables()
            if wms.get(spec.capture) is not None and wms[spec.capture].state == "INIT":
                stage_initial_snapshot(one, serving, source_name)
            one.close()
    elif snapshot.needs_initial_snapshot(serving, source_name, specs):
        snapshot.initial_snapshot(source, serving, settings)
    else:
        todo = backfill.pending(serving, source_name)
        if todo:
            log.info("tables still to copy (%s): 'cdcflow run' copies them while it streams", ", ".join(todo))


def _source_scripts(demo: bool) -> list[tuple[str, str]]:
    from cdcflow import sqlfiles

    out = []
    for name, text in sqlfiles.scripts("source"):
        if name.startswith("30_"):
            continue  # the publication is made by PostgresSource.ensure_publication
        if name.startswith(("10_", "20_")) and not demo:
            continue
        out.append((name, text))
    return out
