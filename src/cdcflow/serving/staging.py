"""Staging writes: COPY into ``stg_cdc_*`` and the watermark, in one serving transaction.

:class:`StagingWriter` is the sink a source streams into. Lines are buffered per
capture and written with COPY in chunks of about ``chunk_bytes``, so a source
transaction of any size is staged with bounded memory, all inside one open serving
transaction that commits together with the new watermarks (invariant 2). Nothing is
visible, and nothing is confirmed to the source, before that commit.

A batch that outgrows one chunk (``chunk_bytes``) is written by a background thread on
the same connection while the source keeps decoding, so the serving database's COPY work
overlaps with ours; the queue between them is bounded, and so is memory. Small batches are
written at commit, in the caller's thread, with no thread at all.

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
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import sql

from cdcflow import db, sqlfiles
from cdcflow.sources.base import META_COLUMNS, TableSpec

log = logging.getLogger(__name__)
Q = "serving_runtime.sql"
DEFAULT_CHUNK_BYTES = 512 << 10
QUEUE_CHUNKS = 8  # at most this many chunks wait for the writer thread


@dataclass
class _Pending:
    lines: list[bytes]
    size: int = 0


class StagingWriter:
    """Sink for one batch. Use once: add lines, then :meth:`commit` or :meth:`rollback`."""

    def __init__(
        self,
        conn: psycopg.Connection,
        specs: dict[str, TableSpec],
        source_name: str,
        *,
        dedupe: bool = False,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        self.conn = conn
        self.specs = specs
        self.source_name = source_name
        self.dedupe = dedupe
        self._pending: dict[str, _Pending] = {}
        self._size = 0
        self._unchanged: dict[str, list[tuple[int, int, int, tuple[str, ...]]]] = {}
        self.rows_written: dict[str, int] = {}
        self._copy_sql: dict[str, sql.Composed] = {}
        self._temp_made: set[str] = set()
        self.chunk_bytes = chunk_bytes
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    # -- ChangeSink -------------------------------------------------------------

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

    def add_unchanged(self, capture: str, line: bytes, columns: tuple[str, ...]) -> None:
        """Remember a row whose TOAST columns were not resent (staged NULL for now)."""
        lsn, seqval, op = line.split(b"\t", 3)[:3]
        self._unchanged.setdefault(capture, []).append((int(lsn), int(seqval), int(op), columns))

    # -- writing ----------------------------------------------------------------

    def _target(self, capture: str) -> sql.Composed:
        spec = self.specs[capture]
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in (*META_COLUMNS, *spec.column_names))
        if self.dedupe:
            return sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier("tmp_" + spec.staging_table), cols)
        return sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(spec.staging_table), cols)

    # -- the COPY work, in the background for big batches --------------------------

    def _send(self, capture: str, p: _Pending) -> None:
        """Hand a full chunk to the writer thread (started on first use)."""
        self._raise_background_error()
        if self._thread is None:
            self._queue = queue.Queue(maxsize=QUEUE_CHUNKS)
            self._thread = threading.Thread(target=self._writer, name="staging-copy", daemon=True)
            self._thread.start()
        assert self._queue is not None
        self._queue.put((capture, b"".join(p.lines), len(p.lines)))  # blocks when the writer is behind
        self._size -= p.size
        p.lines = []
        p.size = 0

    def _writer(self) -> None:
        assert self._queue is not None
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is None:
                    self._copy(*item)
            except BaseException as exc:  # surfaced in the caller's thread
                self._error = exc
            finally:
                self._queue.task_done()

    def _raise_background_error(self) -> None:
        if self._error is not None:
            exc, self._error = self._error, None
            raise exc

    def _stop_writer(self) -> None:
        if self._thread is not None:
            assert self._queue is not None
            self._queue.put(None)
            self._thread.join()
            self._thread = None
            self._queue = None

    def _copy(self, capture: str, data: bytes, rows: int) -> None:
        spec = self.specs[capture]
        if self.dedupe and capture not in self._temp_made:
            self.conn.execute(
                sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS").format(
                    sql.Identifier("tmp_" + spec.staging_table), sql.Identifier(spec.staging_table)
                )
            )
            self._temp_made.add(capture)
        stmt = self._copy_sql.get(capture)
        if stmt is None:
            stmt = self._copy_sql[capture] = self._target(capture)
        with self.conn.cursor() as cur:
            with cur.copy(stmt) as copy:
                copy.write(data)
        if not self.dedupe:
            self.rows_written[capture] = self.rows_written.get(capture, 0) + rows

    def flush(self) -> None:
        """COPY everything buffered and wait for the writer thread (the transaction stays open)."""
        if self._thread is not None:
            for capture, p in self._pending.items():
                if p.lines:
                    self._send(capture, p)
            self._stop_writer()
            self._raise_background_error()
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
            table = sql.Identifier(spec.staging_table)
            key_match = sql.SQL(" AND ").join(
                sql.SQL("prev.{k} = cur.{k}").format(k=sql.Identifier(k)) for k in spec.key_columns
            )
            for lsn, seqval, op, columns in rows:
                for column in columns:
                    self.conn.execute(
                        sqlfiles.query(
                            Q, "carry_unchanged", table=table, column=sql.Identifier(column), key_match=key_match
                        ),
                        {"lsn": lsn, "seqval": seqval, "op": op},
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
    ) -> None:
        """Flush, advance the watermark of ``captures`` to ``watermark``, commit: one transaction.

        ``before_commit`` runs last inside the transaction (the lease fence)."""
        self.flush()
        self.conn.execute(
            sqlfiles.query(Q, "advance_watermarks"),
            {
                "source": self.source_name,
                "lsn": watermark,
                "commit_time": last_commit_time,
                "captures": captures,
                "rows": [self.rows_written.get(c, 0) for c in captures],
            },
        )
        if notify and any(self.rows_written.values()):
            self.conn.execute(sqlfiles.query(Q, "notify_staged"), {"source": self.source_name})
        if before_commit is not None:
            before_commit(self.conn)
        self.conn.commit()

    def rollback(self) -> None:
        try:
            self._stop_writer()
        finally:
            self._error = None
        db.safe_rollback(self.conn)  # a lost connection was rolled back by the server
        self._pending.clear()
        self._unchanged.clear()
        self._size = 0
