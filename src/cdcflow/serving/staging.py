"""Staging writes: COPY into ``stg_cdc_*`` and the watermark, in one serving transaction.

:class:`StagingWriter` is the sink a source streams into. Lines are buffered per
capture and written with COPY in chunks of about ``chunk_bytes``, so a source
transaction of any size is staged with bounded memory, all inside one open serving
transaction that commits together with the new watermarks (invariant 2). Nothing is
visible, and nothing is confirmed to the source, before that commit.

A batch that outgrows one chunk (``chunk_bytes``) is written by a background thread (a
:class:`CopyLane`) on the same connection while the source keeps decoding, so the serving
database's COPY work overlaps with ours; the queue between them is bounded, and so is
memory. The ingestion worker keeps one lane for all its batches and, while a backlog
lasts, queues each batch's commit on it too (``commit(wait=False)``): the next batch is
decoded while the previous one commits, and the slot is confirmed once the lane reports
the commit. Transactions still commit one at a time, in stream order.

Normal batches COPY straight into staging: the source never hands over a transaction
at or below the watermark, so a duplicate cannot arise. If one does anyway (the
primary key says so), the batch is retried in ``dedupe`` mode, which COPYs into a
temporary table and inserts with ``ON CONFLICT DO NOTHING`` (invariant 1).
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from cdcflow import db, sqlfiles
from cdcflow.errors import TransientError
from cdcflow.serving import schema
from cdcflow.sources.base import META_COLUMNS, TableSpec

log = logging.getLogger(__name__)
QUERIES = "serving_runtime.sql"
DEFAULT_CHUNK_BYTES = 512 << 10
QUEUE_CHUNKS = 8  # at most this many chunks wait for the writer thread
_BINARY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"  # signature, flags, no extension
_BINARY_TRAILER = b"\xff\xff"
#: COPY statements, composed once per (table, columns, format, dedupe) for the process.
_COPY_SQL: dict[tuple[str, tuple[str, ...], str, bool], bytes] = {}


class WatermarkMoved(TransientError):
    """A watermark changed between reading it and committing a batch after it (a reset, a
    resync or a backfill ran meanwhile): the batch is rolled back and the worker starts over from there."""


@dataclass
class _Pending:
    lines: list[bytes]
    size: int = 0


class CopyLane:
    """One thread that runs a serving connection's staging work in order.

    COPY chunks and batch commits are queued here, so the serving database works while the
    caller keeps decoding. A lane is shared by the batches of one ingestion worker: batch
    N+1's chunks queue behind batch N's commit, on the same connection, so transactions
    still commit one after the other in stream order. The queue is bounded (memory).

    After a job fails, later jobs are skipped until :meth:`reset`; the failure is raised in
    the caller's thread by the next :meth:`submit`, :meth:`wait` or :meth:`check`.
    """

    def __init__(self, max_items: int = QUEUE_CHUNKS, name: str = "staging-copy") -> None:
        self._max_items = max_items
        self._name = name  # the thread's name (log lines written from it carry it)
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def check(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, job: Callable[[], None]) -> None:
        self.check()
        if self._thread is None:
            self._queue = queue.Queue(maxsize=self._max_items)
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        assert self._queue is not None
        self._queue.put(job)  # blocks when the serving database is behind

    def _run(self) -> None:
        assert self._queue is not None
        q = self._queue
        while True:
            job = q.get()
            try:
                if job is None:
                    return
                if self._error is None:
                    job()
            except BaseException as exc:  # surfaced in the caller's thread
                self._error = exc
            finally:
                q.task_done()

    @property
    def busy(self) -> bool:
        return self._queue is not None and self._queue.unfinished_tasks > 0

    def wait(self) -> None:
        """Block until every queued job ran (or was skipped); raise the first failure."""
        if self._queue is not None:
            self._queue.join()
        self.check()

    def reset(self) -> None:
        """Wait for the queue to empty and forget a failure (after the caller rolled back)."""
        if self._queue is not None:
            self._queue.join()
        self._error = None

    def close(self) -> None:
        if self._thread is not None:
            assert self._queue is not None
            self._queue.put(None)
            self._thread.join()
            self._thread = None
            self._queue = None


class StagingWriter:
    """Sink for one batch. Use once: add lines, then :meth:`commit` or :meth:`rollback`.

    ``lane`` is the worker's :class:`CopyLane` (shared across its batches); without one the
    writer makes a private lane for a batch that outgrows a chunk."""

    def __init__(
        self,
        conn: psycopg.Connection,
        specs: dict[str, TableSpec],
        source_name: str,
        *,
        dedupe: bool = False,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        lane: CopyLane | None = None,
        copying: frozenset[str] = frozenset(),
    ) -> None:
        self.conn = conn
        self.specs = specs
        #: Captures whose table is being copied: their rows with TOAST columns not resent
        #: are remembered, for the copy's completion to carry again (``backfill.complete``).
        self.copying = copying
        self.source_name = source_name
        self.dedupe = dedupe
        self._pending: dict[str, _Pending] = {}
        self._size = 0
        self._unchanged: dict[str, list[tuple[int, int, int, tuple[str, ...]]]] = {}
        self.rows_written: dict[str, int] = {}
        self._temp_made: set[str] = set()
        self.chunk_bytes = chunk_bytes
        #: "text" (lines in COPY text format) or "binary" (tuples in COPY binary format, no
        #: header: each COPY gets one). The source sets it before it adds any row.
        self.copy_format = "text"
        self._own_lane = lane is None
        self._lane = lane
        self._used_lane = False

    # -- ChangeSink -------------------------------------------------------------

    def backlogged(self) -> bool:
        """The serving side still has queued work (COPY chunks, an earlier batch's commit):
        a source may read on instead of ending the batch, since a commit now would wait."""
        return self._lane is not None and self._lane.busy

    def add_line(self, capture: str, line: bytes) -> None:
        p = self._pending.get(capture)
        if p is None:
            p = self._pending[capture] = _Pending([])
        p.lines.append(line)
        n = len(line)
        p.size += n
        self._size += n
        if p.size >= self.chunk_bytes:
            self._send(capture, p)

    def add_lines(self, capture: str, lines: list[bytes], nbytes: int) -> None:
        """Many staged rows at once (the decoder's hand-off)."""
        p = self._pending.get(capture)
        if p is None:
            p = self._pending[capture] = _Pending([])
        p.lines.extend(lines)
        p.size += nbytes
        self._size += nbytes
        if p.size >= self.chunk_bytes:
            self._send(capture, p)

    def add_unchanged(self, capture: str, position: tuple[int, int, int], columns: tuple[str, ...]) -> None:
        """Remember a row, at (lsn, seqval, op), whose TOAST columns were not resent (staged NULL for now)."""
        lsn, seqval, op = position
        self._unchanged.setdefault(capture, []).append((lsn, seqval, op, columns))

    # -- writing ----------------------------------------------------------------

    def _target(self, capture: str) -> sql.Composed:
        spec = self.specs[capture]
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in (*META_COLUMNS, *spec.column_names))
        table = sql.Identifier(("tmp_" if self.dedupe else "") + spec.staging_table)
        if self.copy_format == "binary":
            return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(table, cols)
        return sql.SQL("COPY {} ({}) FROM STDIN").format(table, cols)

    # -- the COPY work, on the lane's thread ----------------------------------------

    def _send(self, capture: str, p: _Pending) -> None:
        """Queue a chunk on the lane (made on first use when the writer has none)."""
        if self._lane is None:
            self._lane = CopyLane()
        data, rows = b"".join(p.lines), len(p.lines)
        self._lane.submit(lambda: self._copy(capture, data, rows))
        self._used_lane = True
        self._size -= p.size
        p.lines = []
        p.size = 0

    def _send_pending(self) -> None:
        """Queue every capture's buffered rows on the lane."""
        for capture, p in self._pending.items():
            if p.lines:
                self._send(capture, p)

    def _close_own_lane(self) -> None:
        if self._own_lane and self._lane is not None:
            self._lane.close()
            self._lane = None

    def _copy(self, capture: str, data: bytes, rows: int) -> None:
        spec = self.specs[capture]
        if self.dedupe and capture not in self._temp_made:
            self.conn.execute(
                sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS").format(
                    sql.Identifier("tmp_" + spec.staging_table), sql.Identifier(spec.staging_table)
                )
            )
            self._temp_made.add(capture)
        key = (spec.staging_table, spec.column_names, self.copy_format, self.dedupe)
        stmt = _COPY_SQL.get(key)
        if stmt is None:
            stmt = _COPY_SQL[key] = self._target(capture).as_bytes(self.conn)
        with self.conn.cursor() as cur:
            with cur.copy(stmt) as copy:
                if self.copy_format == "binary":
                    copy.write(_BINARY_HEADER)
                    copy.write(data)
                    copy.write(_BINARY_TRAILER)
                else:
                    copy.write(data)
        if not self.dedupe:
            self.rows_written[capture] = self.rows_written.get(capture, 0) + rows

    def flush(self) -> None:
        """COPY everything buffered and wait for the lane (the transaction stays open).

        A shared lane is waited for even when this batch never used it: a queued commit of
        the previous batch must be done before this thread touches the connection."""
        if self._lane is not None:
            if self._used_lane:
                self._send_pending()
            try:
                self._lane.wait()
            finally:
                self._close_own_lane()
        self._finish_copies()

    def _finish_copies(self) -> None:
        """What is left of the batch, in the calling thread: the last chunks, TOAST carry-over."""
        for capture, p in self._pending.items():
            if p.lines:
                self._copy(capture, b"".join(p.lines), len(p.lines))
                p.lines = []
                p.size = 0
        self._size = 0
        if self.dedupe:
            self._merge_temp()
        self._carry_unchanged()

    def _merge_temp(self) -> None:
        for capture in self._temp_made:
            spec = self.specs[capture]
            cur = self.conn.execute(
                sql.SQL("INSERT INTO {} SELECT * FROM {} ON CONFLICT DO NOTHING").format(
                    sql.Identifier(spec.staging_table), sql.Identifier("tmp_" + spec.staging_table)
                )
            )
            self.rows_written[capture] = self.rows_written.get(capture, 0) + max(cur.rowcount, 0)
            if cur.rowcount == 0:
                log.info("replayed rows for %s were already staged; nothing inserted", capture)
            self.conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier("tmp_" + spec.staging_table)))

    def _carry_unchanged(self) -> None:
        for capture, rows in self._unchanged.items():
            spec = self.specs[capture]
            if capture in self.copying:
                # Wait for a completion of the copy that is committing now (it holds the
                # capture's row): its carried values must be what this batch carries from.
                self.conn.execute(
                    sqlfiles.query(QUERIES, "wait_for_copy_completion"),
                    {"source": self.source_name, "capture": capture},
                )
            carry_unchanged(self.conn, spec, rows)
            if capture in self.copying:
                for lsn, seqval, op, columns in rows:
                    self.conn.execute(
                        sqlfiles.query(QUERIES, "remember_unchanged"),
                        {"table": spec.staging_table, "lsn": lsn, "seqval": seqval, "op": op, "columns": list(columns)},
                    )
        self._unchanged = {}

    def commit(
        self,
        watermark: int,
        captures: list[str],
        last_commit_time: dt.datetime | None,
        *,
        notify: bool = True,
        before_commit: Callable[[psycopg.Connection], None] | None = None,
        expected: list[int],
        wait: bool = True,
        then: Callable[[], None] | None = None,
    ) -> None:
        """Flush, advance the watermark of ``captures`` to ``watermark``, commit: one transaction.

        ``before_commit`` runs last inside the transaction (the lease fence). ``expected``
        (one per capture) is each watermark as it was read before the batch: if any moved
        meanwhile, or its capture stopped (GAP, PAUSED), :class:`WatermarkMoved` is raised
        and nothing commits.

        With ``wait=False`` (needs a shared lane) the commit is queued behind the batch's
        COPY chunks and the call returns at once; ``then`` runs on the lane's thread right
        after the commit. A failure surfaces at the lane's next use; the caller must then
        :meth:`rollback`.
        """

        def finish() -> None:
            self._finish_copies()
            advanced = self._advance(watermark, captures, last_commit_time, expected)
            if advanced.rowcount != len(captures):
                raise WatermarkMoved(
                    "a watermark changed while a batch was being staged (reset, resync or backfill): "
                    "the batch is rolled back and ingestion restarts from the new watermark"
                )
            if notify and any(self.rows_written.values()):
                self.conn.execute(sqlfiles.query(QUERIES, "notify_staged"), {"source": self.source_name})
            # The fence is last, and a statement of its own: from here to the commit the lease
            # row is locked, and only between statements does the server's idle timeout run
            # (it ends the session if this process freezes now; see IngestWorker.serving).
            if before_commit is not None:
                before_commit(self.conn)
            self.conn.commit()
            if then is not None:
                then()

        if wait:
            self.flush()
            finish()
            return
        if self._own_lane:
            raise ValueError("commit(wait=False) needs the worker's shared CopyLane")
        assert self._lane is not None
        self._send_pending()
        self._lane.submit(finish)

    def _advance(
        self, watermark: int, captures: list[str], last_commit_time: dt.datetime | None, expected: list[int]
    ) -> psycopg.Cursor:
        """The watermark update; its cursor's rowcount says how many captures moved."""
        return self.conn.execute(
            sqlfiles.query(QUERIES, "advance_watermarks"),
            {
                "source": self.source_name,
                "lsn": watermark,
                "commit_time": last_commit_time,
                "captures": captures,
                "rows": [self.rows_written.get(c, 0) for c in captures],
                "expected": expected,
            },
        )

    def rollback(self) -> None:
        """Drop this batch: wait for the lane (a queued commit of an earlier batch still
        commits), forget its failure, roll the transaction back."""
        try:
            if self._lane is not None:
                self._lane.reset()
        finally:
            self._close_own_lane()
        db.safe_rollback(self.conn)  # a lost connection was rolled back by the server
        self._pending.clear()
        self._unchanged.clear()
        self._size = 0


def carry_unchanged(
    conn: psycopg.Connection, spec: TableSpec, rows: Sequence[tuple[int, int, int, Sequence[str]]]
) -> None:
    """TOAST: each staged row at (lsn, seqval, op) takes its ``columns`` the source did not
    resend from the previous staged version of its key; in the order given (stream order),
    so a chain of such updates carries the value along."""
    table = sql.Identifier(spec.staging_table)
    key_match = schema.keys_match(spec.key_columns, "prev", "cur")
    for lsn, seqval, op, columns in rows:
        for column in columns:
            conn.execute(
                sqlfiles.query(
                    QUERIES, "carry_unchanged", table=table, column=sql.Identifier(column), key_match=key_match
                ),
                {"lsn": lsn, "seqval": seqval, "op": op},
            )
