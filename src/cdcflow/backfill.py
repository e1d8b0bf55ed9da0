"""Backfills: one capture's table copied into staging while every other capture streams on.

A table added to ``CAPTURE_TABLES`` on a running deployment (its capture is ``INIT`` while
others have streamed), and ``cdcflow resync CAPTURE``, go through here; nothing else is
re-read. On a PostgreSQL source, for capture X:

1. ``BACKFILL``: X's watermark row records where its staged history ends
   (``backfill_from_lsn``: 0 for a new table, the gap's start for a resync). From the next
   ingestion cycle on, X's changes stream into staging with every other capture's, but no
   projection reads X past that point, and compaction leaves X's newer rows alone.
2. Once ingestion has committed a batch that carries X (its watermark moved), a temporary
   slot is created with ``EXPORT_SNAPSHOT``: its consistent point ``cp`` splits every commit
   into "in the snapshot" (before) and "streamed" (after). X streams continuously from
   before ``cp``, so every change after it is staged.
3. X's rows are read in that snapshot and staged as op 5 at ``cp - 1`` (an odd position:
   never a commit's), through the staging writer's COPY chunks (bounded memory), in one
   serving transaction that commits with:
   - X's watermark raised to ``cp - 1`` if it was below. Raising it first takes X's row
     lock, so a batch of changes before ``cp`` not yet committed rolls back and is read
     again with X's changes up to ``cp - 1`` dropped;
   - the changes to X streamed between its history and ``cp`` deleted: the snapshot has them;
   - for a resync, a delete for every key live in X's history but not in the snapshot;
   - X back to ``OK``.

A crash anywhere leaves X in ``BACKFILL`` with nothing of the copy staged; the next
``cdcflow run`` starts the copy again with a new snapshot (step 2), and step 3's delete
covers what was streamed meanwhile.

Without a running ingestion (``cdcflow resync X`` while ``cdcflow run`` is stopped) step 2's
wait is skipped: no change is confirmed to the slot meanwhile, so when ingestion starts it
streams X from its watermark, dropping what the snapshot has.
"""

from __future__ import annotations

import logging
import threading
import time

import psycopg
from psycopg import sql

from cdcflow import db, sqlfiles
from cdcflow.errors import TransientError
from cdcflow.positions import format_pg_lsn
from cdcflow.serving.control import read_watermarks
from cdcflow.snapshot import copy_table, stage_vanished, use_binary
from cdcflow.sources.base import TableSpec
from cdcflow.sources.postgres import PostgresSource

log = logging.getLogger(__name__)
Q = "serving_runtime.sql"
#: How often a backfill in flight records its progress (and logs a line).
PROGRESS_SECONDS = 2.0
#: How long to wait for ingestion to carry a capture's changes before giving up (then retried).
STREAM_WAIT_SECONDS = 120.0


class BackfillAborted(TransientError):
    """The capture left BACKFILL while it was copied (a reset, a full resync): nothing staged."""


def begin(serving: psycopg.Connection, source_name: str, capture: str, why: str) -> tuple[int, int]:
    """Put the capture in BACKFILL (idempotent). Returns (where its history ends, its watermark)."""
    row = serving.execute(
        sqlfiles.query(Q, "backfill_begin"), {"source": source_name, "capture": capture, "why": why}
    ).fetchone()
    serving.commit()
    if row is None:
        raise TransientError(f"capture {capture} has no watermark row in source {source_name}: run 'cdcflow bootstrap'")
    return int(row[0]), int(row[1])


class _Progress:
    """Rows copied so far, in ``ctl_backfills`` (for status) and as a log line with rate and ETA."""

    def __init__(self, serving_dsn: str, source_name: str, spec: TableSpec, lsn: int, estimate: int | None) -> None:
        self.conn = db.connect(serving_dsn, "serving", autocommit=True)
        self.source_name, self.spec, self.lsn, self.estimate = source_name, spec, lsn, estimate
        self.started = self.last = time.monotonic()
        self.rows = 0
        self.write()

    def write(self) -> None:
        try:
            self.conn.execute(
                sqlfiles.query(Q, "backfill_progress"),
                {
                    "source": self.source_name,
                    "capture": self.spec.capture,
                    "lsn": self.lsn,
                    "rows": self.rows,
                    "estimate": self.estimate,
                },
            )
        except psycopg.Error as exc:  # progress is for people; the copy goes on
            log.debug("backfill progress not recorded: %s", db.describe_error(exc))

    def __call__(self, rows: int) -> None:
        self.rows = rows
        now = time.monotonic()
        if now - self.last < PROGRESS_SECONDS:
            return
        self.last = now
        rate = rows / max(now - self.started, 1e-6)
        eta = ""
        if self.estimate and self.estimate > rows:
            eta = f", about {(self.estimate - rows) / max(rate, 1):.0f} s left"
        total = f" of about {self.estimate:,}" if self.estimate else ""
        log.info(
            "backfill of %s: %s%s rows (%s rows/s%s)", self.spec.qualified, f"{rows:,}", total, f"{rate:,.0f}", eta
        )
        self.write()

    def close(self) -> None:
        db.close_quietly(self.conn)


def run(
    source: PostgresSource,
    serving_dsn: str,
    source_name: str,
    capture: str,
    *,
    why: str,
    streaming: bool,
    stop: threading.Event | None = None,
) -> int:
    """Backfill one capture (see the module's docstring). ``streaming``: a running ingestion
    worker carries the source's changes meanwhile. Returns the rows staged."""
    specs = {s.capture: s for s in source.describe_tables()}
    spec = specs[capture]
    started = time.monotonic()
    with db.connect(serving_dsn, "serving") as serving:
        history, since = begin(serving, source_name, capture, why)
        if streaming:
            _wait_for_stream(serving, source_name, spec, since, stop)
        cp, snapshot_name, repl = source.create_slot_with_snapshot(temporary=True)
        watermark = cp - 1
        progress = _Progress(serving_dsn, source_name, spec, watermark, source.estimate_rows(spec))
        try:
            with db.rolled_back_on_error(serving, f"backfilling {spec.qualified}"):
                binary = use_binary(source, serving)
                reader = db.connect(source.dsn, "source")
                try:
                    reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    reader.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_name)))
                    rows = copy_table(reader, serving, spec, watermark, binary=binary, on_rows=progress)
                    reader.rollback()
                finally:
                    reader.close()
                locked = serving.execute(
                    sqlfiles.query(Q, "backfill_lock"), {"source": source_name, "capture": capture, "lsn": watermark}
                ).fetchone()
                if locked is None:
                    raise BackfillAborted(f"capture {capture} left BACKFILL while its table was copied: nothing staged")
                if streaming and locked[2] is not None and int(locked[1]) < int(locked[2]):
                    # A batch staged the others past this capture's position without it: its
                    # changes there are neither copied nor staged. Copy again, later.
                    raise TransientError(
                        f"backfill of {spec.qualified}: ingestion staged the other captures up to "
                        f"{format_pg_lsn(int(locked[2]))} without this one (at {format_pg_lsn(int(locked[1]))}); "
                        "discarding this copy and taking a new one"
                    )
                dropped = serving.execute(
                    sqlfiles.query(Q, "backfill_drop_streamed", table=sql.Identifier(spec.staging_table)),
                    {"history": history, "lsn": watermark},
                ).rowcount
                vanished = stage_vanished(serving, spec, watermark, rows, history) if history > 0 else 0
                serving.execute(
                    sqlfiles.query(Q, "backfill_done"),
                    {"source": source_name, "capture": capture, "rows": rows + vanished - dropped},
                )
                serving.execute(sqlfiles.query(Q, "backfill_forget"), {"source": source_name, "capture": capture})
                serving.execute(sqlfiles.query(Q, "notify_staged"), {"source": source_name})
                serving.commit()
        finally:
            progress.close()
            repl.close()  # type: ignore[attr-defined]  # the temporary slot goes with it
    log.info(
        "backfill of %s staged %d rows at %s in %.1fs (%d streamed changes it already had dropped, %d deletes)",
        spec.qualified,
        rows,
        format_pg_lsn(watermark),
        time.monotonic() - started,
        dropped,
        vanished,
    )
    return rows


def _wait_for_stream(
    serving: psycopg.Connection, source_name: str, spec: TableSpec, since: int, stop: threading.Event | None
) -> None:
    """Until ingestion has committed a batch that carries the capture (its watermark moved)."""
    deadline = time.monotonic() + STREAM_WAIT_SECONDS
    while True:
        wm = read_watermarks(serving, source_name).get(spec.capture)
        serving.rollback()
        if wm is None or wm.state != "BACKFILL":
            raise BackfillAborted(f"capture {spec.capture} left BACKFILL before its table was copied")
        if wm.last_lsn != since:
            return
        if time.monotonic() > deadline:
            raise TransientError(
                f"backfill of {spec.qualified}: ingestion has not streamed this capture for "
                f"{STREAM_WAIT_SECONDS:.0f}s; is the ingestion worker running?"
            )
        if stop is not None and stop.wait(0.2):
            raise BackfillAborted(f"backfill of {spec.qualified} stopped before its table was copied")
        if stop is None:
            time.sleep(0.2)


def pending(serving: psycopg.Connection, source_name: str) -> list[str]:
    """Captures to backfill: those in BACKFILL, and those never snapshotted (INIT) while
    another capture of the source has been."""
    wms = read_watermarks(serving, source_name)
    serving.rollback()
    started = any(w.state != "INIT" for w in wms.values())
    return sorted(c for c, w in wms.items() if w.state == "BACKFILL" or (w.state == "INIT" and started))


class BackfillWorker:
    """Runs the source's pending backfills while this process's ingestion worker owns the stream."""

    def __init__(self, settings, serving_dsn: str, stop: threading.Event, ingest) -> None:
        self.settings = settings
        self.serving_dsn = serving_dsn
        self.stop = stop
        self.ingest = ingest  # the IngestWorker whose lease says the stream is ours
        self.name = f"backfill[{settings.source_name}]"
        self.alive = False
        self.last_error: str | None = None
        self.backfills = 0

    def run(self) -> None:
        from cdcflow.bootstrap import make_source

        self.alive = True
        backoff = db.Backoff(initial=1.0, maximum=30.0)
        try:
            while not self.stop.wait(self.settings.poll_interval_seconds):
                if not (self.ingest.alive and self.ingest.lease.held):
                    continue
                try:
                    with db.connect(self.serving_dsn, "serving") as conn:
                        todo = pending(conn, self.settings.source_name)
                    for capture in todo:
                        source = make_source(self.settings)
                        try:
                            why = "backfilling: its table's rows are being copied"
                            run(
                                source,
                                self.serving_dsn,
                                self.settings.source_name,
                                capture,
                                why=why,
                                streaming=True,
                                stop=self.stop,
                            )
                        finally:
                            source.close()
                        self.backfills += 1
                    backoff.reset()
                    self.last_error = None
                except BackfillAborted as exc:
                    log.info("%s: %s", self.name, exc)
                except Exception as exc:  # noqa: BLE001 - logged and retried; staging is untouched
                    self.last_error = str(exc)
                    delay = backoff.next_delay()
                    log.error("%s: %s (retrying in %.0fs)", self.name, db.describe_error(exc), delay)
                    self.stop.wait(delay)
        finally:
            self.alive = False


def wait_done(serving: psycopg.Connection, source_name: str, capture: str, stop: threading.Event | None = None) -> None:
    """Until the capture's backfill (run by another process) has committed, logging its progress."""
    last = 0.0
    while True:
        wm = read_watermarks(serving, source_name).get(capture)
        rows = {r[0]: r for r in serving.execute(sqlfiles.query(Q, "read_backfills"), {"source": source_name})}
        serving.rollback()
        if wm is None or wm.state != "BACKFILL":
            if wm is not None and wm.state != "OK":
                raise TransientError(f"capture {capture} is {wm.state} after its backfill: {wm.last_error or ''}")
            return
        if capture in rows and time.monotonic() - last >= PROGRESS_SECONDS:
            last = time.monotonic()
            _, _, done, estimate, _, _ = rows[capture]
            total = f" of about {estimate:,}" if estimate else ""
            log.info("backfill of %s: %s%s rows copied", capture, f"{done:,}", total)
        if stop is not None and stop.wait(0.5):
            return
        if stop is None:
            time.sleep(0.5)
