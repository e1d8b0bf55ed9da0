"""Consistent snapshots of a PostgreSQL source: the initial load (invariant 6) and resync.

The slot is created over the replication protocol with ``EXPORT_SNAPSHOT``; while that
connection stays open, connections that import the snapshot (``SET TRANSACTION
SNAPSHOT``) read each captured table with COPY. The rows are exactly the state before the
slot's consistent point ``cp``: every later commit is streamed. They are staged as op 5 at
``lsn = cp - 1`` (before any streamed change), in chunks of heap blocks that each commit
with their record (``cdcflow.copying``), so memory stays one COPY block and a crash loses
only the chunks in flight.

First, in one transaction, every capture goes to ``BACKFILL`` with its watermark at
``cp - 1``. A crash after that leaves the captures there: the next ``cdcflow run`` streams
from ``cp - 1`` and its backfill worker copies the chunks not done, from new snapshots
(``cdcflow.backfill``). A crash before it leaves every capture ``INIT``: the next start
drops the unused slot and begins again. Each capture becomes ``OK`` once its table is in.

Resync (``cdcflow resync`` when the slot is lost, or every capture is in GAP) repairs the
same way with a new slot, and also stages a delete (op 1) for every key whose latest
staged state is live but that the snapshot no longer has, so projections equal the
source again.
"""

from __future__ import annotations

import logging
import time

import psycopg

from cdcflow import backfill, db, sqlfiles
from cdcflow.config import Settings
from cdcflow.copying import CopyOptions, copy_table, stage_vanished, use_binary
from cdcflow.positions import format_pg_lsn
from cdcflow.serving.control import read_watermarks
from cdcflow.sources.base import TableSpec
from cdcflow.sources.postgres import PostgresSource

__all__ = ["commit_snapshot", "initial_snapshot", "needs_initial_snapshot", "resync", "stage_vanished"]

log = logging.getLogger(__name__)
Q = "serving_runtime.sql"


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


def initial_snapshot(source: PostgresSource, serving: psycopg.Connection, settings: Settings) -> int:
    """Create the slot and stage every captured table's rows. Returns the new watermark."""
    return take_snapshot(source, serving, settings, repair=False)


def take_snapshot(source: PostgresSource, serving: psycopg.Connection, settings: Settings, *, repair: bool) -> int:
    specs = source.describe_tables()
    _, serving_dsn = settings.require_dsns()
    with backfill.copy_lock(serving_dsn, settings.source_name, [s.capture for s in specs], wait=True):
        return _snapshot(source, serving, settings, specs, repair)


def _snapshot(source: PostgresSource, serving: psycopg.Connection, settings: Settings, specs, repair: bool) -> int:
    source_name = settings.source_name
    _, serving_dsn = settings.require_dsns()
    if source.slot_state() is not None:
        if repair:
            log.warning("resync: dropping replication slot %s to take a fresh snapshot", source.slot)
        else:
            # Created by a start that died before its snapshot began: nothing was staged
            # from it (every capture is INIT), so it is safe to start over.
            log.warning("dropping replication slot %s: it was created but nothing was staged from it", source.slot)
        source.drop_slot()
    cp, snapshot_name, repl = source.create_slot_with_snapshot()
    watermark = cp - 1
    started = time.monotonic()
    try:
        with db.rolled_back_on_error(serving, "snapshot"):
            # From here on a crash leaves the captures in BACKFILL at the slot's position:
            # 'cdcflow run' streams from there and copies the chunks not done.
            rows = serving.execute(
                sqlfiles.query(Q, "snapshot_begin"),
                {
                    "source": source_name,
                    "captures": [s.capture for s in specs],
                    "lsn": watermark,
                    "why": ("resync: " if repair else "") + "its table's rows are being copied",
                },
            ).fetchall()
            for spec in specs:
                serving.execute(sqlfiles.query(Q, "backfill_restart"), {"source": source_name, "capture": spec.capture})
            serving.commit()
        history = {str(c): int(h) for c, h in rows}
        binary = use_binary(source, serving)
        for spec in specs:
            copy_table(
                source,
                serving_dsn,
                source_name,
                spec,
                snapshot_name,
                watermark,
                drop_indexes=True,
                binary=binary,
                options=CopyOptions.of(settings),
            )
    finally:
        repl.close()  # type: ignore[attr-defined]
    for spec in specs:
        backfill.complete(
            serving,
            source,
            source_name,
            spec,
            history[spec.capture],
            captured=[s.capture for s in specs],
            streaming=False,
            binary=binary,
        )
    log.info(
        "%s staged %d tables in %.1fs; streaming from %s",
        "resync snapshot" if repair else "initial snapshot",
        len(specs),
        time.monotonic() - started,
        format_pg_lsn(watermark),
    )
    return watermark


def resync(source: PostgresSource, serving: psycopg.Connection, settings: Settings) -> int:
    """Repair a gap: fresh slot and snapshot, deletes for vanished keys, captures back to OK."""
    return take_snapshot(source, serving, settings, repair=True)
