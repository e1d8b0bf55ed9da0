"""Prometheus metrics for one ``cdcflow run`` (served by :mod:`cdcflow.health`).

Three kinds of sources feed them:

- the workers' events, through a :class:`MetricsObserver` each worker is given
  (:class:`cdcflow.worker.Observer`): changes staged and batch durations, projection
  cycle durations, rows compacted, errors handled;
- a sampler thread that, about once a second, reads the source's WAL position and slot,
  and the serving database's watermarks and projection metadata, with short timeouts.
  Errors are logged once per outage, redacted;
- the position clock: each sample pairs a source position with the time it was read, so
  "lag" and "freshness" are *the age of the newest source state fully reflected*: a
  watermark (or a projection's ``as_of_lsn``) that covers the source position sampled at
  time ``t`` is ``now - t`` behind. That holds for an idle source (it stays near 0) and a
  stuck one (it grows), unlike ``now - last commit time``.

Each :class:`Telemetry` has its own registry, so tests can run several in one process.
Label values are capture, projection and worker names: never a DSN or a message.
"""

from __future__ import annotations

import bisect
import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from cdcflow import console, db, sqlfiles
from cdcflow.config import Settings
from cdcflow.worker import Observer, Worker

if TYPE_CHECKING:
    from cdcflow.projections.base import CycleResult
    from cdcflow.sources.base import BatchResult, Source

log = logging.getLogger(__name__)
QUERIES = "metrics.sql"
PROJECTION_STATES = ("INIT", "OK", "STALE", "ERROR")
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """The metric objects, in their own registry."""

    def __init__(self) -> None:
        disable_created_metrics()  # no *_created series: they double the page for nothing
        r = self.registry = CollectorRegistry()
        self.capture_lag_seconds = Gauge(
            "cdcflow_capture_lag_seconds",
            "Age of the newest source state the capture's watermark covers.",
            ["source", "capture"],
            registry=r,
        )
        self.capture_lag_bytes = Gauge(
            "cdcflow_capture_lag_bytes",
            "Source WAL position minus the capture's watermark.",
            ["source", "capture"],
            registry=r,
        )
        self.capture_state = Gauge(
            "cdcflow_capture_state",
            "1 for the capture's current state (INIT, OK, GAP, PAUSED, ERROR).",
            ["source", "capture", "state"],
            registry=r,
        )
        self.changes_staged = Counter(
            "cdcflow_changes_staged", "Changes staged by this process.", ["source", "capture"], registry=r
        )
        self.batch_duration = Histogram(
            "cdcflow_batch_duration_seconds",
            "Time to read and stage one ingestion batch.",
            ["source"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.projection_freshness = Gauge(
            "cdcflow_projection_freshness_seconds",
            "Age of the newest source state the projection reflects.",
            ["projection"],
            registry=r,
        )
        self.projection_cycle_duration = Histogram(
            "cdcflow_projection_cycle_duration_seconds",
            "Time of one projection cycle (commit included).",
            ["projection"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.projection_status = Gauge(
            "cdcflow_projection_status",
            "1 for the projection's current status (INIT, OK, STALE, ERROR).",
            ["projection", "status"],
            registry=r,
        )
        self.errors = Counter(
            "cdcflow_errors", "Errors handled by a worker (retried or recorded).", ["worker", "kind"], registry=r
        )
        self.slot_retained_wal = Gauge(
            "cdcflow_slot_retained_wal_bytes",
            "WAL the source keeps for the replication slot.",
            ["source", "slot"],
            registry=r,
        )
        self.database_up = Gauge(
            "cdcflow_database_up",
            "1 when the sampler's last query to the database succeeded.",
            ["database"],
            registry=r,
        )
        self.compacted_rows = Counter(
            "cdcflow_compaction_deleted_rows", "Staged rows removed by compaction.", ["capture"], registry=r
        )


class PositionClock:
    """Samples of (time, source position); how old the newest state a position covers is."""

    def __init__(self, maxlen: int = 20_000) -> None:
        self._samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self.started = time.time()

    def add(self, at: float, lsn: int) -> None:
        with self._lock:
            if self._samples and lsn < self._samples[-1][1]:
                lsn = self._samples[-1][1]  # positions never go back; a re-created server would
            self._samples.append((at, lsn))

    @property
    def latest(self) -> int | None:
        with self._lock:
            return self._samples[-1][1] if self._samples else None

    def staleness(self, position: int | None, now: float | None = None) -> float:
        """Seconds since the source was at ``position`` (+1 byte of tolerance: an idle
        watermark sits one byte short of the WAL insert position), interpolated between
        the two samples around it. Below every sample: since the oldest one (a lower
        bound); with no sample: since the clock started."""
        now = time.time() if now is None else now
        with self._lock:
            if not self._samples:
                return max(0.0, now - self.started)
            lsns = [s[1] for s in self._samples]
            pos = (position or 0) + 1
            i = bisect.bisect_right(lsns, pos)
            if not i:
                at = self._samples[0][0]
            elif i == len(lsns):
                at = self._samples[-1][0]
            else:  # between two samples: WAL grows about evenly within an interval
                (t0, l0), (t1, l1) = self._samples[i - 1], self._samples[i]
                at = t0 + (t1 - t0) * (pos - l0) / (l1 - l0)
        return max(0.0, now - at)

    def prune(self, keep_from: int) -> None:
        """Drop samples older than the newest one ``keep_from`` covers (nothing asks about them)."""
        with self._lock:
            while len(self._samples) > 1 and self._samples[1][1] <= keep_from + 1:
                self._samples.popleft()


class Sampler:
    """Reads positions and states about once a second; keeps what health needs."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        stop: threading.Event,
        projection_names: Sequence[str],
        interval: float | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.stop = stop
        self.projection_names = list(projection_names)
        self.interval = interval if interval is not None else min(0.5, settings.poll_interval_seconds)
        self.clock = PositionClock()
        self.watermarks: dict[str, int] = {}
        self.as_of: dict[str, int | None] = {}
        self.projection_states: dict[str, str] = {}
        self.capture_states: dict[str, str] = {}
        self.rows_staged: dict[str, int] = {}  # per capture, from the watermarks (every process's)
        self.serving_read_at: float | None = None  # time of the last successful serving sample
        self.on_sample: list[Callable[[], None]] = []  # called after each sample (the console's history)
        self._source: Source | None = None  # kept open between samples
        self._serving: psycopg.Connection | None = None
        self._down: set[str] = set()
        self.samples = 0
        self.name = "metrics-sampler"

    # -- connections ---------------------------------------------------------

    def _connect(self, dsn: str, what: str) -> psycopg.Connection:
        conn = db.connect(dsn, what, autocommit=True, timeout=3)
        conn.execute("SET statement_timeout = '2s'")
        return conn

    def _close(self, which: str) -> None:
        conn: Source | psycopg.Connection | None = self._source if which == "source" else self._serving
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already broken
                pass
        if which == "source":
            self._source = None
        else:
            self._serving = None

    def _failed(self, what: str, exc: BaseException) -> None:
        self.metrics.database_up.labels(what).set(0)
        self.metrics.errors.labels(self.name, type(exc).__name__).inc()
        if what not in self._down:
            self._down.add(what)
            log.warning(
                "metrics: cannot read the %s database: %s",
                what,
                db.describe_error(exc),
                extra={"action": "metrics_sample", "worker": self.name},
            )
        self._close(what)

    def _ok(self, what: str) -> None:
        self.metrics.database_up.labels(what).set(1)
        if what in self._down:
            self._down.discard(what)
            log.info(
                "metrics: the %s database answers again", what, extra={"action": "metrics_sample", "worker": self.name}
            )

    # -- sampling ------------------------------------------------------------

    def sample_source(self) -> None:
        from cdcflow.sources.engines import open_source

        try:
            if self._source is None:
                self._source = open_source(self.settings)
            at = time.time()
            position, retained = self._source.sample_position()
            self.clock.add(at, position)
            if retained is not None:
                self.metrics.slot_retained_wal.labels(self.settings.source_name, self.settings.slot).set(retained)
            self._ok("source")
        except Exception as exc:  # any failure: the metric says down, the loop goes on
            self._failed("source", exc)

    def sample_serving(self) -> None:
        from cdcflow.serving.control import read_watermarks

        _, serving_dsn = self.settings.require_dsns()
        try:
            if self._serving is None or self._serving.closed:
                self._serving = self._connect(serving_dsn, "serving")
            wms = read_watermarks(self._serving, self.settings.source_name)
            meta = self._serving.execute(sqlfiles.query(QUERIES, "projection_positions")).fetchall()
            self._ok("serving")
        except Exception as exc:  # any failure: the metric says down, the loop goes on
            self._failed("serving", exc)
            return
        m, src = self.metrics, self.settings.source_name
        self.serving_read_at = time.time()
        for wm in wms.values():
            self.watermarks[wm.capture] = wm.last_lsn
            self.capture_states[wm.capture] = wm.state
            self.rows_staged[wm.capture] = wm.rows_staged
            for state in ("INIT", "OK", "GAP", "PAUSED", "ERROR"):
                m.capture_state.labels(src, wm.capture, state).set(1 if wm.state == state else 0)
        for name, status, as_of in meta:
            if name in self.projection_names:
                self.as_of[name] = int(as_of) if as_of is not None else None
                self.projection_states[name] = status

    def publish(self, now: float | None = None) -> None:
        """Set the position-derived gauges from the last samples."""
        now = time.time() if now is None else now
        m, src = self.metrics, self.settings.source_name
        current = self.clock.latest
        for capture, lsn in self.watermarks.items():
            m.capture_lag_seconds.labels(src, capture).set(self.clock.staleness(lsn, now))
            if current is not None:
                m.capture_lag_bytes.labels(src, capture).set(max(0, current - lsn))
        for name in self.projection_names:
            m.projection_freshness.labels(name).set(self.freshness(name, now))
            status = self.projection_states.get(name)
            for state in PROJECTION_STATES:
                m.projection_status.labels(name, state).set(1 if status == state else 0)
        positions = [p for p in (*self.watermarks.values(), *self.as_of.values()) if p is not None]
        if positions and len(positions) == len(self.watermarks) + len(self.projection_names):
            self.clock.prune(min(positions))

    def freshness(self, projection: str, now: float | None = None) -> float:
        return self.clock.staleness(self.as_of.get(projection), now)

    def sample(self) -> None:
        self.sample_source()
        self.sample_serving()
        self.publish()
        self.samples += 1
        for hook in self.on_sample:
            hook()

    def run(self) -> None:
        try:
            while True:
                self.sample()
                if self.stop.wait(self.interval):
                    break
        finally:
            self._close("source")
            self._close("serving")


class Telemetry:
    """Metrics, sampler, console and HTTP endpoint of one runtime."""

    def __init__(
        self,
        settings: Settings,
        workers: Sequence[Worker],
        stop: threading.Event,
        *,
        sample_interval: float | None = None,
    ) -> None:
        self.settings = settings
        self.workers = list(workers)
        self.stop = stop
        self.metrics = Metrics()
        from cdcflow.projections.worker import ProjectionWorker

        names = [w.projection_name for w in self.workers if isinstance(w, ProjectionWorker)]
        self.sampler = Sampler(settings, self.metrics, stop, names, sample_interval)
        self.server: Any = None
        self.console: Any = None  # the web console, served with /metrics unless turned off
        if console.served(settings):
            console.require_token_if_exposed(settings)
            self.console = console.Console(settings, self.sampler, stop)
            self.sampler.on_sample.append(_safe(self.console.history.record))
        for w in self.workers:
            attach(w, self.metrics, settings.source_name)
        self.metrics.registry.register(_WorkerCollector(self.workers))  # type: ignore[arg-type]

    def start(self) -> list[threading.Thread]:
        """Start the sampler and (unless METRICS_PORT=0) the HTTP endpoint and console; their threads."""
        from cdcflow import health

        threads = [threading.Thread(target=self.sampler.run, name=self.sampler.name, daemon=True)]
        if self.settings.metrics_port:
            self.server = health.serve(self, self.settings.metrics_address, self.settings.metrics_port, self.stop)
            if self.server is not None:
                threads.append(self.server.thread)
                if self.console is not None:
                    threads.append(self.console.thread())
        for t in threads:
            t.start()
        return threads

    def console_line(self) -> str:
        """Where the console is, for the demo's screen."""
        if self.console is None:
            return "console: off (METRICS_PORT=0 or CONSOLE_ENABLED=false)"
        if self.server is None:
            return "console: not served (METRICS_PORT is in use: see the log)"
        token = "?token=<CONSOLE_TOKEN>" if self.settings.console_token else ""
        return f"console: {self.server.url}{token}  (open it in a browser: live charts and tables)"

    def health(self) -> tuple[bool, str]:
        from cdcflow import health

        return health.check(self)


class _WorkerCollector:
    """cdcflow_worker_up, read at scrape time from the workers' ``alive`` flags."""

    def __init__(self, workers: Sequence[Worker]) -> None:
        self.workers = workers

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        g = GaugeMetricFamily("cdcflow_worker_alive", "1 while the worker's loop runs.", labels=["worker"])
        for w in self.workers:
            g.add_metric([w.name], 1.0 if w.alive else 0.0)
        yield g


class MetricsObserver(Observer):
    """A worker's events as metrics: batches staged, projection cycles, compaction, errors."""

    def __init__(self, metrics: Metrics, source_name: str) -> None:
        self.metrics = metrics
        self.source_name = source_name

    def errored(self, worker: Worker, exc: Exception) -> None:
        self.metrics.errors.labels(worker.name, type(exc).__name__).inc()

    def batch_staged(self, worker: Worker, result: BatchResult, seconds: float) -> None:
        self.metrics.batch_duration.labels(self.source_name).observe(seconds)
        for capture, rows in (result.rows_by_capture or {}).items():
            if rows:
                self.metrics.changes_staged.labels(self.source_name, capture).inc(rows)

    def cycle_done(self, worker: Worker, projection: str, result: CycleResult, seconds: float) -> None:
        self.metrics.projection_cycle_duration.labels(projection).observe(seconds)

    def compacted(self, worker: Worker, capture: str, rows: int) -> None:
        self.metrics.compacted_rows.labels(capture).inc(rows)


def attach(worker: Worker, metrics: Metrics, source_name: str) -> None:
    """Count a worker's events in the metrics."""
    worker.observe(MetricsObserver(metrics, source_name))


def _safe(fn: Callable[..., None]) -> Callable[..., None]:
    """Hooks must not raise into the worker."""

    def call(*args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # a metrics bug must not stop ingestion
            log.debug("metrics hook failed", exc_info=True)

    return call
