"""Operator commands that change state: ``resync`` (repair a gap) and ``reset`` (start over).

Both are safe to run while ``cdcflow run`` is running: the running ingestion worker sees
the new watermarks and restarts its stream from there.
"""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql

from cdcflow import backfill, db, leases, snapshot, sqlfiles
from cdcflow.bootstrap import bootstrap, make_source
from cdcflow.config import Settings
from cdcflow.errors import ConfigError
from cdcflow.serving.control import read_watermarks

log = logging.getLogger(__name__)
Q = "serving_runtime.sql"


def resync(settings: Settings, captures: list[str] | None) -> int:
    """Repair captures with a fresh snapshot. Returns the position streaming goes on from.

    PostgreSQL: the named captures (default: those in GAP) are backfilled alone, the others
    streaming on, while the slot is sound and some other capture is complete; otherwise (slot
    missing or lost, every capture named or in GAP) the slot is re-created and every capture
    re-snapshotted, as it must: they share it."""
    _, serving_dsn = settings.require_dsns()
    source = make_source(settings)
    if source.engine == "sqlserver":
        return _resync_sqlserver(settings, source, captures)
    try:
        source.check()
        specs = _checked_specs(source, settings, captures)
        source.ensure_publication()
        with db.connect(serving_dsn, "serving") as serving:
            wms = read_watermarks(serving, settings.source_name)
            serving.rollback()
            for wm in wms.values():
                if not wm.active:
                    log.info("capture %s is %s: %s", wm.capture, wm.state, wm.last_error or "")
            by_name = {s.qualified: s.capture for s in specs}
            wanted = sorted(
                {by_name.get(c, c) for c in captures}
                if captures
                else {c for c, w in wms.items() if w.state in ("GAP", "BACKFILL")}
            )
            alone = _why_not_alone(source, wms, wanted)
            if alone is None:
                return _backfill_captures(settings, source, serving, wanted)
            log.info("re-snapshotting every capture of source %s: %s", settings.source_name, alone)
            return snapshot.resync(source, serving, settings)
    finally:
        source.close()


def _why_not_alone(source, wms: dict, wanted: list[str]) -> str | None:
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


def _backfill_captures(settings: Settings, source, serving, wanted: list[str]) -> int:
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


def _checked_specs(source, settings: Settings, captures: list[str] | None) -> list:
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


def _resync_sqlserver(settings: Settings, source, captures: list[str] | None) -> int:
    """SQL Server: each capture instance has its own position, so only the named ones (default:
    every capture not OK) are re-snapshotted."""
    from cdcflow.sources.sqlserver import stage_snapshot

    _, serving_dsn = settings.require_dsns()
    try:
        source.check()
        _checked_specs(source, settings, captures)
        with db.connect(serving_dsn, "serving") as serving:
            wms = read_watermarks(serving, settings.source_name)
            serving.rollback()
            watermark = 0
            for one in source.per_capture():
                (spec,) = one.describe_tables()
                wanted = spec.capture in (captures or []) or spec.qualified in (captures or [])
                if wanted or (not captures and (spec.capture not in wms or wms[spec.capture].state != "OK")):
                    watermark = max(watermark, stage_snapshot(one, serving, settings.source_name, repair=True))
                one.close()
            return watermark
    finally:
        source.close()


def reset(settings: Settings) -> None:
    """The seed's reset: clear staging and projections, reset watermarks and checkpoints.

    The replication slot is dropped too, so the next ``run`` takes a new initial snapshot.
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
                        sqlfiles.query(Q, "cdcflow_tables"), {"staging": [s.staging_table for s in specs]}
                    ).fetchall()
                ]
                if tables:
                    serving.execute(
                        sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(sql.Identifier(t) for t in tables))
                    )
                for name in ("reset_watermarks", "reset_backfills", "reset_checkpoints", "reset_metadata"):
                    serving.execute(sqlfiles.query(Q, name), {"source": settings.source_name})
                serving.commit()
            except psycopg.Error as exc:
                serving.rollback()
                raise db.wrap_db_error("reset", exc) from None
        if source.engine == "postgres" and source.slot_state() is not None:
            source.drop_slot()
        log.info("reset: cleared %d tables, watermarks and checkpoints; dropped slot %s", len(tables), source.slot)
    finally:
        source.close()


__all__ = ["bootstrap", "reset", "resync"]
