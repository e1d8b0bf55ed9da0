"""Consistent snapshots of a PostgreSQL source: the initial load (invariant 6) and resync.

The slot is created over the replication protocol with ``EXPORT_SNAPSHOT``; while that
connection stays open, a regular connection imports the snapshot (``SET TRANSACTION
SNAPSHOT``) and reads each captured table with COPY. The rows are exactly the state
before the slot's consistent point ``cp``: every later commit is streamed. They are
staged as op 5 at ``lsn = cp - 1`` (before any streamed change), seqval = row number,
and every capture's watermark becomes ``cp - 1``, all in one serving transaction. Large
tables stream through the staging writer's COPY chunks (bounded memory), with a progress
line every 200,000 rows. A crash before the commit leaves nothing staged; the next start
drops the unused slot and begins again, so nothing is doubled.

Resync (``cdcflow resync``) repairs a gap the same way with a new slot, and also stages a
delete (op 1) for every key whose latest staged state is live but which the snapshot no
longer has, so projections equal the source again. All captures of a source share one
slot, so a resync re-snapshots all of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import psycopg
from psycopg import sql

from cdcflow import db, sqlfiles
from cdcflow.positions import format_pg_lsn
from cdcflow.serving import schema
from cdcflow.serving.control import read_watermarks
from cdcflow.sources.base import META_COLUMNS, OP_SNAPSHOT, TableSpec
from cdcflow.sources.postgres import PostgresSource

log = logging.getLogger(__name__)
Q = "serving_runtime.sql"
PROGRESS_ROWS = 200_000


def needs_initial_snapshot(serving: psycopg.Connection, source_name: str, specs: list[TableSpec]) -> bool:
    """True when no capture of this source has staged anything yet."""
    wms = read_watermarks(serving, source_name)
    return all(spec.capture in wms and wms[spec.capture].state == "INIT" for spec in specs)


def commit_snapshot(serving: psycopg.Connection, source_name: str, lsn: int, counts: dict[str, int]) -> None:
    """A snapshot is staged: the captures' watermarks go to its position (with its row
    counts), projections are woken, and it all commits."""
    serving.execute(
        sqlfiles.query(Q, "watermarks_after_snapshot"),
        {"source": source_name, "lsn": lsn, "captures": list(counts), "rows": list(counts.values())},
    )
    serving.execute(sqlfiles.query(Q, "notify_staged"), {"source": source_name})
    serving.commit()


def initial_snapshot(source: PostgresSource, serving: psycopg.Connection, source_name: str) -> int:
    """Create the slot and stage every captured table's rows. Returns the new watermark."""
    return take_snapshot(source, serving, source_name, repair=False)


def take_snapshot(source: PostgresSource, serving: psycopg.Connection, source_name: str, *, repair: bool) -> int:
    specs = source.describe_tables()
    if source.slot_state() is not None:
        if repair:
            log.warning("resync: dropping replication slot %s to take a fresh snapshot", source.slot)
        else:
            # Created by a start that died before its snapshot committed: nothing was staged
            # from it (every capture is INIT), so it is safe to start over.
            log.warning("dropping replication slot %s: it was created but nothing was staged from it", source.slot)
        source.drop_slot()
    cp, snapshot_name, repl = source.create_slot_with_snapshot()
    watermark = cp - 1
    started = time.monotonic()
    counts: dict[str, int] = {}
    try:
        with db.rolled_back_on_error(serving, "snapshot"):
            binary = use_binary(source, serving)
            reader = db.connect(source.dsn, "source")
            try:
                reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                reader.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_name)))
                for spec in specs:
                    with schema.indexes_built_after(serving, spec):
                        counts[spec.capture] = copy_table(reader, serving, spec, watermark, binary=binary)
                reader.rollback()
            finally:
                reader.close()
            if repair:
                for spec in specs:
                    counts[spec.capture] += stage_vanished(serving, spec, watermark, counts[spec.capture])
            commit_snapshot(serving, source_name, watermark, counts)
    finally:
        repl.close()  # type: ignore[attr-defined]
    log.info(
        "%s staged %d rows from %d tables in %.1fs; streaming from %s",
        "resync snapshot" if repair else "initial snapshot",
        sum(counts.values()),
        len(specs),
        time.monotonic() - started,
        format_pg_lsn(watermark),
    )
    return watermark


def copy_table(
    reader: psycopg.Connection,
    serving: psycopg.Connection,
    spec: TableSpec,
    watermark: int,
    *,
    binary: bool = False,
    on_rows: Callable[[int], None] | None = None,
) -> int:
    """Stage every row of ``spec``'s table that ``reader``'s snapshot shows, as op 5 at
    ``watermark``, inside ``serving``'s open transaction. Returns the rows staged.

    The source builds the staging rows itself (``COPY (SELECT position, row number, 5, NULL,
    columns ...) TO STDOUT``) and each block goes unchanged into ``COPY stg_cdc_... FROM
    STDIN``: no row is parsed or rebuilt here, memory is one block. ``binary``: both COPYs in
    binary format (same major version and built-in types only: see
    ``PostgresSource.binary_transfer``). ``on_rows`` hears the count every 10,000 rows."""
    fmt = sql.SQL(" (FORMAT binary)") if binary else sql.SQL("")
    cols = [sql.Identifier(c) for c in spec.column_names]
    select = sql.SQL(
        "COPY (SELECT CAST({lsn} AS numeric(25,0)), CAST(row_number() OVER () AS numeric(25,0)), "
        "CAST({op} AS smallint), CAST(NULL AS timestamptz), {cols} FROM {table}) TO STDOUT{fmt}"
    ).format(
        lsn=sql.Literal(watermark),
        op=sql.Literal(OP_SNAPSHOT),
        cols=sql.SQL(", ").join(cols),
        table=sql.Identifier(spec.schema, spec.name),
        fmt=fmt,
    )
    target = sql.SQL("COPY {} ({}) FROM STDIN{}").format(
        sql.Identifier(spec.staging_table),
        sql.SQL(", ").join(sql.Identifier(c) for c in (*META_COLUMNS, *spec.column_names)),
        fmt,
    )
    n = 0
    with reader.cursor() as rcur, rcur.copy(select) as out, serving.cursor() as wcur, wcur.copy(target) as into:
        for block in out:  # COPY TO sends one message per row
            into.write(block)
            n += 1
            if n % 10_000 == 0:
                if on_rows is not None:
                    on_rows(n)
                elif n % PROGRESS_ROWS == 0:
                    log.info("snapshot of %s: %d rows so far", spec.qualified, n)
    if binary:
        n -= 1  # the header comes with the first row, the trailer alone in the last message
    log.info("snapshot of %s: %d rows", spec.qualified, n)
    return n


def use_binary(source: PostgresSource, serving: psycopg.Connection) -> bool:
    """Whether a snapshot may copy in binary format (the stream's rule), said once in the log."""
    told, source.serving_version = source.serving_version, serving.info.server_version
    try:
        binary, why = source.binary_transfer()
    finally:
        source.serving_version = told  # the stream's own choice stays the ingestion worker's
    log.info("snapshot copy: %s", why)
    return binary


def stage_vanished(
    serving: psycopg.Connection, spec: TableSpec, watermark: int, base: int, history: int | None = None
) -> int:
    """Stage a delete at ``watermark`` for every key whose latest state staged at or before
    ``history`` (default: before ``watermark``) is live but which the snapshot staged at
    ``watermark`` does not have. Returns how many."""
    keys = [sql.Identifier(k) for k in spec.key_columns]
    cur = serving.execute(
        sqlfiles.query(
            Q,
            "stage_vanished_deletes",
            table=sql.Identifier(spec.staging_table),
            keys=sql.SQL(", ").join(keys),
            k_keys=sql.SQL(", ").join(sql.SQL("k.{}").format(k) for k in keys),
            match=sql.SQL(" AND ").join(sql.SQL("s.{k} = k.{k}").format(k=k) for k in keys),
        ),
        {"lsn": watermark, "base": base, "history": watermark if history is None else history},
    )
    if cur.rowcount:
        log.info("resync: %s had %d keys deleted during the gap; staged their deletes", spec.qualified, cur.rowcount)
    return max(cur.rowcount, 0)


def resync(source: PostgresSource, serving: psycopg.Connection, source_name: str) -> int:
    """Repair a gap: fresh slot and snapshot, deletes for vanished keys, captures back to OK."""
    return take_snapshot(source, serving, source_name, repair=True)
