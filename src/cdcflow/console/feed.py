"""What the console's stream carries: the charts' history and the shared status feed."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import decimal
import json
import logging
import threading
import time
from typing import Any

import psycopg
from psycopg import sql

from cdcflow import db, sqlfiles, status
from cdcflow.config import Settings
from cdcflow.metrics import Sampler
from cdcflow.redact import REDACTOR

log = logging.getLogger(__name__)
QUERIES = "console.sql"
HISTORY_SECONDS = 900  # the charts' 15 minutes
ROWS_LIMIT = 10


def redact(value: Any) -> Any:
    """``value`` with every string in it passed through the redactor."""
    if isinstance(value, str):
        return REDACTOR(value)
    if isinstance(value, dict):
        return {REDACTOR(str(k)): redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def event(name: str, data: Any) -> str:
    """One server-sent event (JSON has no newline, so one data line)."""
    return f"event: {name}\ndata: {json.dumps(redact(data), default=str, separators=(',', ':'))}\n\n"


class History:
    """A point a second over the last 15 minutes, from the metrics sampler's memory.

    Each point: time, changes/s staged (all processes', from the watermarks' row counts),
    lag per capture and freshness per projection (the /metrics figures), and the names of
    the captures and projections that were not healthy then.
    """

    def __init__(self, sampler: Sampler, seconds: int = HISTORY_SECONDS, step: float = 1.0) -> None:
        self.sampler = sampler
        self.step = step
        self.points: collections.deque[dict[str, Any]] = collections.deque(maxlen=int(seconds / step))
        self._lock = threading.Lock()
        self._last: tuple[float, int] | None = None  # (serving read time, rows staged) of the last point

    def record(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if self.points and now - self.points[-1]["t"] < self.step * 0.95:
            return
        s = self.sampler
        rate = None
        read_at, total = s.serving_read_at, sum(s.rows_staged.values())
        if read_at is not None:
            if self._last is not None and read_at > self._last[0]:
                rate = max(0.0, (total - self._last[1]) / (read_at - self._last[0]))
            if self._last is None or read_at > self._last[0]:
                self._last = (read_at, total)
        point = {
            "t": round(now, 2),
            "rate": None if rate is None else round(rate, 1),
            "lag": {c: round(s.clock.staleness(lsn, now), 3) for c, lsn in s.watermarks.items()},
            "fresh": {p: round(s.freshness(p, now), 3) for p in s.projection_names},
            "bad": sorted(
                [c for c, st in s.capture_states.items() if st not in status.HEALTHY_CAPTURE]
                + [p for p, st in s.projection_states.items() if st not in status.HEALTHY_PROJECTION]
            ),
        }
        with self._lock:
            self.points.append(point)

    def newest(self) -> dict[str, Any]:
        with self._lock:
            return self.points[-1] if self.points else {"lag": {}, "fresh": {}}

    def since(self, t: float) -> list[dict[str, Any]]:
        with self._lock:
            return [p for p in self.points if p["t"] > t]


@dataclasses.dataclass
class Viewer:
    rows: str | None  # the projection whose newest rows it shows (None: the first one)


@dataclasses.dataclass
class Tick:
    seq: int
    status: str  # the 'tick' event, the same for every viewer
    rows: dict[str, str]  # projection -> its 'rows' event
    default_rows: str | None


class Feed:
    """One thread, running while anyone watches: status and rows about once a second."""

    def __init__(self, settings: Settings, history: History, stop: threading.Event, interval: float = 1.0) -> None:
        self.settings = settings
        self.history = history
        self.stop = stop
        self.interval = interval
        self.name = "console-feed"
        self._viewers: list[Viewer] = []
        self._cond = threading.Condition()
        self._tick: Tick | None = None
        self._sent_until = 0.0  # newest history point already in a tick
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._source: Any = None
        self._serving: psycopg.Connection | None = None
        self._shapes: dict[str, tuple[list[str], list[str]]] = {}
        self.ticks = 0
        self.cpu_seconds = 0.0  # this thread's, while sampling (benchmarks/console_cpu.py reports it)

    # -- viewers (called on the web server's event loop) ------------------------

    def subscribe(self, rows: str | None) -> Viewer:
        self._loop = asyncio.get_running_loop()
        if self._event is None:
            self._event = asyncio.Event()
        viewer = Viewer(rows or None)
        with self._cond:
            self._viewers.append(viewer)
            self._cond.notify_all()
        return viewer

    def unsubscribe(self, viewer: Viewer) -> None:
        with self._cond:
            self._viewers.remove(viewer)

    async def next_tick(self, after: int, timeout: float) -> Tick | None:
        """The newest tick if newer than ``after``, else the next one within ``timeout``."""
        tick = self._tick
        if tick is not None and tick.seq > after:
            return tick
        assert self._event is not None
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return None
        tick = self._tick
        return tick if tick is not None and tick.seq > after else None

    def _wake(self) -> None:
        assert self._event is not None
        ev, self._event = self._event, asyncio.Event()
        ev.set()

    # -- the sampling thread -----------------------------------------------------

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                with self._cond:
                    if not self._viewers:
                        self._cond.wait(1.0)
                        continue
                    wanted = {v.rows for v in self._viewers}
                started, cpu = time.monotonic(), time.thread_time()
                self._publish(self.sample(wanted))
                self.cpu_seconds += time.thread_time() - cpu
                self.stop.wait(max(0.05, self.interval - (time.monotonic() - started)))
        finally:
            self._close()
            log.info("%s stopped: %d ticks, %.2f s of CPU", self.name, self.ticks, self.cpu_seconds)

    def _publish(self, tick: Tick) -> None:
        self._tick = tick
        self.ticks += 1
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the server's loop has ended
                pass

    def sample(self, wanted: set[str | None]) -> Tick:
        st, error = self._collect()
        names = [p.projection for p in st.projections] if st else []
        default = names[0] if names else None
        # Points since the last tick; after an idle spell, the few a new viewer's history lacks.
        points = self.history.since(max(self._sent_until, time.time() - 5))
        if points:
            self._sent_until = points[-1]["t"]
        payload = {"at": time.time(), "error": error, "points": points, "status": self._status(st)}
        rows = {}
        for name in {default if w is None else w for w in wanted}:
            if name in names and self._serving is not None:
                rows[name] = event("rows", self._rows(name))
        seq = self._tick.seq + 1 if self._tick else 1
        return Tick(seq, event("tick", payload), rows, default)

    def _collect(self) -> tuple[status.Status | None, str | None]:
        from cdcflow.bootstrap import make_source

        _, serving_dsn = self.settings.require_dsns()
        try:
            if self._source is None:
                self._source = make_source(self.settings)
            if self._serving is None or self._serving.closed:
                self._serving = db.connect(serving_dsn, "serving", autocommit=True, timeout=3)
                self._serving.execute("SET statement_timeout = '2s'")
            return status.collect(self.settings, source=self._source, serving=self._serving), None
        except Exception as exc:  # shown on the page; the next tick tries again
            self._close()
            return None, f"cannot read the pipeline's status: {db.describe_error(exc)}"

    def _status(self, st: status.Status | None) -> dict[str, Any] | None:
        """The status as the page shows it. Lag and freshness are the /metrics figures of
        the charts' newest point, so the tables and the charts agree."""
        if st is None:
            return None
        newest = self.history.newest()
        for c in st.captures:
            if c.capture in newest["lag"]:
                c.lag_seconds = newest["lag"][c.capture]
        for p in st.projections:
            if p.projection in newest["fresh"]:
                p.freshness_seconds = newest["fresh"][p.projection]
        data = dataclasses.asdict(st)
        del data["current"], data["owners"]  # each row names its owner
        data["healthy"] = st.healthy
        return data

    # -- rows --------------------------------------------------------------------

    def _shape(self, name: str) -> tuple[list[str], list[str]]:
        """The projection table's shown columns (not its __ state) and its key."""
        assert self._serving is not None
        if name not in self._shapes:
            rows = self._serving.execute(sqlfiles.query(QUERIES, "table_columns"), {"table": name}).fetchall()
            columns = [r[0] for r in rows if not r[0].startswith("__")]
            key_row = self._serving.execute(sqlfiles.query(QUERIES, "table_key"), {"table": name}).fetchone()
            key = list(key_row[0]) if key_row else columns[:1]
            self._shapes[name] = (columns, key)
        return self._shapes[name]

    def _rows(self, name: str) -> dict[str, Any]:
        """The newest rows: the table's last by its key (an index read), as the demo shows them."""
        assert self._serving is not None
        try:
            columns, key = self._shape(name)
            q = sql.SQL("SELECT {} FROM {} ORDER BY {} LIMIT {}").format(
                sql.SQL(", ").join(map(sql.Identifier, columns)),
                sql.Identifier(name),
                sql.SQL(", ").join(sql.SQL("{} DESC").format(sql.Identifier(k)) for k in key),
                sql.Literal(ROWS_LIMIT),
            )
            found = self._serving.execute(q).fetchall()
        except psycopg.Error as exc:
            self._shapes.pop(name, None)
            return {"projection": name, "columns": [], "rows": [], "error": db.describe_error(exc)}
        ids = [c == "id" or c.endswith("_id") for c in columns]  # identifiers without thousands separators
        numeric = [
            all(isinstance(r[i], int | float | decimal.Decimal) for r in found if r[i] is not None)
            for i in range(len(columns))
        ]
        return {
            "projection": name,
            "columns": columns,
            "numeric": numeric,
            "rows": [[_cell(v, plain) for v, plain in zip(r, ids, strict=True)] for r in found],
            "order": ", ".join(f"{k} desc" for k in key),
            "error": None,
        }

    def _close(self) -> None:
        db.close_quietly(self._serving)
        self._serving = None
        if self._source is not None:
            self._source.close()
            self._source = None


def _cell(v: Any, plain: bool = False) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int | decimal.Decimal):
        return str(v) if plain else f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.6g}"
    if isinstance(v, dt.datetime):
        text = v.isoformat(sep=" ", timespec="seconds")
        return text.removesuffix("+00:00") + (" UTC" if text.endswith("+00:00") else "")
    return str(v)[:200]
