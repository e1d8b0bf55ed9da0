"""The projection worker loop: wait for new data (or the interval), run a cycle, repeat.

A cycle starts as soon as one of these happens (procrastinate's "new work, timeout, or
stop"): the in-process ``wake`` event (set by the ingest worker after a commit that
staged rows), a ``NOTIFY cdcflow_staged`` from an ingest worker in another process
(this worker LISTENs on its own autocommit connection), or ``PROJECTION_INTERVAL_SECONDS``
passing. ``stop`` ends the loop after the current cycle.

Errors: a transient one (the serving database went away) is retried with backoff; any
other failure of a cycle is recorded as ERROR with its message in the metadata and
retried at the next signal or interval. Each projection has its own worker, so one
failing projection does not hold up the others.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable

import psycopg
from psycopg import sql

from cdcflow import db, leases
from cdcflow.config import Settings
from cdcflow.errors import CdcflowError, TransientError
from cdcflow.projections import base
from cdcflow.projections.definition import Definition
from cdcflow.sources.engines import position_format
from cdcflow.worker import Worker

log = logging.getLogger(__name__)
CHANNEL = "cdcflow_staged"
#: The self-check waits at least this many times its own duration before the next one: it
#: takes at most a tenth of one core, however many rows the window holds.
CHECK_PACE = 9


class ProjectionWorker(Worker):
    """Keeps one projection up to date. Run :meth:`run` in a thread."""

    lease: leases.Lease
    wake: threading.Event

    def __init__(
        self,
        projection: base.Projection | Definition,
        settings: Settings,
        serving_dsn: str,
        stop: threading.Event,
        wake: threading.Event | None = None,
        *,
        listen: bool = True,
        owner: str | None = None,
        builder: Callable[[Definition, psycopg.Connection], base.Projection] | None = None,
    ) -> None:
        super().__init__(
            f"projection[{projection.name}]",
            stop,
            wake=wake or threading.Event(),
            # One owner across 'cdcflow run' processes; every commit is fenced by it.
            lease=leases.Lease(f"projection:{projection.name}", owner or leases.instance_id(), settings.lease_seconds),
            serving_dsn=serving_dsn,
        )
        #: A definition is planned into its projection at the first cycle (and again after a
        #: failure to do so): a definition that cannot be used yet stops only this worker.
        self.definition = projection if isinstance(projection, Definition) else None
        self._projection = None if isinstance(projection, Definition) else projection
        self._builder = builder
        self.projection_name = projection.name
        self.settings = settings
        self._format_position = position_format(settings)  # how the source's positions print
        self.serving_dsn = serving_dsn
        self.listen = listen
        self.cycles = 0
        self.checks = 0  # self-checks completed (outside the cycles)
        self._conn: psycopg.Connection | None = None
        #: Reads the stored state during a cycle while ``_conn`` writes (base.Context.reader).
        self._reader: psycopg.Connection | None = None
        self._listener: psycopg.Connection | None = None
        self._duck = base.open_duckdb()
        self._next_check = time.monotonic() + settings.projection_self_check_seconds
        #: The self-check's snapshot check runs in a thread of its own (find_suspects);
        #: the keys it found different wait here for the next cycle to check and restate.
        self._checker: threading.Thread | None = None
        self._suspects: list | None = None
        self._suspects_lock = threading.Lock()
        self._check_conn: psycopg.Connection | None = None

    @property
    def projection(self) -> base.Projection:
        """The projection this worker keeps (planned from its definition when first needed)."""
        if self._projection is None:
            assert self.definition is not None and self._builder is not None
            self._projection = self._builder(self.definition, self.conn())
        return self._projection

    # -- connections ------------------------------------------------------------

    def conn(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = base.open_connection(self.serving_dsn)
        return self._conn

    def reader(self) -> psycopg.Connection:
        if self._reader is None or self._reader.closed:
            self._reader = base.snapshot_connection(self.serving_dsn)
        return self._reader

    def _close(self) -> None:
        for c in (self._conn, self._reader, self._listener):
            db.close_quietly(c)
        self._conn = self._reader = self._listener = None

    def close(self) -> None:
        """Release connections and the DuckDB instance (``run`` does this when it ends)."""
        self._close()
        self._duck.close()

    def _listen_conn(self) -> psycopg.Connection | None:
        if not self.listen:
            return None
        if self._listener is None or self._listener.closed:
            try:
                self._listener = db.connect(self.serving_dsn, "serving", autocommit=True)
                self._listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
            except (psycopg.Error, CdcflowError) as exc:
                # Any failure, a rejected login too (a password being rotated): the listener
                # only shortens waits, and the cycle's own connection reports what is wrong.
                log.warning("%s: cannot LISTEN (%s); relying on the interval", self.name, db.describe_error(exc))
                self._listener = None
        return self._listener

    # -- waiting ----------------------------------------------------------------

    def _drain(self) -> None:
        """Forget queued notifications: the cycle about to start covers them."""
        if self._listener is not None and not self._listener.closed:
            try:
                for _ in self._listener.notifies(timeout=0):
                    pass
            except psycopg.Error:
                self._listener = None

    def signalled(self, seconds: float) -> str | None:
        """A wake, or a NOTIFY on the listener (the wake alone without one)."""
        listener = self._listen_conn()
        if listener is None:
            return super().signalled(seconds)
        try:
            for _ in listener.notifies(timeout=seconds, stop_after=1):
                return "notify"
        except psycopg.Error:
            self._listener = None
        return None

    # -- one cycle --------------------------------------------------------------

    def _self_check_due(self) -> bool:
        every = self.settings.projection_self_check_seconds
        if (
            every <= 0
            or self.settings.projection_recompute_window_minutes <= 0
            or self._projection is None
            or not self._projection.has_self_check
        ):
            return False
        return time.monotonic() >= self._next_check

    def _run_check(self) -> None:
        started = time.monotonic()
        try:
            suspects = self._find_suspects()
        finally:
            # Paced: after a check of t seconds the next starts no sooner than
            # CHECK_PACE * t after it ended, so however busy the window, the check takes at
            # most 1 / (1 + CHECK_PACE) of one core (a tenth) away from ingestion and cycles.
            ended = time.monotonic()
            self._next_check = max(
                started + self.settings.projection_self_check_seconds, ended + CHECK_PACE * (ended - started)
            )
        if suspects is None:
            return
        self.checks += 1
        log.info(
            "%s: self-check on a snapshot: %s (%.1fs; next in %.0fs at the earliest)",
            self.name,
            f"{len(suspects)} rows differ" if suspects else "no difference",
            ended - started,
            self._next_check - ended,
        )
        if suspects:
            log.warning(
                "%s: self-check: %d rows differ from the state; the next cycle checks them again and "
                "restates what is still wrong",
                self.name,
                len(suspects),
            )
            self._add_suspects(suspects)
            self.wake.set()

    def _find_suspects(self) -> list | None:
        """The snapshot check's different keys; None when it could not run (logged; the
        next check tries again, cycles go on meanwhile)."""
        try:
            conn = self._check_conn = base.snapshot_connection(self.serving_dsn)
            try:
                # Between slices of the window the check rests as long as the slice took
                # (half the machine at most while it runs) and gives way to a stop.
                return self.projection.find_suspects(conn, self.settings, pause=lambda s: not self.stop.wait(s))
            finally:
                self._check_conn = None
                conn.close()
        except Exception as exc:
            if not self.stop.is_set():
                log.warning("%s: self-check could not run: %s", self.name, db.describe_error(exc))
            return None

    def _start_check(self) -> None:
        """At the self-check's cadence, check the window on a snapshot, in a thread: a busy
        window (tens of thousands of rows a minute) takes seconds to recompute, and cycles
        must not wait for it."""
        if self._checker is not None and self._checker.is_alive():
            return
        if not self._self_check_due():
            return
        self._checker = threading.Thread(target=self._run_check, name=f"{self.name}:check", daemon=True)
        self._checker.start()

    def _stop_check(self) -> None:
        """On stop: cancel a self-check that is still reading, and let its thread end."""
        conn = self._check_conn
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.cancel()
        if self._checker is not None:
            self._checker.join(5)

    def _add_suspects(self, keys: list | None) -> None:
        """Minutes for the next cycle to check (found by the snapshot check, or left by a
        cycle that failed)."""
        if keys:
            with self._suspects_lock:
                self._suspects = list(dict.fromkeys([*(self._suspects or []), *keys]))

    def cycle(self, token: int | None = None) -> base.CycleResult:
        """One cycle, committed. With a lease ``token``, the commit is fenced by it."""
        conn = self.conn()
        self._start_check()
        with self._suspects_lock:
            keys, self._suspects = self._suspects, None
        started = time.monotonic()
        try:
            result = base.run_cycle(
                conn,
                self._duck,
                self.projection,
                self.settings,
                self_check=bool(keys),
                check_keys=keys,
                reader=self.reader()
                if self.projection.uses_reader and self.settings.projection_parallel_reads
                else None,
            )
            if token is not None:
                self.lease.fence(conn, token)
            conn.commit()
        except psycopg.Error as exc:
            self._add_suspects(keys)
            try:
                conn.rollback()
            except psycopg.Error:
                pass
            raise db.wrap_db_error(f"projection {self.projection.name}", exc) from None
        except BaseException:
            self._add_suspects(keys)
            db.safe_rollback(conn)
            raise
        self.cycles += 1
        elapsed = time.monotonic() - started
        self.notify(lambda o: o.cycle_done(self, self.projection_name, result, elapsed))
        if result.applied or result.restated:
            log.info(
                "%s: applied changes up to %s: %d rows changed, %d restated (%.0f ms)",
                self.projection.name,
                self._format_position(result.cutoff),
                result.rows_changed,
                result.restated,
                result.seconds * 1000,
                extra={
                    "worker": self.name,
                    "duration_ms": round(result.seconds * 1000, 1),
                    "action": "projection_cycle",
                    "projection": self.projection.name,
                    "cycle": uuid.uuid4().hex[:8],
                    "lsn": result.cutoff,
                    "rows": result.rows_changed,
                },
            )
        return result

    # -- loop -------------------------------------------------------------------

    def step(self, token: int | None) -> float:
        self.wake.clear()
        self._drain()
        self.cycle(token)
        return self.settings.projection_interval_seconds

    def failed(self, exc: Exception) -> float:
        if isinstance(exc, TransientError):
            self.errored(exc)
            delay = self.backoff.next_delay()
            log.warning("%s: %s (retrying in %.1fs)", self.name, exc, delay)
            self._close()
            return delay
        # Any other failure of this projection: ERROR, retried later.
        self.errored(exc, db.describe_error(exc))
        log.error("%s: cycle failed: %s", self.name, self.last_error)
        try:
            base.record_error(self.conn(), self.projection_name, self.last_error or "")
        except CdcflowError:  # the serving database is what failed; the log line is the record
            self._close()
        return min(self.settings.projection_interval_seconds, self.backoff.next_delay())

    def finish(self) -> None:
        self._stop_check()
        self.close()

    def stopped_message(self) -> str:
        return f"{self.name} stopped after {self.cycles} cycles"
