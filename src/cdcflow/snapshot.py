"""Consistent initial snapshot for a PostgreSQL capture (invariant 6).

The slot is created over the replication protocol with ``EXPORT_SNAPSHOT``; while that
connection stays open, a regular connection imports the snapshot (``SET TRANSACTION
SNAPSHOT``) and reads each captured table with COPY. The rows are exactly the state
before the slot's consistent point ``cp``: every later commit is streamed. They are
staged as op 5 at ``lsn = cp - 1`` (before any streamed change), seqval = row number,
with the watermark ``cp - 1``, all in one serving transaction. A crash before that
commit leaves nothing staged and the next start drops the unused slot and begins again.
"""

from __future__ import annotations

import logging
import time

import psycopg
from psycopg import sql

from cdcflow import db
from cdcflow.serving.control import read_watermarks
from cdcflow.serving.staging import StagingWriter
from cdcflow.sources.base import OP_SNAPSHOT, TableSpec
from cdcflow.sources.postgres import PostgresSource

log = logging.getLogger(__name__)
PROGRESS_ROWS = 200_000


def needs_initial_snapshot(serving: psycopg.Connection, source_name: str, specs: list[TableSpec]) -> bool:
    """True when no capture of this source has staged anything yet."""
    wms = read_watermarks(serving, source_name)
    return all(spec.capture in wms and wms[spec.capture].state == "INIT" for spec in specs)


def initial_snapshot(source: PostgresSource, serving: psycopg.Connection, source_name: str) -> int:
    """Create the slot and stage every captured table's rows. Returns the new watermark."""
    specs = source.describe_tables()
    if source.slot_state() is not None:
        # Created by a start that died before its snapshot committed: nothing was staged
        # from it (every capture is INIT), so it is safe to start over.
        log.warning("dropping replication slot %s: it was created but nothing was staged from it", source.slot)
        source.drop_slot()
    cp, snapshot_name, repl = source.create_slot_with_snapshot()
    watermark = cp - 1
    started = time.monotonic()
    total = 0
    try:
        reader = db.connect(source.dsn, "source")
        try:
            reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            reader.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_name)))
            writer = StagingWriter(serving, {s.capture: s for s in specs}, source_name)
            prefix_base = b"%d\t" % watermark
            for spec in specs:
                n = 0
                cols = sql.SQL(", ").join(sql.Identifier(c) for c in spec.column_names)
                stmt = sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT").format(cols, sql.Identifier(spec.schema, spec.name))
                with reader.cursor() as cur, cur.copy(stmt) as copy:
                    for row in copy:
                        n += 1
                        writer.add_line(spec.capture, b"%s%d\t%d\t\\N\t%s" % (prefix_base, n, OP_SNAPSHOT, bytes(row)))
                        if n % PROGRESS_ROWS == 0:
                            log.info("snapshot of %s: %d rows so far", spec.qualified, n)
                log.info("snapshot of %s: %d rows", spec.qualified, n)
                total += n
            reader.rollback()
        finally:
            reader.close()
        writer.commit(watermark, [s.capture for s in specs], None)
    except psycopg.Error as exc:
        serving.rollback()
        raise db.wrap_db_error("initial snapshot", exc) from None
    finally:
        repl.close()  # type: ignore[attr-defined]
    log.info(
        "initial snapshot staged %d rows from %d tables in %.1fs; streaming from %X/%X",
        total, len(specs), time.monotonic() - started, watermark >> 32, watermark & 0xFFFFFFFF,
    )
    return watermark

