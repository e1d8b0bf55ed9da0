"""Backfills: one capture's table copied into staging while every other capture streams on.

A table added to ``CAPTURE_TABLES`` on a running deployment (its capture is ``INIT`` while
others have streamed), ``cdcflow resync CAPTURE``, and an initial snapshot or full resync
that stopped half-way go through here; nothing else is re-read. For capture X:

1. ``BACKFILL``: X's watermark row records where its staged history ends
   (``backfill_from_lsn``: 0 for a new table, the gap's start for a resync). From the next
   ingestion cycle on, X's changes stream into staging with every other capture's, but no
   projection reads X past that point, and compaction leaves X's newer rows alone.
2. Once ingestion has committed a batch that carries X (its watermark moved), a temporary
   slot is created with ``EXPORT_SNAPSHOT``: its consistent point ``cp`` splits every commit
   into "in the snapshot" (before) and "streamed" (after). X streams continuously from
   before ``cp``.
3. X's table is copied in chunks at ``cp - 1`` (an odd position, never a commit's), each
   committed with its record (``cdcflow.copying``). A crash loses the chunks in flight; the
   next attempt copies the others from a new snapshot.
4. Completion (:func:`complete`), once the whole source has streamed past the last chunk's
   position: for a resync, a delete for every key live in X's history that no chunk has;
   the staging indexes if the copy dropped them; X back to ``OK``. Until the others' and
   X's watermarks pass that position, staging below it would show X without the rows of
   the later chunks, so projections keep waiting.

Without a running ingestion (``cdcflow resync X`` while ``cdcflow run`` is stopped) step 2's
wait is skipped, and step 4 is left to the next ``cdcflow run``, which streams X from its
watermark (what the snapshot has is superseded) and completes it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from cdcflow import copying, db, sqlfiles
from cdcflow.copying import CopyAborted, CopyOptions, stage_vanished, use_binary
from cdcflow.errors import TransientError
from cdcflow.positions import format_pg_lsn
from cdcflow.serving import schema
from cdcflow.serving.control import read_watermarks
from cdcflow.serving.staging import carry_unchanged
from cdcflow.sources.base import TableSpec

if TYPE_CHECKING:  # the source module calls this one (through cdcflow.snapshot): no import of it at run time
    from cdcflow.sources.postgres import PostgresSource
from cdcflow.worker import Worker

log = logging.getLogger(__name__)
QUERIES = "serving_runtime.sql"
#: How often a progress line is logged while another process backfills.
PROGRESS_SECONDS = copying.PROGRESS_SECONDS
#: How long to wait for ingestion to carry a capture's changes before giving up (then retried).
STREAM_WAIT_SECONDS = 120.0
#: The seqvals of a resync's deletes: above every chunk's (``copying.SEQVAL_STRIDE`` per block).
VANISHED_SEQVAL_BASE = 1 << 63

BackfillAborted = CopyAborted


def begin(serving: psycopg.Connection, source_name: str, capture: str, why: str) -> tuple[int, int]:
    """Put the capture in BACKFILL (idempotent). Returns (where its history ends, its watermark)."""
    row = serving.execute(
        sqlfiles.query(QUERIES, "backfill_begin"), {"source": source_name, "capture": capture, "why": why}
    ).fetchone()
    serving.commit()
    if row is None:
        raise TransientError(f"capture {capture} has no watermark row in source {source_name}: run 'cdcflow bootstrap'")
    return int(row[0]), int(row[1])


def run(
    source: PostgresSource,
    serving_dsn: str,
    source_name: str,
    capture: str,
    *,
    why: str,
    streaming: bool,
    stop: threading.Event | None = None,
    options: CopyOptions | None = None,
) -> int:
    """Backfill one capture (see the module's docstring). ``streaming``: a running ingestion
    worker carries the source's changes meanwhile. Returns the rows its chunks hold."""
    specs = {s.capture: s for s in source.describe_tables()}
    spec = specs.get(capture)
    if spec is None:  # its table left CAPTURE_TABLES: nothing streams for it
        log.debug("backfill of %s skipped: its table is not in CAPTURE_TABLES", capture)
        return 0
    started = time.monotonic()
    with copy_lock(serving_dsn, source_name, [capture], wait=not streaming) as mine:
        if not mine:
            log.debug("backfill of %s: another process copies it", spec.qualified)
            return 0
        return _run(source, serving_dsn, source_name, spec, list(specs), why, streaming, stop, options, started)


def _run(source, serving_dsn, source_name, spec, captured, why, streaming, stop, options, started) -> int:
    capture = spec.capture
    with db.connect(serving_dsn, "serving") as serving:
        history, since = begin(serving, source_name, capture, why)
        with db.rolled_back_on_error(serving, f"indexing {spec.staging_table}"):
            schema.ensure_indexes(serving, spec)  # a copy that a crash stopped may have dropped them
            serving.commit()
        if streaming:
            _wait_for_stream(serving, source_name, spec, since, stop)
        binary = use_binary(source, serving)
        cp, snapshot_name, repl = source.create_slot_with_snapshot(temporary=True)
        try:
            rows = copying.copy_table(
                source,
                serving_dsn,
                source_name,
                spec,
                snapshot_name,
                cp - 1,
                drop_indexes=False,
                binary=binary,
                options=options or CopyOptions(),
                stop=stop,
            )
        finally:
            repl.close()  # the temporary slot goes with it
        done = complete(
            serving,
            source,
            source_name,
            spec,
            history,
            captured=captured,
            streaming=streaming,
            binary=binary,
            stop=stop,
        )
        if done:
            log.info("backfill of %s: %d rows in %.1fs", spec.qualified, rows, time.monotonic() - started)
    return rows


@contextlib.contextmanager
def copy_lock(serving_dsn: str, source_name: str, captures: list[str], *, wait: bool) -> Iterator[bool]:
    """Hold the right to copy these captures' tables (one process at a time: a running
    backfill worker and a 'cdcflow resync' would otherwise copy the same table together).
    A session advisory lock per capture, released when the block ends or the process dies.
    ``wait``: until they are free (saying so); else yields False if one is taken."""
    conn = db.connect(serving_dsn, "serving", autocommit=True)
    try:
        yield _lock_all(conn, source_name, captures, wait)
    finally:
        db.close_quietly(conn)


def _lock_all(conn: psycopg.Connection, source_name: str, captures: list[str], wait: bool) -> bool:
    try:
        for capture in sorted(captures):
            key = f"cdcflow copy {source_name} {capture}"
            got = conn.execute(sqlfiles.query(QUERIES, "copy_try_lock"), {"key": key}).fetchone()
            if got and got[0]:
                continue
            if not wait:
                return False
            log.info("waiting for the copy of %s that another process runs", capture)
            conn.execute(sqlfiles.query(QUERIES, "copy_lock"), {"key": key})
        return True
    except psycopg.Error as exc:
        raise db.wrap_db_error("taking the copy lock", exc) from None


def complete(
    serving: psycopg.Connection,
    source: PostgresSource,
    source_name: str,
    spec: TableSpec,
    history: int,
    *,
    captured: Collection[str],
    streaming: bool,
    binary: bool,
    stop: threading.Event | None = None,
) -> bool:
    """Once the source has streamed past the last chunk's position, the capture is complete
    (see the module's docstring, step 4). ``captured``: the source's captures now (a row of
    a table no longer in CAPTURE_TABLES does not stream, and is not waited for). Without
    ``streaming``, returns False when it has not (the next ``cdcflow run`` completes it).

    Rows whose TOAST values no copied or streamed version holds (see the query
    ``backfill_unbased_keys``) are copied again by key first, from a new snapshot; the
    completion then waits for the stream to pass that one's position too."""
    while True:
        first, last = _chunk_positions(serving, source_name, spec)
        if not _streamed_past(serving, source_name, spec, last, captured, streaming, stop):
            return False
        keys = _unbased_keys(serving, spec, first)
        if not keys:
            break
        rows = copying.fetch_keys(source, serving, source_name, spec, keys, binary=binary)
        log.info(
            "backfill of %s: %d rows moved between blocks while the copy was stopped; %d copied again by key",
            spec.qualified,
            len(keys),
            rows,
        )
    _commit_completion(serving, source_name, spec, history, first, last, streaming)
    return True


def _chunk_positions(serving: psycopg.Connection, source_name: str, spec: TableSpec) -> tuple[int, int]:
    first, last = serving.execute(
        sqlfiles.query(QUERIES, "backfill_chunk_positions"), {"source": source_name, "capture": spec.capture}
    ).fetchone()  # type: ignore[misc]
    serving.rollback()
    if last is None:
        raise TransientError(f"backfill of {spec.qualified}: no chunk of its table is staged")
    return int(first), int(last)


def _streamed_past(
    serving: psycopg.Connection,
    source_name: str,
    spec: TableSpec,
    last: int,
    captured: Collection[str],
    streaming: bool,
    stop: threading.Event | None,
) -> bool:
    """Until the capture and every complete capture have streamed past ``last``; without
    ``streaming``, False at once if they have not."""
    deadline = time.monotonic() + STREAM_WAIT_SECONDS
    while (behind := _lowest_watermark(serving, source_name, spec.capture, captured)) < last:
        if not streaming:
            log.info(
                "backfill of %s is copied; 'cdcflow run' completes it once it streams past %s (now at %s)",
                spec.qualified,
                format_pg_lsn(last),
                format_pg_lsn(behind),
            )
            return False
        if time.monotonic() > deadline:
            raise TransientError(
                f"backfill of {spec.qualified}: the stream has not reached {format_pg_lsn(last)} in "
                f"{STREAM_WAIT_SECONDS:.0f}s (it is at {format_pg_lsn(behind)}); is the ingestion worker running?"
            )
        _pause(stop, 0.1, f"backfill of {spec.qualified} stopped before it completed")
    return True


def _unbased_keys(serving: psycopg.Connection, spec: TableSpec, first: int) -> list[tuple[str, ...]]:
    keys = [sql.Identifier(k) for k in spec.key_columns]
    rows = serving.execute(
        sqlfiles.query(
            QUERIES,
            "backfill_unbased_keys",
            table=sql.Identifier(spec.staging_table),
            keys=sql.SQL(", ").join(sql.SQL("cur.{}::text").format(k) for k in keys),
            prev_match=schema.keys_match(spec.key_columns, "prev", "cur"),
            next_match=schema.keys_match(spec.key_columns, "nxt", "cur"),
        ),
        {"table": spec.staging_table, "first": first},
    ).fetchall()
    serving.rollback()
    return [tuple(r) for r in rows]


def _commit_completion(
    serving: psycopg.Connection, source_name: str, spec: TableSpec, history: int, first: int, last: int, streaming: bool
) -> None:
    capture = spec.capture
    with db.rolled_back_on_error(serving, f"completing the backfill of {spec.qualified}"):
        # Before the capture's row lock, which ingestion's batches wait for while they hold
        # their staging tables' locks: an index build then would wait for them (a deadlock).
        schema.ensure_indexes(serving, spec)
        locked = serving.execute(
            sqlfiles.query(QUERIES, "backfill_lock"), {"source": source_name, "capture": capture, "lsn": last}
        ).fetchone()
        if locked is None:
            raise BackfillAborted(f"capture {capture} left BACKFILL while its table was copied: nothing staged")
        if streaming and locked[2] is not None and int(locked[1]) < int(locked[2]):
            # A batch staged the others past this capture's position without it: its changes
            # there are neither copied nor staged. The copy starts over.
            serving.rollback()
            serving.execute(sqlfiles.query(QUERIES, "backfill_restart"), {"source": source_name, "capture": capture})
            serving.commit()
            raise TransientError(
                f"backfill of {spec.qualified}: ingestion staged the other captures up to "
                f"{format_pg_lsn(int(locked[2]))} without this one (at {format_pg_lsn(int(locked[1]))}); "
                "copying its table again"
            )
        # Streamed below the first chunk's position: every chunk's rows supersede it (the
        # watermarks are past the last chunk's, so no such batch is still to commit).
        dropped = serving.execute(
            sqlfiles.query(QUERIES, "backfill_drop_streamed", table=sql.Identifier(spec.staging_table)),
            {"history": history, "lsn": first},
        ).rowcount
        # Rows streamed while the table was copied that took a TOAST value from a version
        # older than the copy's: taken again, now that the copy is staged.
        unchanged = serving.execute(sqlfiles.query(QUERIES, "read_unchanged"), {"table": spec.staging_table}).fetchall()
        carry_unchanged(serving, spec, [(int(a), int(b), int(c), d) for a, b, c, d in unchanged])
        serving.execute(sqlfiles.query(QUERIES, "forget_unchanged"), {"table": spec.staging_table})
        vanished = 0
        if history > 0:
            vanished = stage_vanished(serving, spec, first, VANISHED_SEQVAL_BASE, history, snapshot_from=history + 1)
        serving.execute(
            sqlfiles.query(QUERIES, "backfill_done"),
            {"source": source_name, "capture": capture, "rows": vanished - dropped},
        )
        serving.execute(sqlfiles.query(QUERIES, "backfill_forget"), {"source": source_name, "capture": capture})
        serving.execute(sqlfiles.query(QUERIES, "notify_staged"), {"source": source_name})
        serving.commit()


def _lowest_watermark(serving: psycopg.Connection, source_name: str, capture: str, captured: Collection[str]) -> int:
    """The capture's watermark, or a complete capture's if one is lower: where the source has
    streamed to for every projection that could read the capture once it is complete."""
    wms = read_watermarks(serving, source_name)
    serving.rollback()
    own = wms.get(capture)
    if own is None or own.state != "BACKFILL":
        raise BackfillAborted(f"capture {capture} left BACKFILL while its table was copied")
    others = [w.last_lsn for c, w in wms.items() if c != capture and c in captured and w.state == "OK"]
    return min([own.last_lsn, *others])


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
        _pause(stop, 0.2, f"backfill of {spec.qualified} stopped before its table was copied")


def _pause(stop: threading.Event | None, seconds: float, stopped: str) -> None:
    """Wait a little; raises BackfillAborted(``stopped``) if the process is stopping."""
    if stop is None:
        time.sleep(seconds)
    elif stop.wait(seconds):
        raise BackfillAborted(stopped)


def pending(serving: psycopg.Connection, source_name: str) -> list[str]:
    """Captures to backfill: those in BACKFILL, and those never snapshotted (INIT) while
    another capture of the source has been."""
    wms = read_watermarks(serving, source_name)
    serving.rollback()
    started = any(w.state != "INIT" for w in wms.values())
    return sorted(c for c, w in wms.items() if w.state == "BACKFILL" or (w.state == "INIT" and started))


class BackfillWorker(Worker):
    """Runs the source's pending backfills while this process's ingestion worker owns the stream."""

    def __init__(self, settings, serving_dsn: str, stop: threading.Event, ingest) -> None:
        super().__init__(f"backfill[{settings.source_name}]", stop, backoff=db.Backoff(initial=1.0, maximum=30.0))
        self.settings = settings
        self.serving_dsn = serving_dsn
        self.ingest = ingest  # the IngestWorker whose lease says the stream is ours
        self.backfills = 0

    def initial_wait(self) -> float:
        return self.settings.poll_interval_seconds

    def step(self, token: int | None) -> float:
        if self.ingest.alive and self.ingest.lease.held:
            with db.connect(self.serving_dsn, "serving") as conn:
                todo = pending(conn, self.settings.source_name)
            for capture in todo:
                self._backfill(capture)
                self.backfills += 1
        return self.settings.poll_interval_seconds

    def _backfill(self, capture: str) -> None:
        from cdcflow.sources.postgres import PostgresSource  # at run time: that module imports this one

        source = PostgresSource.from_settings(self.settings)
        try:
            run(
                source,
                self.serving_dsn,
                self.settings.source_name,
                capture,
                why="backfilling: its table's rows are being copied",
                streaming=True,
                stop=self.stop,
                options=CopyOptions.of(self.settings),
            )
        finally:
            source.close()

    def failed(self, exc: Exception) -> float:
        if isinstance(exc, BackfillAborted):
            log.info("%s: %s", self.name, exc)
            return self.settings.poll_interval_seconds
        # Logged and retried; chunks committed stay done.
        exc = db.wrap_db_error("backfilling", exc) if isinstance(exc, psycopg.Error) else exc
        self.errored(exc)
        delay = self.backoff.next_delay()
        # A lost connection is retried like ingestion's; anything else is an error.
        level = logging.WARNING if isinstance(exc, TransientError) else logging.ERROR
        log.log(level, "%s: %s (retrying in %.0fs)", self.name, db.describe_error(exc), delay)
        return delay + self.settings.poll_interval_seconds


def wait_done(serving: psycopg.Connection, source_name: str, capture: str, stop: threading.Event | None = None) -> None:
    """Until the capture's backfill (run by another process) has committed, logging its progress."""
    last = 0.0
    while True:
        wm = read_watermarks(serving, source_name).get(capture)
        rows = {r[0]: r for r in serving.execute(sqlfiles.query(QUERIES, "read_backfills"), {"source": source_name})}
        serving.rollback()
        if wm is None or wm.state != "BACKFILL":
            if wm is not None and wm.state != "OK":
                raise TransientError(f"capture {capture} is {wm.state} after its backfill: {wm.last_error or ''}")
            return
        if capture in rows and time.monotonic() - last >= PROGRESS_SECONDS:
            last = time.monotonic()
            _, _, done, estimate, _, _, _ = rows[capture]
            total = f" of about {estimate:,}" if estimate else ""
            log.info("backfill of %s: %s%s rows copied", capture, f"{done:,}", total)
        if stop is not None and stop.wait(0.5):
            return
        if stop is None:
            time.sleep(0.5)
