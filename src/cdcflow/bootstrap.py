"""The seed's startup sequence: wait for both databases, run idempotent bootstrap SQL,
create control rows if missing, and take the initial snapshot when nothing is staged.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import psycopg

from cdcflow import db, projections, snapshot
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
    source_dsn, _ = settings.require_dsns()
    return PostgresSource(source_dsn, settings.capture_tables, settings.slot, settings.publication)


def wait_for_databases(settings: Settings, stop: threading.Event | None = None) -> None:
    """Seed step 1: bounded wait for source and serving, one line per attempt."""
    source_dsn, serving_dsn = settings.require_dsns()
    for what, dsn in (("source", source_dsn), ("serving", serving_dsn)):
        conn = db.wait_for(what, lambda d=dsn, w=what: db.connect(d, w, timeout=5), settings.startup_wait_seconds, stop)
        conn.close()


def bootstrap(settings: Settings, *, demo: bool = False, snapshot_now: bool = True) -> Bootstrapped:
    """Idempotent: safe to run on every start."""
    _, serving_dsn = settings.require_dsns()
    source = make_source(settings)
    source.check()
    if demo:
        conn = source.conn()
        for name, text in _source_scripts(demo=True):
            log.info("source: running %s", name)
            conn.execute(text)  # type: ignore[arg-type]  # packaged script
    specs = source.describe_tables()
    source.ensure_publication()
    with db.connect(serving_dsn, "serving") as serving:
        try:
            schema.run_scripts(serving, "serving")
            for spec in specs:
                schema.ensure_staging(serving, spec)
            schema.ensure_control_rows(serving, settings.source_name, source.engine, specs)
            projections.bootstrap(serving, settings)
            serving.commit()
        except psycopg.Error as exc:
            serving.rollback()
            raise db.wrap_db_error("bootstrapping the serving database", exc) from None
        if snapshot_now and snapshot.needs_initial_snapshot(serving, settings.source_name, specs):
            snapshot.initial_snapshot(source, serving, settings.source_name)
    return Bootstrapped(source, specs)


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
