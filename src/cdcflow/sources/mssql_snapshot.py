"""SQL Server snapshots into serving: the initial load and resync, one capture instance at a time.

Each capture instance has its own position, so each is snapshotted alone:
:func:`stage_snapshot` reads the table as :meth:`SqlServerSource.snapshot` describes (rows
as op 5 at ``W``), stages them, and restarts the capture's watermark at ``W``, in one
serving transaction. With ``repair=True`` (resync after a GAP) it also stages a delete
(op 1) at ``W`` for every key whose latest staged state is live but which the table no
longer has, and sets the capture back to OK: the same serving queries as the PostgreSQL
resync.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from cdcflow import db, sqlfiles
from cdcflow.copying import stage_vanished
from cdcflow.serving.control import commit_snapshot, read_watermarks
from cdcflow.serving.staging import StagingWriter

if TYPE_CHECKING:  # the source module imports this one
    from cdcflow.sources.sqlserver import SqlServerSource

log = logging.getLogger(__name__)


def stage_snapshot(
    source: SqlServerSource, serving: psycopg.Connection, source_name: str, *, repair: bool = False
) -> int:
    """Snapshot a single-capture source into staging and restart its watermark there.
    Returns the watermark W."""
    (spec,) = source.describe_tables()
    table = spec.staging_table
    started = time.monotonic()
    log.info("snapshot of %s: reading the table in one pass (SQL Server snapshots are not chunked)", spec.qualified)
    with db.rolled_back_on_error(serving, f"snapshot of {spec.qualified}"):
        w = source.snapshot_position()
        row = serving.execute(
            sqlfiles.query("sqlserver/serving_snapshot.sql", "max_seqval_at", table=sql.Identifier(table)),
            {"lsn": w},
        ).fetchone()
        base = int(row[0]) if row and row[0] is not None else 0
        writer = StagingWriter(serving, {spec.capture: spec}, source_name)
        count = source.snapshot_rows(writer, w, base).rows
        writer.flush()
        if repair:
            count += stage_vanished(serving, spec, w, base + count)
        commit_snapshot(serving, source_name, w, {spec.capture: count})
    took = time.monotonic() - started
    log.info(
        "snapshot of %s: %d rows staged at %s in %.1fs (%.0f rows/s)",
        spec.qualified,
        count,
        source.format_position(w),
        took,
        count / took if took > 0 else 0.0,
    )
    return w


def stage_initial_snapshot(source: SqlServerSource, serving: psycopg.Connection, source_name: str) -> int:
    """The initial load of one capture: :func:`stage_snapshot` without repair."""
    return stage_snapshot(source, serving, source_name)


def initial_snapshots(root: SqlServerSource, serving: psycopg.Connection, source_name: str) -> None:
    """The initial load of each capture whose watermark is still INIT."""
    wms = read_watermarks(serving, source_name)
    serving.rollback()
    for one in root.per_capture():
        try:
            (spec,) = one.describe_tables()
            if wms.get(spec.capture) is not None and wms[spec.capture].state == "INIT":
                stage_initial_snapshot(one, serving, source_name)
        finally:
            one.close()


def resync(root: SqlServerSource, serving: psycopg.Connection, source_name: str, captures: list[str] | None) -> int:
    """Re-snapshot the named captures (default: every capture not OK). Returns the highest
    watermark they restart at (0: none was re-snapshotted)."""
    wms = read_watermarks(serving, source_name)
    serving.rollback()
    watermark = 0
    for one in root.per_capture():
        try:
            (spec,) = one.describe_tables()
            wanted = spec.capture in (captures or []) or spec.qualified in (captures or [])
            if wanted or (not captures and (spec.capture not in wms or wms[spec.capture].state != "OK")):
                watermark = max(watermark, stage_snapshot(one, serving, source_name, repair=True))
        finally:
            one.close()
    return watermark
