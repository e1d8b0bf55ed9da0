"""``cdcflow status``: what every capture and projection is doing, from the control tables.

Works while the pipeline runs or not; reads the source only for its current position
and slot. Never prints a secret.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import psycopg

from cdcflow import db, leases, sqlfiles
from cdcflow.config import Settings
from cdcflow.errors import CdcflowError
from cdcflow.serving.control import Watermark, read_watermarks
from cdcflow.sources.base import Source

#: A position as the source's engine prints it (``Source.format_position``).
Format = Callable[[int | None], str]

#: BACKFILL: its table is being copied while it streams (a table added, a resync of it alone).
HEALTHY_CAPTURE = ("OK", "BACKFILL")
#: REMOVED: no definition any more (not maintained, nothing wrong with it).
HEALTHY_PROJECTION = ("OK", "INIT", "REMOVED")


@dataclass
class CaptureStatus:
    capture: str
    table: str
    state: str
    watermark: str
    source_position: str
    lag_bytes: int | None
    lag_seconds: float | None
    rows_staged: int
    last_error: str | None
    gap: str | None
    owner: str | None = None  # the cdcflow run process streaming it (lease holder)


@dataclass
class ProjectionStatus:
    projection: str
    status: str
    as_of: str
    freshness_seconds: float | None
    built_at: str | None
    last_error: str | None
    restated_buckets: int
    mode: str | None = None  # incremental, or full (recomputed every cycle)
    owner: str | None = None  # the cdcflow run process maintaining it (lease holder)


@dataclass
class Status:
    source_name: str
    engine: str
    source_reachable: bool
    slot: dict | None
    captures: list[CaptureStatus] = field(default_factory=list)
    projections: list[ProjectionStatus] = field(default_factory=list)
    owners: list[dict] = field(default_factory=list)  # lease holders (several cdcflow run processes)
    backfills: list[dict] = field(default_factory=list)  # tables being copied: rows done, estimate, rate
    problems: list[str] = field(default_factory=list)
    current: int | None = None  # the source's position, as a number (None: unreachable)

    @property
    def healthy(self) -> bool:
        return not self.problems


def collect(settings: Settings, *, source: Source | None = None, serving: psycopg.Connection | None = None) -> Status:
    """The status of every capture and projection. A caller that collects often (the
    console) passes its own ``source`` and autocommit ``serving`` connection, which are
    used and left open; otherwise both are opened and closed here."""
    _, serving_dsn = settings.require_dsns()
    from cdcflow.bootstrap import make_source

    own_source = source is None
    src = make_source(settings) if source is None else source
    try:
        out = _read_source(settings, src)
    finally:
        if own_source:
            src.close()
    if serving is None:
        with db.connect(serving_dsn, "serving", autocommit=True) as conn:
            _read_serving(settings, conn, out, src.format_position)
    else:
        _read_serving(settings, serving, out, src.format_position)
    return out


def _read_source(settings: Settings, source: Source) -> Status:
    """Position, slot and reachability of the source: a Status without captures yet."""
    out = Status(settings.source_name, source.engine, True, None)
    try:
        out.current = source.current_lsn()
        facts = source.status_facts()
        out.slot = facts.slot
        out.problems.extend(facts.problems)
    except CdcflowError as exc:
        out.source_reachable = False
        out.problems.append(f"source unreachable: {exc}")
    return out


def _read_serving(settings: Settings, conn: psycopg.Connection, out: Status, fmt: Format) -> None:
    try:
        wms = read_watermarks(conn, settings.source_name)
        meta = conn.execute(sqlfiles.query("serving_status.sql", "projection_metadata")).fetchall()
        lease_rows = leases.list_leases(conn)
        backfills = conn.execute(
            sqlfiles.query("serving_runtime.sql", "read_backfills"), {"source": settings.source_name}
        ).fetchall()
    except psycopg.errors.UndefinedTable:
        raise CdcflowError("the serving database has no cdcflow tables: run 'cdcflow bootstrap' first") from None
    now = dt.datetime.now(dt.UTC)
    _owners(out, lease_rows)
    live = {o["resource"]: o["owner"] for o in out.owners if o["owner"]}
    _captures(out, wms.values(), now, live, fmt)
    for capture, _lsn, done, estimate, started_at, updated_at, resumed in backfills:
        seconds = (updated_at - started_at).total_seconds()
        out.backfills.append(
            {
                "capture": capture,
                "rows_done": int(done),
                "rows_estimate": int(estimate) if estimate is not None else None,
                "rows_per_second": round((done - resumed) / seconds) if seconds > 0 else None,
                "since": started_at,
            }
        )
    for name, status, as_of_lsn, as_of_time, built_at, last_error, restated, mode in meta:
        fresh = (now - as_of_time).total_seconds() if as_of_time else None
        out.projections.append(
            ProjectionStatus(
                name,
                status,
                fmt(int(as_of_lsn) if as_of_lsn is not None else None),
                fresh,
                built_at.isoformat() if built_at else None,
                last_error,
                int(restated or 0),
                mode,
                live.get(f"projection:{name}"),
            )
        )
        if status not in HEALTHY_PROJECTION:
            out.problems.append(f"projection {name} is {status}" + (f": {last_error}" if last_error else ""))


def _owners(out: Status, lease_rows: list[tuple]) -> None:
    for resource, owner, token, expires_at, acquired_at, _renewed, live in lease_rows:
        out.owners.append(
            {
                "resource": resource,
                "owner": owner if live else None,
                "token": int(token),
                "expires_at": expires_at,
                "since": acquired_at if live else None,
            }
        )


def _captures(out: Status, wms: Iterable[Watermark], now: dt.datetime, live: dict[str, str], fmt: Format) -> None:
    current = out.current
    for wm in wms:
        lag_bytes = max(0, current - wm.last_lsn) if current is not None and wm.last_lsn else None
        # Seconds since the watermark last moved: a running worker moves it at least every
        # POLL_INTERVAL_SECONDS (idle advance), so this stays small unless ingestion is behind
        # or stopped; 0 when nothing at all is pending.
        lag_s = None
        if lag_bytes == 0:
            lag_s = 0.0
        elif lag_bytes is not None:
            lag_s = max(0.0, (now - wm.updated_at).total_seconds())
        gap = None
        if wm.state == "GAP":
            gap = f"{fmt(wm.gap_from)} .. {fmt(wm.gap_to)}"
        # One stream per source (PostgreSQL) or one per capture instance (SQL Server).
        owner = live.get(f"ingest:{out.source_name}:{wm.capture}") or live.get(f"ingest:{out.source_name}")
        out.captures.append(
            CaptureStatus(
                wm.capture,
                wm.source_table,
                wm.state,
                fmt(wm.last_lsn if wm.last_lsn else None),
                fmt(current),
                lag_bytes,
                lag_s,
                wm.rows_staged,
                wm.last_error,
                gap,
                owner,
            )
        )
        if wm.state not in HEALTHY_CAPTURE:
            out.problems.append(f"capture {wm.capture} is {wm.state}" + (f": {wm.last_error}" if wm.last_error else ""))


def render_json(status: Status) -> str:
    data = asdict(status)
    del data["current"]  # each capture's source_position says it, in the engine's format
    data["healthy"] = status.healthy
    return json.dumps(data, indent=2, default=str)


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}"
    return str(v)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def render_text(status: Status) -> str:
    parts = [f"source {status.source_name} ({status.engine})" + ("" if status.source_reachable else " UNREACHABLE")]
    if status.slot:
        s = status.slot
        parts.append(
            f"slot {s['name']}: confirmed {s['confirmed_flush']}, restart {s['restart_lsn']}, "
            f"wal_status {s['wal_status']}, retained {_fmt(s['retained_wal_bytes'])} bytes, "
            f"{'active' if s['active'] else 'inactive'}"
        )
    parts.append("")
    parts.append(
        _table(
            ["CAPTURE", "STATE", "WATERMARK", "SOURCE", "LAG_BYTES", "LAG_S", "ROWS_STAGED"],
            [
                [
                    c.capture,
                    c.state,
                    c.watermark,
                    c.source_position,
                    _fmt(c.lag_bytes),
                    _fmt(c.lag_seconds),
                    str(c.rows_staged),
                ]
                for c in status.captures
            ],
        )
    )
    if status.projections:
        parts.append("")
        parts.append(
            _table(
                ["PROJECTION", "STATUS", "MODE", "AS_OF", "FRESHNESS_S", "RESTATED"],
                [
                    [p.projection, p.status, _fmt(p.mode), p.as_of, _fmt(p.freshness_seconds), str(p.restated_buckets)]
                    for p in status.projections
                ],
            )
        )
    if status.backfills:
        parts.append("")
        parts.append(
            _table(
                ["BACKFILL", "ROWS", "OF_ABOUT", "ROWS_PER_S", "SINCE"],
                [
                    [
                        b["capture"],
                        str(b["rows_done"]),
                        _fmt(b["rows_estimate"]),
                        _fmt(b["rows_per_second"]),
                        b["since"].isoformat(timespec="seconds"),
                    ]
                    for b in status.backfills
                ],
            )
        )
    if status.owners:
        parts.append("")
        parts.append(
            _table(
                ["WORK", "OWNER", "SINCE"],
                [
                    [
                        o["resource"],
                        o["owner"] or "(none: taken over within LEASE_SECONDS)",
                        o["since"].isoformat(timespec="seconds") if o["since"] else "-",
                    ]
                    for o in status.owners
                ],
            )
        )
    if status.problems:
        parts.append("")
        parts.extend(f"problem: {p}" for p in status.problems)
    return "\n".join(parts)


def wait_caught_up(settings: Settings, timeout: float, stop: threading.Event | None = None) -> bool:
    """Wait until every active capture's watermark covers the source's current position."""
    from cdcflow.bootstrap import make_source

    _, serving_dsn = settings.require_dsns()
    source = make_source(settings)
    try:
        target = source.current_lsn()
    finally:
        source.close()
    deadline = time.monotonic() + timeout
    with db.connect(serving_dsn, "serving", autocommit=True) as conn:
        while time.monotonic() < deadline:
            wms = [w for w in read_watermarks(conn, settings.source_name).values() if w.active]
            if wms and min(w.last_lsn for w in wms) + 1 >= target:
                return True
            if stop is not None and stop.is_set():
                return False
            time.sleep(0.05)
    return False
