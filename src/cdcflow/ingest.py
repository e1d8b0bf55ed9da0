"""The ingestion worker: source changes -> staging, exactly once.

Per cycle: read the watermarks; read whole transactions after the lowest active one
(up to ``CDC_BATCH_MAX_ROWS``, ending at a commit); in one serving transaction stage the
rows and advance the watermarks; then, and only then, confirm the position to the
source. More pending: go again at once. Idle: the source waits at most
``POLL_INTERVAL_SECONDS`` and still advances the watermark to its own position.
Transient errors (a database going away) are logged and retried with backoff; a gap
or a schema change stops the affected captures, visibly, without skipping anything.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import sql

from cdcflow import db, leases
from cdcflow.config import Settings
from cdcflow.errors import GapError, SchemaDriftError, TerminalError, TransientError
from cdcflow.serving import control, schema
from cdcflow.serving.staging import CopyLane, StagingWriter, WatermarkMoved
from cdcflow.sources.base import BatchResult, TableSpec
from cdcflow.worker import Worker

log = logging.getLogger(__name__)
#: A backlog's batches follow one another without reading the watermarks again for at
#: most this long: a resync or backfill that moved one is seen within it.
REREAD_SECONDS = 1.0


@dataclass(frozen=True)
class _Start:
    """Where a batch is read from: under which lease token, after which position (the
    stream's start), and each active capture's watermark."""

    token: int
    after: int
    positions: dict[str, int]


class IngestWorker(Worker):
    """Moves one source's changes into staging. Run :meth:`run` in a thread.

    ``queue_commits``: a backlog batch's commit is queued and the next batch read at once
    (False: each batch commits before the next is read; the catch-up benchmark compares
    the two). ``before_confirm``: called with a committed position right before it is
    confirmed to the source (a crash test ends the process there)."""

    lease: leases.Lease

    def __init__(
        self,
        settings: Settings,
        source,  # a cdcflow.sources.base.Source
        serving_dsn: str,
        stop: threading.Event,
        staged: threading.Event | None = None,
        *,
        owner: str | None = None,
        resource: str | None = None,
        queue_commits: bool = True,
        before_confirm: Callable[[int], None] | None = None,
    ) -> None:
        resource = resource or f"ingest:{settings.source_name}"
        super().__init__(
            "ingest[" + resource.split(":", 1)[1] + "]",
            stop,
            lease=leases.Lease(resource, owner or leases.instance_id(), settings.lease_seconds),
            serving_dsn=serving_dsn,
        )
        self.settings = settings
        self.source = source
        self.serving_dsn = serving_dsn
        self.staged = staged or threading.Event()
        self.queue_commits = queue_commits
        self.before_confirm = before_confirm
        self._serving: psycopg.Connection | None = None
        self._specs: dict[str, TableSpec] | None = None
        self._dedupe = False
        #: The serving connection's staging work, in order (COPY chunks, queued commits).
        self._lane = CopyLane(name=self.name + ":copy")
        #: Where the next batch starts, after a batch whose commit is queued.
        self._follow: _Start | None = None
        self._read_at = 0.0  # when the watermarks were last read
        self._copying: frozenset[str] = frozenset()  # captures whose table is being copied, as read then
        self._committed_lsn = 0  # highest watermark committed by this process
        self._confirmed = 0  # highest position confirmed to the source
        self.batches = 0
        self.rows = 0

    # -- connections ------------------------------------------------------------

    def serving(self) -> psycopg.Connection:
        if self._serving is None or self._serving.closed:
            conn = db.connect(self.serving_dsn, "serving")
            try:
                # A batch's transaction holds the lease fence's row lock from the fence to its
                # commit. If this process freezes in between (SIGSTOP, a paused VM), the server
                # ends the session after this long, so another instance can take over.
                conn.execute(
                    sql.SQL("SET idle_in_transaction_session_timeout = {}").format(
                        sql.Literal(f"{self.idle_in_transaction_ms()}ms")
                    )
                )
                conn.commit()
            except psycopg.Error as exc:
                db.close_quietly(conn)
                raise db.wrap_db_error("configuring the serving connection", exc) from None
            self._serving = conn
        return self._serving

    def idle_in_transaction_ms(self) -> int:
        """How long the serving side lets a batch's transaction sit idle: 3 leases, at least 10 s."""
        return int(max(10.0, 3 * self.settings.lease_seconds) * 1000)

    def _drop_connections(self) -> None:
        self._follow = None
        self._lane.reset()  # nothing may still be running on the connection we close
        db.close_quietly(self._serving)
        self._serving = None
        self.source.close()

    def specs(self) -> dict[str, TableSpec]:
        """The captured tables as staging holds them (reconciled with the source once per start)."""
        if self._specs is None:
            conn = self.serving()
            self.source.use_serving_version(conn.info.server_version)  # the stream's format may depend on it
            effective = []
            try:
                for spec in self.source.describe_tables():
                    eff, problem = schema.reconcile(conn, spec)
                    if problem is not None:
                        log.error("%s", problem)
                        control.set_capture_state(conn, self.settings.source_name, spec.capture, "PAUSED", problem)
                    effective.append(eff)
                conn.commit()
            except psycopg.Error as exc:
                db.safe_rollback(conn)
                raise db.wrap_db_error("reading staging tables", exc) from None
            self.source.use_specs(effective)
            self._specs = {s.capture: s for s in effective}
        return self._specs

    # -- one cycle --------------------------------------------------------------

    def cycle(self) -> bool:
        """Stage one batch. Returns True when the source has more right now.

        A batch with rows has its commit queued on the serving lane, and the next batch is
        read at once, from where this one ended; the slot is confirmed as the lane reports
        each commit (at the latest after the next read, which waits at most the poll
        interval). A batch that also records a state (TRUNCATE, schema drift), an idle
        advance, or one retried with duplicate filtering is committed here and now, after
        every queued one (see :meth:`_settle`)."""
        token = self.lease.token if self.lease.held else None
        if token is None:
            self.stand_by()
            return False
        conn = self.serving()
        specs = self.specs()
        start = self._backlog_start(token) or self._read_start(conn, specs, token)
        if start is None:  # no active capture
            self.stop.wait(self.settings.poll_interval_seconds)
            return False
        writer = StagingWriter(
            conn, specs, self.settings.source_name, dedupe=self._dedupe, lane=self._lane, copying=self._copying
        )
        started, cycle_id = time.monotonic(), uuid.uuid4().hex[:8]
        try:
            result = self._read(start, writer)
            if result.end_lsn <= start.after and not (result.rows or result.truncated or result.paused):
                writer.flush()  # a queued commit that failed says so here, not never
                writer.rollback()
                return False
            if self._commit(conn, specs, start, result, writer, lambda: self._committed(result, started, cycle_id)):
                return True
        except psycopg.Error as exc:
            self._abandon(writer)
            raise self._staging_error(exc) from None
        except BaseException:
            self._abandon(writer)
            raise
        self._committed(result, started, cycle_id)
        self._confirm_committed()
        self._dedupe = False
        return result.more_pending

    def _backlog_start(self, token: int) -> _Start | None:
        """Where the next batch of a backlog starts, while the previous batch's commit is
        still queued (None: read the watermarks again)."""
        follow, self._follow = self._follow, None
        if follow is not None and follow.token == token and time.monotonic() - self._read_at < REREAD_SECONDS:
            return follow
        return None

    def _read_start(self, conn: psycopg.Connection, specs: dict[str, TableSpec], token: int) -> _Start | None:
        """Where the next batch starts, from the watermarks (after every queued commit is
        done); None when no capture is active."""
        self._settle_mapped()
        try:
            wms = control.read_watermarks(conn, self.settings.source_name)
        except psycopg.Error as exc:
            db.safe_rollback(conn)
            raise db.wrap_db_error("reading watermarks", exc) from None
        self._read_at = time.monotonic()
        positions = {c: wms[c].last_lsn for c in specs if c in wms and wms[c].active}
        self.source.skip_captures.clear()
        self.source.skip_captures.update(c for c in specs if c not in positions)
        if not positions:
            db.safe_rollback(conn)
            return None
        # The stream starts after the lowest complete capture: one whose table is still
        # being copied (INIT, BACKFILL) streams along from there on, its earlier changes
        # being in the copy.
        complete = [c for c in positions if not wms[c].incomplete] or list(positions)
        self._copying = frozenset(c for c in positions if wms[c].incomplete)
        return _Start(token, min(positions[c] for c in complete), positions)

    def _read(self, start: _Start, writer: StagingWriter) -> BatchResult:
        """Read a batch into ``writer``; then confirm what queued commits have committed meanwhile."""
        # A capture staged past the stream's start (a backfill's snapshot) drops what it has.
        self.source.floors.clear()
        self.source.floors.update({c: p for c, p in start.positions.items() if p > start.after})
        result = self.source.read_batch(
            start.after,
            self.settings.cdc_batch_max_rows,
            writer,
            min(self.settings.poll_interval_seconds, self.settings.lease_seconds / 3),
        )
        self._confirm_committed()
        return result

    def _commit(
        self,
        conn: psycopg.Connection,
        specs: dict[str, TableSpec],
        start: _Start,
        result: BatchResult,
        writer: StagingWriter,
        committed: Callable[[], None],
    ) -> bool:
        """Commit the batch's transaction, fenced by the lease; returns whether the commit
        was queued (then ``committed`` is called on the lane when it is done, and the next
        batch starts where this one ended)."""
        positions = start.positions
        # A capture at or past the batch's end has nothing in it and stays where it is.
        advancing = [
            c
            for c in positions
            if c not in result.truncated and c not in result.paused and positions[c] < result.end_lsn
        ]
        queue = self._may_queue(result)
        if not queue:
            writer.flush()  # every queued commit is done: this thread may use the connection
            self._record_states(conn, specs, start, result)
        writer.commit(
            result.end_lsn,
            advancing,
            result.last_commit_time,
            before_commit=lambda c: self.lease.fence(c, start.token),
            expected=[positions[c] for c in advancing],
            wait=not queue,
            then=committed if queue else None,
        )
        if queue:
            ends = {c: result.end_lsn if c in advancing else p for c, p in positions.items()}
            self._follow = _Start(start.token, result.end_lsn, ends)
        return queue

    def _may_queue(self, result: BatchResult) -> bool:
        """Whether the batch's commit may be queued: rows only, no state to record, no
        duplicate filtering, not stopping."""
        return (
            self.queue_commits
            and result.rows > 0
            and not result.truncated
            and not result.paused
            and not self._dedupe
            and not self.stop.is_set()
        )

    def _record_states(
        self, conn: psycopg.Connection, specs: dict[str, TableSpec], start: _Start, result: BatchResult
    ) -> None:
        """In the batch's transaction: a TRUNCATE stops its capture with GAP, a schema
        change with PAUSED."""
        for capture, lsn in result.truncated.items():
            msg = (
                f"TRUNCATE of {specs[capture].qualified} at {self.source.format_position(lsn)}: "
                f"row-level staging cannot express it; run 'cdcflow resync'"
            )
            log.error(msg)
            control.set_capture_state(
                conn, self.settings.source_name, capture, "GAP", msg, start.positions[capture], lsn
            )
        for capture, reason in result.paused.items():
            control.set_capture_state(conn, self.settings.source_name, capture, "PAUSED", reason)

    def _abandon(self, writer: StagingWriter) -> None:
        """A batch failed: roll it back and close the stream (the next reads from the watermarks)."""
        writer.rollback()
        self.source.close_stream()

    def _staging_error(self, exc: psycopg.Error) -> Exception:
        """A failed batch as the worker reports it; rows already staged mean a retry that
        filters duplicates."""
        if isinstance(exc, psycopg.errors.UniqueViolation):
            self._dedupe = True
            return TransientError(
                f"staging already held rows of this batch ({db.describe_error(exc)}); retrying with duplicate filtering"
            )
        return db.wrap_db_error("staging a batch", exc)

    def _committed(self, result: BatchResult, started: float, cycle_id: str) -> None:
        """A batch's serving transaction committed (on the lane's thread when it was queued)."""
        self._committed_lsn = max(self._committed_lsn, result.end_lsn)
        self.batches += 1
        self.rows += result.rows
        elapsed = time.monotonic() - started
        self.notify(lambda o: o.batch_staged(self, result, elapsed))
        if result.rows:
            self.staged.set()
            log.info(
                "staged %d rows in %d transactions up to %s (%.0f ms)",
                result.rows,
                result.transactions,
                self.source.format_position(result.end_lsn),
                elapsed * 1000,
                extra={
                    "action": "stage_batch",
                    "worker": self.name,
                    "cycle": cycle_id,
                    "rows": result.rows,
                    "lsn": result.end_lsn,
                    "duration_ms": round(elapsed * 1000, 1),
                },
            )
        else:
            log.debug("idle: watermark advanced to %s", self.source.format_position(result.end_lsn))

    def _confirm_committed(self) -> None:
        """Confirm to the slot what the lane has committed since the last confirmation."""
        lsn = self._committed_lsn
        if lsn > self._confirmed:
            if self.before_confirm is not None:
                self.before_confirm(lsn)
            self.source.confirm(lsn)
            self._confirmed = lsn

    def _settle_mapped(self) -> None:
        """:meth:`_settle`, with a failed queued commit reported as :meth:`cycle` reports errors."""
        try:
            self._settle()
        except psycopg.Error as exc:
            raise self._staging_error(exc) from None

    def _settle(self) -> None:
        """Wait until every queued batch committed (raising a failure) and confirm it."""
        self._follow = None
        if self._lane.busy or self._committed_lsn > self._confirmed:
            try:
                self._lane.wait()
            except BaseException:
                self._lane.reset()
                if self._serving is not None:
                    db.safe_rollback(self._serving)
                self.source.close_stream()
                raise
            self._confirm_committed()
        self._committed_lsn = self._confirmed = 0  # the next run of queued commits counts afresh

    # -- loop -------------------------------------------------------------------

    def _mark(self, state: str, exc: TerminalError, gap_from: int | None = None, gap_to: int | None = None) -> None:
        """Stop the active captures with ``state``. A capture whose watermark moved since the
        error was seen (a resync just repaired it) is left alone."""
        try:
            conn = self.serving()
            db.safe_rollback(conn)
            wms = control.read_watermarks(conn, self.settings.source_name)
            for capture in self.specs():
                wm = wms.get(capture)
                if wm is None or not wm.active or (gap_from is not None and wm.last_lsn != gap_from):
                    continue
                control.set_capture_state(
                    conn, self.settings.source_name, capture, state, str(exc), wm.last_lsn, gap_to
                )
            conn.commit()
        except (psycopg.Error, TransientError, TerminalError) as inner:
            log.warning("could not record %s state: %s", state, db.describe_error(inner))

    def _record_error(self, exc: Exception) -> None:
        try:
            conn = self.serving()
            db.safe_rollback(conn)
            control.record_error(conn, self.settings.source_name, list(self.specs()), str(exc))
            conn.commit()
        except (psycopg.Error, TransientError, TerminalError):
            pass  # the serving database is what failed; the log line is the record

    def standing_by(self) -> None:
        # Another instance owns this stream (or the lease is being renewed): stand by,
        # without holding the slot.
        self._settle_mapped()
        self.source.close_stream()

    def step(self, token: int | None) -> float:
        self.cycle()  # a cycle with nothing to read waited for it already
        return 0.0

    def failed(self, exc: Exception) -> float:
        if isinstance(exc, WatermarkMoved):
            # Expected when another command moves a watermark: no error to report.
            log.info("%s: %s", self.name, exc)
            self._drop_connections()
            return 0.0
        if isinstance(exc, TransientError):
            self.errored(exc)
            delay = self.backoff.next_delay()
            log.warning("%s: %s (retrying in %.1fs)", self.name, exc, delay)
            self._drop_connections()
            self._record_error(exc)
            return delay
        if isinstance(exc, GapError):
            self.errored(exc)
            log.error("%s: GAP: %s", self.name, exc)
            self._mark("GAP", exc, exc.gap_from, exc.gap_to)
            self.source.close_stream()
            return self.settings.poll_interval_seconds
        if isinstance(exc, SchemaDriftError):  # SQL Server: a DDL dropped or retyped a captured column
            self.errored(exc)
            log.error("%s: PAUSED: %s", self.name, exc)
            self._mark("PAUSED", exc)
            self.source.close_stream()
            return self.settings.poll_interval_seconds
        if isinstance(exc, (psycopg.Error, OSError)):
            # A driver error that escaped wrapping: treat like a lost connection.
            wrapped = db.wrap_db_error("ingestion", exc)
            self.errored(wrapped)
            delay = self.backoff.next_delay()
            log.warning("%s: %s (retrying in %.1fs)", self.name, wrapped, delay)
            self._drop_connections()
            return delay
        if isinstance(exc, TerminalError):
            self.errored(exc)
            delay = min(60.0, self.backoff.next_delay() * 3)
            log.error("%s: %s (retrying in %.1fs)", self.name, exc, delay)
            self._record_error(exc)
            self._drop_connections()
            return delay
        raise exc

    def finish(self) -> None:
        try:
            self._settle()  # queued commits finish, and are confirmed, before we stop
        except Exception as exc:  # noqa: BLE001 - the batch is rolled back and read again next start
            log.warning("%s: the last queued batch did not commit: %s", self.name, db.describe_error(exc))
        self._drop_connections()
        self._lane.close()

    def stopped_message(self) -> str:
        return f"{self.name} stopped after {self.batches} batches, {self.rows} rows"
