"""Staging compaction: keep staging bounded while rebuilds stay exact.

For each capture, the *horizon* is the lowest checkpoint of the enabled projections
that read it (the ingestion watermark when none does), lowered further so that only
rows staged more than ``STAGING_RETENTION`` ago lie at or below it. At or below the
horizon, staging is reduced to the latest row per key:

- update-befores (op 3) go: projections never read them;
- a row goes when a later row of its key (not an update-before) is also at or below the
  horizon: that later row, or a later one still, stays;
- a delete that is the last row left of its key goes: the key is absent either way.

Latest state per key, which is all a rebuild (and ``resync``'s vanished-key check, and
TOAST carry-forward) reads, is unchanged; projections already read everything at or
below the horizon. Rows above the horizon are never touched.

Work is done in batches of ``COMPACTION_BATCH_ROWS`` positions (a range of the staging
primary key), each its own short transaction of plain DELETEs: ingestion, which only
inserts above the watermark, is never blocked. A pass remembers where it got to; the next
pass only reads newer rows, plus at most one older row per key they touch.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from cdcflow import db, sqlfiles
from cdcflow.config import Settings
from cdcflow.errors import CdcflowError, TransientError
from cdcflow.serving import schema
from cdcflow.serving.control import read_watermarks
from cdcflow.worker import Worker

log = logging.getLogger(__name__)
QUERIES = "compaction.sql"
END_SEQ = 10**24  # greater than any __seqval (numeric(25,0))

Position = tuple[int, int]


@dataclass
class CaptureResult:
    capture: str
    horizon: int
    deleted: int = 0
    batches: int = 0


@dataclass
class PassResult:
    captures: list[CaptureResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def deleted(self) -> int:
        return sum(c.deleted for c in self.captures)


class Compactor:
    """Compaction of one source's staging tables; keeps its progress between passes."""

    def __init__(self, settings: Settings, stop: threading.Event | None = None) -> None:
        self.settings = settings
        self.stop = stop or threading.Event()
        self.done: dict[str, Position] = {}  # capture -> everything at or below is compacted
        self._keys: dict[str, list[str]] = {}

    def readers(self, conn: psycopg.Connection) -> dict[str, list[str]]:
        """capture -> the enabled projections that read it. An enabled projection that has no
        checkpoints yet (never planned) may read any capture: it is counted on all of them, so
        it holds compaction back until it has run."""
        from cdcflow import projections

        names = projections.definitions(self.settings).names
        rows = conn.execute(
            sqlfiles.query(QUERIES, "projection_captures"), {"source": self.settings.source_name, "projections": names}
        ).fetchall()
        out: dict[str, list[str]] = {}
        seen = set()
        for name, capture in rows:
            out.setdefault(capture, []).append(name)
            seen.add(name)
        unplanned = [n for n in names if n not in seen]
        if unplanned:
            for capture in read_watermarks(conn, self.settings.source_name):
                out.setdefault(capture, []).extend(unplanned)
        return out

    def horizon(self, conn: psycopg.Connection, capture: str, watermark: int, table: str, readers: list[str]) -> int:
        """The position at or below which this capture's staging may be compacted (0: none)."""
        h = watermark
        if readers:
            rows: dict[str, int] = dict(
                conn.execute(
                    sqlfiles.query(QUERIES, "projection_checkpoints"),
                    {"source": self.settings.source_name, "capture": capture, "projections": readers},
                ).fetchall()
            )
            if len(rows) < len(readers):
                return 0  # a projection that never ran still needs everything
            h = min(h, *(int(v) for v in rows.values()))
        retention = self.settings.staging_retention
        if h <= 0 or retention <= 0:
            return max(h, 0)
        return self._retention_horizon(conn, table, h, retention)

    def _retention_horizon(self, conn: psycopg.Connection, table: str, upper: int, retention: float) -> int:
        """Largest position <= upper whose newest row at or below it is older than retention
        (binary search by primary-key probes; __staged_at grows with __lsn)."""
        t = sql.Identifier(table)

        def old(lsn: int) -> bool | None:
            q = sqlfiles.query(QUERIES, "old_enough", table=t)
            row = conn.execute(q, {"lsn": lsn, "retention": retention}).fetchone()
            return None if row is None else bool(row[0])

        if old(upper):
            return upper
        row = conn.execute(sqlfiles.query(QUERIES, "lowest_lsn", table=t)).fetchone()
        if row is None or not old(int(row[0])):
            return 0
        lo, hi = int(row[0]), upper  # old(lo) is true, old(hi) is false
        for _ in range(100):
            if hi - lo <= 1:
                break
            mid = (lo + hi) // 2
            if old(mid):
                lo = mid
            else:
                hi = mid
        return lo

    def key_columns(self, conn: psycopg.Connection, table: str) -> list[str]:
        if table not in self._keys:
            rows = conn.execute(sqlfiles.query(QUERIES, "key_columns"), {"index": f"{table}_key_idx"}).fetchall()
            if not rows:
                raise CdcflowError(f"staging table {table} has no key index {table}_key_idx: run 'cdcflow bootstrap'")
            self._keys[table] = [r[0] for r in rows]
        return self._keys[table]

    def compact_capture(self, conn: psycopg.Connection, capture: str, table: str, horizon: int) -> CaptureResult:
        result = CaptureResult(capture, horizon)
        done = self.done.get(capture, (0, 0))
        if done[0] > horizon:  # positions moved back (a reset): start over
            done = (0, 0)
        if horizon <= done[0] and done[1] >= END_SEQ:
            return result
        keys = self.key_columns(conn, table)
        t = sql.Identifier(table)
        ids = {
            "table": t,
            "keys": sql.SQL(", ").join(sql.Identifier(k) for k in keys),
            "match": schema.keys_match(keys, "s", "r"),
        }
        lo = done
        while not self.stop.is_set():
            row = conn.execute(
                sqlfiles.query(QUERIES, "batch_end", table=t),
                {"lo_lsn": lo[0], "lo_seq": lo[1], "horizon": horizon, "rows": self.settings.compaction_batch_rows},
            ).fetchone()
            hi = (int(row[0]), int(row[1])) if row else (horizon, END_SEQ)
            params = {"lo_lsn": lo[0], "lo_seq": lo[1], "hi_lsn": hi[0], "hi_seq": hi[1], "horizon": horizon}
            try:
                n = 0
                for name in ("delete_superseded", "delete_superseded_before", "delete_lone_deletes"):
                    n += max(conn.execute(sqlfiles.query(QUERIES, name, **ids), params).rowcount, 0)
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            result.deleted += n
            result.batches += 1
            lo = hi
            self.done[capture] = lo
            if row is None:
                break
        return result

    def run_pass(self, on_compacted: list[Callable[[str, int], None]] | None = None) -> PassResult:
        """One pass over every capture of the source."""
        started = time.monotonic()
        _, serving_dsn = self.settings.require_dsns()
        out = PassResult()
        cycle = uuid.uuid4().hex[:8]
        with db.connect(serving_dsn, "serving") as conn:
            try:
                conn.execute("SET lock_timeout = '2s'")
                readers = self.readers(conn)
                wms = read_watermarks(conn, self.settings.source_name)
                conn.commit()
                for capture, wm in sorted(wms.items()):
                    if self.stop.is_set():
                        break
                    t0 = time.monotonic()
                    # A capture being backfilled keeps everything after its history: the
                    # backfill deletes what its snapshot has, and needs the rest as staged.
                    upto = (wm.backfill_from or 0) if wm.incomplete else wm.last_lsn
                    horizon = self.horizon(conn, capture, upto, wm.staging_table, readers.get(capture, []))
                    conn.commit()
                    if horizon <= 0:
                        continue
                    res = self.compact_capture(conn, capture, wm.staging_table, horizon)
                    out.captures.append(res)
                    for hook in on_compacted or []:
                        hook(capture, res.deleted)
                    if res.deleted:
                        log.info(
                            "compacted %s: %d rows removed at or below lsn %d in %d batches (%.0f ms)",
                            wm.staging_table,
                            res.deleted,
                            horizon,
                            res.batches,
                            (time.monotonic() - t0) * 1000,
                            extra={
                                "action": "compact",
                                "worker": f"compaction[{self.settings.source_name}]",
                                "capture": capture,
                                "cycle": cycle,
                                "lsn": horizon,
                                "rows": res.deleted,
                                "duration_ms": round((time.monotonic() - t0) * 1000),
                            },
                        )
            except psycopg.Error as exc:
                try:
                    conn.rollback()
                except psycopg.Error:
                    pass
                raise db.wrap_db_error("compacting staging", exc) from None
        out.seconds = time.monotonic() - started
        return out


class CompactionWorker(Worker):
    """Runs a compaction pass every ``COMPACTION_INTERVAL_SECONDS`` (the first one after one interval)."""

    def __init__(self, settings: Settings, stop: threading.Event) -> None:
        super().__init__(f"compaction[{settings.source_name}]", stop, backoff=db.Backoff(initial=1.0, maximum=60.0))
        self.settings = settings
        self.passes = 0
        self.compactor = Compactor(settings, stop)

    def initial_wait(self) -> float:
        return self.settings.compaction_interval_seconds

    def step(self, token: int | None) -> float:
        self.compactor.run_pass([self._compacted])
        self.passes += 1
        return self.settings.compaction_interval_seconds

    def _compacted(self, capture: str, rows: int) -> None:
        self.notify(lambda o: o.compacted(self, capture, rows))

    def failed(self, exc: Exception) -> float:
        if not isinstance(exc, CdcflowError):
            raise exc
        self.errored(exc)
        delay = min(self.settings.compaction_interval_seconds, self.backoff.next_delay())
        level = logging.WARNING if isinstance(exc, TransientError) else logging.ERROR
        log.log(
            level,
            "%s: %s (next pass in %.1fs)",
            self.name,
            exc,
            delay,
            extra={"action": "compact", "worker": self.name},
        )
        return delay

    def stopped_message(self) -> str:
        return f"{self.name} stopped after {self.passes} passes"


def build_workers(settings: Settings, stop: threading.Event) -> list[CompactionWorker]:
    """The compaction worker, unless COMPACTION_INTERVAL_SECONDS is 0."""
    return [CompactionWorker(settings, stop)] if settings.compaction_interval_seconds > 0 else []
