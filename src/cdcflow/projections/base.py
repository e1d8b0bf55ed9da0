"""The lifecycle every projection shares.

One cycle, in one serving transaction:

1. lock the projection's metadata row (``FOR UPDATE``): cycles and ``cdcflow rebuild``
   of one projection never overlap, even from different processes;
2. ``cutoff`` = the lowest ingestion watermark over the projection's required captures.
   A capture in GAP or PAUSED does not advance, so it holds the cutoff, and the
   projection reports STALE (naming the capture) instead of OK;
3. read the checkpoints; is there a staged change in ``(checkpoint, cutoff]``? (a
   primary-key range scan on ``__lsn``);
4. the projection applies that delta (:meth:`Projection.apply`): DuckDB in process,
   state read by index, rows written with COPY (a projection whose definition is new or
   changed is rebuilt from staging instead);
5. optionally the self-check (:meth:`Projection.self_check`): of the whole projection, or
   (what the worker does) of only the keys that a check run outside the cycle, on a
   snapshot of its own (:meth:`Projection.find_suspects`), found different, so that a
   check of a large projection never holds up the cycles;
6. checkpoints := cutoff, metadata := OK/STALE with ``as_of_lsn`` = cutoff, commit.

A failure rolls everything back; the metadata then says ERROR with the message (in a
transaction of its own) and the next cycle tries again from the same checkpoints.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import duckdb
import psycopg
from psycopg import sql

from cdcflow import db, sqlfiles
from cdcflow.config import Settings
from cdcflow.errors import TerminalError
from cdcflow.serving import control

log = logging.getLogger(__name__)
T = TypeVar("T")
QUERIES = "projections/control.sql"
HELD_STATES = ("GAP", "PAUSED")


@dataclass
class Context:
    """What :meth:`Projection.apply` works with during one cycle."""

    conn: psycopg.Connection
    duck: duckdb.DuckDBPyConnection
    settings: Settings
    staging: dict[str, str]  # capture -> staging table
    checkpoints: dict[str, int]
    cutoff: int
    fresh: bool = False  # a rebuild: state and rows are empty, the delta is all of staging
    #: A second connection (:func:`snapshot_connection`) on which a projection may read its
    #: stored state in a thread while ``conn`` writes the new state: it sees the state as
    #: committed before this cycle (the "before" values), whatever ``conn`` has written.
    #: Safe because only a holder of the projection's lock (this cycle) writes that state.
    reader: psycopg.Connection | None = None

    def after(self, capture: str) -> int:
        return self.checkpoints.get(capture, 0)


@dataclass
class CycleResult:
    applied: bool = False  # a delta was applied (False: nothing new, or only the position moved)
    cutoff: int = 0
    rows_changed: int = 0
    restated: int = 0
    status: str = "OK"
    held: list[str] = field(default_factory=list)
    seconds: float = 0.0
    rebuilt: bool = False  # the cycle rebuilt the projection (a new or changed definition)


class Projection(ABC):
    """One projection: its table, the captures it reads, and how it applies a delta."""

    name: str
    captures: tuple[str, ...]
    #: Identifies the definition the projection's rows are built from: when the stored
    #: digest differs (a new or changed definition), the next cycle rebuilds from staging.
    digest: str | None = None
    #: How it is maintained: "incremental" or "full" (recomputed every cycle).
    mode = "incremental"
    #: The file it was defined in, shown in status.
    definition_file: str | None = None
    #: Whether :meth:`self_check` and :meth:`find_suspects` do anything (the worker runs
    #: no self-check thread otherwise).
    has_self_check = False
    #: Whether :meth:`apply` reads stored state on :attr:`Context.reader` (the worker opens
    #: that second connection only for such a projection).
    uses_reader = False

    @abstractmethod
    def apply(self, ctx: Context) -> int:
        """Apply the staged changes in ``(checkpoint, cutoff]``; returns rows changed."""

    @abstractmethod
    def clear(self, conn: psycopg.Connection) -> None:
        """Delete the projection's rows and state (a rebuild's first step)."""

    def prepare(self, conn: psycopg.Connection) -> None:  # noqa: B027 (optional, nothing to do by default)
        """Before a rebuild: create (or re-create) the projection's tables."""

    def self_check(self, ctx: Context, keys: list | None = None) -> int:
        """Under the cycle's lock: restate the rows among ``keys`` (from :meth:`find_suspects`;
        None: check everything now) that differ from what the state gives; returns how many."""
        return 0

    def find_suspects(
        self, conn: psycopg.Connection, settings: Settings, pause: Callable[[float], bool] | None = None
    ) -> list:
        """Outside any cycle, on one snapshot of state and projection (``conn``: from
        :func:`snapshot_connection`): the keys whose rows differ from what the state gives
        (normally none). ``pause(seconds)`` may be called between parts of a long check."""
        return []


def open_connection(dsn: str) -> psycopg.Connection:
    """A serving connection for projections: transactions, TimeZone UTC, no JIT.

    JIT compiles a query whose estimated cost is high; a cycle's statements touch few rows
    by index, but with ``index_plans`` on their estimates carry the planner's penalty for a
    disabled plan, so each would be compiled (about 6 ms a statement, 60 ms the first time
    in a session: a third of a 10,000-change cycle, measured on PostgreSQL 15)."""
    conn = db.connect(dsn, "serving")
    conn.execute("SET TimeZone = 'UTC'")
    conn.execute("SET jit = off")
    conn.commit()
    return conn


def snapshot_connection(dsn: str) -> psycopg.Connection:
    """A read-only serving connection whose transactions each read one snapshot (REPEATABLE
    READ): the self-check's, outside the cycles."""
    conn = open_connection(dsn)
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    return conn


def in_thread(name: str, fn: Callable[..., T], *args: Any) -> Future[T]:
    """``fn(*args)`` in a thread of its own; its result (or exception) in the future."""
    future: Future[T] = Future()

    def run() -> None:
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to whoever waits for the result
                future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def open_duckdb() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB in UTC, with the macros translated expressions call."""
    from cdcflow.projections.translate import MACROS

    duck = duckdb.connect(":memory:")
    duck.execute("SET TimeZone = 'UTC'")
    for macro in MACROS:
        duck.execute(macro)
    return duck


def ensure_control_rows(conn: psycopg.Connection, projection: Projection, source_name: str) -> None:
    conn.execute(sqlfiles.query(QUERIES, "ensure_metadata"), {"projection": projection.name})
    for capture in projection.captures:
        conn.execute(
            sqlfiles.query(QUERIES, "ensure_checkpoint"),
            {"projection": projection.name, "source": source_name, "capture": capture},
        )


def _lock(conn: psycopg.Connection, projection: Projection, source_name: str) -> tuple[str, str | None]:
    """Lock the projection's metadata row for this transaction; returns its status and the
    digest of the definition its rows were built from."""
    row = conn.execute(sqlfiles.query(QUERIES, "lock_metadata"), {"projection": projection.name}).fetchone()
    if row is None:
        ensure_control_rows(conn, projection, source_name)
        row = conn.execute(sqlfiles.query(QUERIES, "lock_metadata"), {"projection": projection.name}).fetchone()
    assert row is not None
    return str(row[0]), row[1]


def _position(
    conn: psycopg.Connection, projection: Projection, source_name: str
) -> tuple[int, dict[str, str], list[str]]:
    """Cutoff, staging tables and held captures for the projection, each as "capture is
    why". A capture in GAP or PAUSED holds the cutoff at its watermark; one whose table is
    still being copied (INIT, BACKFILL) holds it where its staged history ends."""
    wms = control.read_watermarks(conn, source_name)
    missing = [c for c in projection.captures if c not in wms]
    if missing:
        raise TerminalError(
            f"projection {projection.name} needs capture {missing[0]} of source {source_name}, which is not "
            f"captured: add its table to CAPTURE_TABLES or disable the projection"
        )
    cutoff = min((wms[c].backfill_from or 0) if wms[c].incomplete else wms[c].last_lsn for c in projection.captures)
    held = [
        f"{c} is being backfilled" if wms[c].incomplete else f"{c} is {wms[c].state}"
        for c in projection.captures
        if wms[c].state in HELD_STATES or wms[c].incomplete
    ]
    return cutoff, {c: wms[c].staging_table for c in projection.captures}, held


def _as_of_time(conn: psycopg.Connection, staging: dict[str, str], cutoff: int) -> dt.datetime | None:
    times = []
    for table in staging.values():
        row = conn.execute(
            sqlfiles.query(QUERIES, "commit_time_at", table=sql.Identifier(table)), {"upto": cutoff}
        ).fetchone()
        if row and row[0] is not None:
            times.append(row[0])
    return max(times) if times else None


def _finish(
    conn: psycopg.Connection, projection: Projection, settings: Settings, ctx: Context, result: CycleResult
) -> None:
    conn.execute(
        sqlfiles.query(QUERIES, "write_checkpoints"),
        {
            "lsn": ctx.cutoff,
            "projection": projection.name,
            "source": settings.source_name,
            "captures": list(projection.captures),
        },
    )
    error = None
    if result.held:
        result.status = "STALE"
        error = f"capture {'; capture '.join(result.held)}: rows are as of where its staging is complete"
    conn.execute(
        sqlfiles.query(QUERIES, "metadata_built"),
        {
            "status": result.status,
            "lsn": ctx.cutoff,
            "as_of_time": _as_of_time(conn, ctx.staging, ctx.cutoff),
            "error": error,
            "rows": result.rows_changed,
            "restated": result.restated,
            "projection": projection.name,
            "digest": projection.digest,
            "mode": projection.mode,
            "file": projection.definition_file,
        },
    )


def run_cycle(
    conn: psycopg.Connection,
    duck: duckdb.DuckDBPyConnection,
    projection: Projection,
    settings: Settings,
    *,
    self_check: bool = False,
    check_keys: list | None = None,
    reader: psycopg.Connection | None = None,
) -> CycleResult:
    """One incremental cycle inside the caller's transaction (the caller commits).

    ``self_check``: also run the self-check, of the whole projection or, with
    ``check_keys``, of those keys only. ``reader``: see :attr:`Context.reader`
    (without it, state is read on ``conn`` before anything is written)."""
    started = time.monotonic()
    status, digest = _lock(conn, projection, settings.source_name)
    if projection.digest is not None and digest != projection.digest:
        # A new definition, or one that changed since its rows were built: rebuild it.
        log.info(
            "%s: %s; building it from staging",
            projection.name,
            "new projection" if digest is None else "its definition changed",
        )
        result = rebuild(conn, duck, projection, settings, locked=True)
        result.rebuilt = True
        return result
    cutoff, staging, held = _position(conn, projection, settings.source_name)
    cps: dict[str, int] = {
        str(r[0]): int(r[1])
        for r in conn.execute(
            sqlfiles.query(QUERIES, "read_checkpoints"), {"projection": projection.name, "source": settings.source_name}
        )
    }
    checkpoints = {c: int(cps.get(c, 0)) for c in projection.captures}
    ctx = Context(conn, duck, settings, staging, checkpoints, cutoff, reader=reader)
    result = CycleResult(cutoff=cutoff, held=held)
    moving = [c for c in projection.captures if checkpoints[c] < cutoff]
    if not moving and not self_check and not held and status not in ("STALE", "ERROR"):
        return result  # nothing new, nothing to report
    if moving and any(
        conn.execute(
            sqlfiles.query(QUERIES, "delta_exists", table=sql.Identifier(staging[c])),
            {"after": checkpoints[c], "upto": cutoff},
        ).fetchone()[0]  # type: ignore[index]
        for c in moving
    ):
        result.rows_changed = projection.apply(ctx)
        result.applied = True
    if self_check:
        result.restated = projection.self_check(ctx, check_keys)
    _finish(conn, projection, settings, ctx, result)
    result.seconds = time.monotonic() - started
    return result


def rebuild(
    conn: psycopg.Connection,
    duck: duckdb.DuckDBPyConnection,
    projection: Projection,
    settings: Settings,
    *,
    locked: bool = False,
) -> CycleResult:
    """Full rebuild from staging up to the cutoff, inside the caller's transaction
    (``locked``: the caller holds the projection's lock already)."""
    started = time.monotonic()
    if not locked:
        _lock(conn, projection, settings.source_name)
    cutoff, staging, held = _position(conn, projection, settings.source_name)
    # The captures it reads may have changed with its definition: one checkpoint per capture it reads.
    ensure_control_rows(conn, projection, settings.source_name)
    conn.execute(
        sqlfiles.query(QUERIES, "drop_other_checkpoints"),
        {"projection": projection.name, "source": settings.source_name, "captures": list(projection.captures)},
    )
    projection.prepare(conn)
    projection.clear(conn)
    conn.execute(
        sqlfiles.query(QUERIES, "reset_checkpoints"), {"projection": projection.name, "source": settings.source_name}
    )
    ctx = Context(conn, duck, settings, staging, dict.fromkeys(projection.captures, 0), cutoff, fresh=True)
    result = CycleResult(applied=True, cutoff=cutoff, held=held)
    result.rows_changed = projection.apply(ctx)
    _finish(conn, projection, settings, ctx, result)
    result.seconds = time.monotonic() - started
    return result


def index_plans(conn: psycopg.Connection, on: bool = True) -> None:
    """Make delta-with-state joins use the state's indexes (see ``index_plans`` in control.sql)."""
    conn.execute(sqlfiles.query(QUERIES, "index_plans" if on else "default_plans"))


def record_error(conn: psycopg.Connection, projection: str, message: str) -> None:
    """Metadata ERROR with the message, in its own transaction (best effort)."""
    try:
        conn.rollback()
        conn.execute(sqlfiles.query(QUERIES, "ensure_metadata"), {"projection": projection})
        conn.execute(sqlfiles.query(QUERIES, "metadata_error"), {"error": message, "projection": projection})
        conn.commit()
    except psycopg.Error as exc:
        log.warning("could not record the error of %s: %s", projection, db.describe_error(exc))
