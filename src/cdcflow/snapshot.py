"""Consistent snapshots of a PostgreSQL source: the initial load (invariant 6) and resync,
as :class:`cdcflow.sources.postgres.PostgresSource` implements them for the Source protocol.

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

Resync (:func:`resync_captures`): the named captures (default: those in GAP) are
backfilled alone, the others streaming on, while the slot is sound and some other capture
is complete. Otherwise (slot missing or lost, every capture named or in GAP) it repairs the
same way as the initial load with a new slot, as it must: the captures share it. That
also stages a delete (op 1) for every key whose latest staged state is live but that the
snapshot no longer has, so projections equal the source again.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import psycopg

from cdcflow import backfill, db, leases, sqlfiles
from cdcflow.config import Settings
from cdcflow.copying import CopyOptions, copy_table, stage_vanished, use_binary
from cdcflow.positions import format_pg_lsn
from cdcflow.serving.control import Watermark, commit_snapshot, read_watermarks
from cdcflow.sources.base import TableSpec

if TYPE_CHECKING:  # the source module calls this one: no import of it at run time
    from cdcflow.sources.postgres import PostgresSource

__all__ = [
    "commit_snapshot",
    "initial_snapshot",
    "initial_snapshots",
    "needs_initial_snapshot",
    "resync",
    "resync_captures",
    "stage_vanished",
]

log = logging.getLogger(__name__)
QUERIES = "serving_runtime.sql"


def needs_initial_snapshot(serving: psycopg.Connection, source_name: str, specs: list[TableSpec]) -> bool:
    """True when no capture of this source has staged anything yet."""
    wms = read_watermarks(serving, source_name)
    return all(spec.capture in wms and wms[spec.capture].state == "INIT" for spec in specs)


def initial_snapshots(source: PostgresSource, serving: psycopg.Connection, settings: Settings) -> None:
    """The initial load when no capture has staged anything yet; else say which tables
    the backfill worker of 'cdcflow run' still copies."""
    if needs_initial_snapshot(serving, settings.source_name, source.describe_tables()):
        initial_snapshot(source, serving, settings)
        return
    todo = backfill.pending(serving, settings.source_name)
    if todo:
        log.info("tables still to copy (%s): 'cdcflow run' copies them while it streams", ", ".join(todo))


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
                sqlfiles.query(QUERIES, "snapshot_begin"),
                {
                    "source": source_name,
                    "captures": [s.capture for s in specs],
                    "lsn": watermark,
                    "why": ("resync: " if repair else "") + "its table's rows are being copied",
                },
            ).fetchall()
            for spec in specs:
                serving.execute(
                    sqlfiles.query(QUERIES, "backfill_restart"), {"source": source_name, "capture": spec.capture}
                )
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
        repl.close()
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


def resync_captures(
    source: PostgresSource, serving: psycopg.Connection, settings: Settings, captures: list[str] | None
) -> int:
    """Repair the named captures (default: those in GAP or BACKFILL): alone when they can
    be, else every capture with a fresh slot (see the module docstring)."""
    wms = read_watermarks(serving, settings.source_name)
    serving.rollback()
    for wm in wms.values():
        if not wm.active:
            log.info("capture %s is %s: %s", wm.capture, wm.state, wm.last_error or "")
    by_name = {s.qualified: s.capture for s in source.describe_tables()}
    wanted = sorted(
        {by_name.get(c, c) for c in captures}
        if captures
        else {c for c, w in wms.items() if w.state in ("GAP", "BACKFILL")}
    )
    alone = _why_not_alone(source, wms, wanted)
    if alone is None:
        return _backfill_captures(settings, source, serving, wanted)
    log.info("re-snapshotting every capture of source %s: %s", settings.source_name, alone)
    return resync(source, serving, settings)


def _why_not_alone(source: PostgresSource, wms: dict[str, Watermark], wanted: list[str]) -> str | None:
    """Why the captures ``wanted`` cannot be backfilled alone (None: they can)."""
    if not wanted:
        return "no capture is in GAP"
    state = source.slot_state()
    if state is None:
        return f"replication slot {source.slot} is missing"
    if state.wal_status == "lost":
        return f"replication slot {source.slot} lost the WAL it needed"
    if not any(w.state == "OK" for c, w in wms.items() if c not in wanted):
        return "no other capture is streaming (they share one slot)"
    return None


def _backfill_captures(
    settings: Settings, source: PostgresSource, serving: psycopg.Connection, wanted: list[str]
) -> int:
    """Backfill each capture: by the running ``cdcflow run`` if there is one (this waits,
    showing its progress), else here and now."""
    _, serving_dsn = settings.require_dsns()
    runner = leases.live_holder(serving, f"ingest:{settings.source_name}")
    for capture in wanted:
        if runner is None:
            backfill.run(
                source, serving_dsn, settings.source_name, capture, why="resync: re-copying its table", streaming=False
            )
        else:
            log.info(
                "cdcflow run (%s) streams this source: it backfills %s; waiting for it (Ctrl-C stops "
                "waiting, not the backfill)",
                runner,
                capture,
            )
            backfill.begin(serving, settings.source_name, capture, "resync: re-copying its table")
            backfill.wait_done(serving, settings.source_name, capture)
    wms = read_watermarks(serving, settings.source_name)
    serving.rollback()
    return max(wms[c].last_lsn for c in wanted)
