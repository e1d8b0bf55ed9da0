"""Start-up: wait for both databases, run idempotent bootstrap SQL, create control rows
if missing, and take the initial snapshot when nothing is staged.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import psycopg

from cdcflow import db, privileges, projections
from cdcflow.config import Settings
from cdcflow.serving import schema
from cdcflow.sources.base import Source, TableSpec
from cdcflow.sources.engines import open_source

log = logging.getLogger(__name__)


@dataclass
class Bootstrapped:
    source: Source
    specs: list[TableSpec]


def make_source(settings: Settings) -> Source:
    """The source engine SOURCE_DSN names: mssql:// or sqlserver:// is SQL Server, else PostgreSQL."""
    return open_source(settings)


def wait_for_databases(settings: Settings, stop: threading.Event | None = None) -> None:
    """Bounded wait for source and serving, one line per attempt."""
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
                initial_snapshots(source, serving, settings)
        except BaseException:
            source.close()
            raise
    return Bootstrapped(source, specs)


def _bootstrap_source(settings: Settings, demo: bool) -> tuple[Source, list[TableSpec]]:
    """The source checked and prepared (demo schema, CDC enablement, publication): the
    source and its captured tables."""
    source = make_source(settings)
    source.check()
    privileges.check(settings, source)  # one line naming each missing privilege
    source.prepare(demo=demo)
    return source, source.describe_tables()


def initial_snapshots(source: Source, serving: psycopg.Connection, settings: Settings) -> None:
    """Stage the rows that existed before capture began, where nothing is staged yet."""
    source.initial_snapshot(serving, settings)
