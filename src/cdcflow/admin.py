"""Operator commands that change state: ``resync`` (repair a gap) and ``reset`` (start over).

Both are safe to run while ``cdcflow run`` is running: the running ingestion worker sees
the new watermarks and restarts its stream from there.
"""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql

from cdcflow import db, sqlfiles
from cdcflow.bootstrap import bootstrap, make_source
from cdcflow.config import Settings
from cdcflow.errors import ConfigError
from cdcflow.sources.base import Source, TableSpec

log = logging.getLogger(__name__)
QUERIES = "serving_runtime.sql"


def resync(settings: Settings, captures: list[str] | None) -> int:
    """Repair captures with a fresh snapshot. Returns the position streaming goes on from.

    Which captures are re-copied, and whether alone, is the engine's (``Source.resync``):
    PostgreSQL's captures share one slot, SQL Server's each have their own position."""
    _, serving_dsn = settings.require_dsns()
    source = make_source(settings)
    try:
        source.check()
        _checked_specs(source, settings, captures)
        with db.connect(serving_dsn, "serving") as serving:
            return source.resync(serving, settings, captures)
    finally:
        source.close()


def _checked_specs(source: Source, settings: Settings, captures: list[str] | None) -> list[TableSpec]:
    """The source's captured tables; a named capture that is not one of them is a ConfigError."""
    specs = source.describe_tables()
    known = {s.capture for s in specs} | {s.qualified for s in specs}
    for name in captures or []:
        if name not in known:
            raise ConfigError(
                f"no capture named {name!r} in source {settings.source_name}: choose from "
                + ", ".join(sorted(s.capture for s in specs))
            )
    return specs


def reset(settings: Settings) -> None:
    """Start over: clear staging and projections, reset watermarks and checkpoints.

    What the source keeps for the stream (PostgreSQL's replication slot) is dropped too, so
    the next ``run`` takes a new initial snapshot.
    """
    _, serving_dsn = settings.require_dsns()
    source = make_source(settings)
    try:
        specs = source.describe_tables()
        with db.connect(serving_dsn, "serving") as serving:
            try:
                tables = [
                    r[0]
                    for r in serving.execute(
                        sqlfiles.query(QUERIES, "cdcflow_tables"), {"staging": [s.staging_table for s in specs]}
                    ).fetchall()
                ]
                if tables:
                    serving.execute(
                        sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(sql.Identifier(t) for t in tables))
                    )
                for name in ("reset_watermarks", "reset_backfills", "reset_checkpoints", "reset_metadata"):
                    serving.execute(sqlfiles.query(QUERIES, name), {"source": settings.source_name})
                serving.commit()
            except psycopg.Error as exc:
                serving.rollback()
                raise db.wrap_db_error("reset", exc) from None
        dropped = source.forget()
        log.info(
            "reset: cleared %d tables, watermarks and checkpoints%s", len(tables), f"; {dropped}" if dropped else ""
        )
    finally:
        source.close()


__all__ = ["bootstrap", "reset", "resync"]
