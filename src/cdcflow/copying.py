"""Copying a captured table into staging in chunks of heap blocks, each committed with its
record, so that a copy that stops resumes from the chunks it has done.

A chunk is a range of the table's heap blocks (``ctid >= '(first,0)' AND ctid <
'(last,0)'``: a TID range scan, PostgreSQL 14 and later), read in an exported snapshot whose
slot's consistent point is ``cp``, and staged as op 5 at ``P = cp - 1``. Each chunk commits
in its own serving transaction together with its row in ``ctl_backfill_chunks``; a crash
loses at most the chunks in flight. A copy that resumes takes a new snapshot, at a new
position, and reads only the block ranges that no recorded chunk covers. Several
connections can read chunks of one snapshot side by side (``SNAPSHOT_WORKERS``).

Why chunks at different positions add up to the table: the capture streams throughout
(every change from before the first chunk's position on is staged), and staging is read as
the latest version of each key. A row copied at ``P`` supersedes what was streamed for its
key before ``P``; every change after ``P`` is streamed. A row that an update moved from a
block not yet copied into one already copied moved after that copy's position, so its new
version was streamed; unless that update left a TOAST value unchanged, which the source
does not resend: such rows are copied again by key from a new snapshot before the copy
completes (:func:`fetch_keys`). Once every block range is done, staging at any position at
or after the last chunk's equals the table there, which is why the capture stays
incomplete until the whole source has streamed past that position (``backfill.complete``,
which also drops what streamed below the first chunk's position).

Before its first chunk, when the staging table is empty and nothing streams into it (an
initial snapshot), a copy drops the table's two indexes, to build them once at the end in
one sorted pass each.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

import psycopg
from psycopg import sql

from cdcflow import db, sqlfiles
from cdcflow.errors import TransientError
from cdcflow.serving import schema
from cdcflow.sources.base import META_COLUMNS, OP_SNAPSHOT, TableSpec

log = logging.getLogger(__name__)
QUERIES = "serving_runtime.sql"
#: How often a copy in flight records its progress (and logs a line).
PROGRESS_SECONDS = 2.0
#: A chunk's seqvals are its first block times this, plus the row's number in the chunk.
SEQVAL_STRIDE = 1 << 32
#: Blocks per chunk when the table has no statistics to turn rows into blocks.
DEFAULT_CHUNK_BLOCKS = 8192
#: Keys per COPY when rows are copied again by key.
FETCH_KEYS = 1000


class CopyAborted(TransientError):
    """The capture left BACKFILL while its table was copied (a reset, a full resync)."""


@dataclass(frozen=True)
class CopyOptions:
    chunk_rows: int = 1_000_000  # about this many rows per chunk (SNAPSHOT_CHUNK_ROWS)
    workers: int = 1  # connections reading chunks side by side (SNAPSHOT_WORKERS)

    @classmethod
    def of(cls, settings) -> CopyOptions:
        return cls(chunk_rows=settings.snapshot_chunk_rows, workers=settings.snapshot_workers)


@dataclass(frozen=True)
class Chunk:
    first: int  # first heap block
    last: int | None  # the block after the chunk's last; None: to the end of the table


def plan(done: list[tuple[int, int | None]], blocks: int, size: int) -> list[Chunk]:
    """The chunks of a table of ``blocks`` heap blocks that no ``done`` range covers, at most
    ``size`` blocks each. The one that reaches the table's end is open-ended, unless a done
    range already is."""
    size = max(1, size)
    todo: list[Chunk] = []
    pos, open_ended = 0, False

    def split(a: int, b: int) -> None:
        while a < b:
            todo.append(Chunk(a, min(a + size, b)))
            a += size

    for first, last in sorted(done, key=lambda r: r[0]):
        split(pos, min(first, blocks))
        if last is None:
            open_ended = True
            pos = max(pos, first)
            break
        pos = max(pos, last)
    if not open_ended:
        split(pos, blocks)
        if todo and todo[-1].last is not None and todo[-1].last >= blocks:
            todo[-1] = Chunk(todo[-1].first, None)
        elif not todo:
            todo.append(Chunk(pos, None))  # the table's end is not done: read from there on
    return todo


@dataclass(frozen=True)
class Keys:
    """Rows picked by key rather than by block: each value a tuple of the key columns' text
    forms (the source reads them as its own types). ``base``: their seqvals start above it."""

    values: tuple[tuple[str, ...], ...]
    base: int = 0


def chunk_select(spec: TableSpec, position: int, chunk: Chunk | Keys | None, *, binary: bool) -> sql.Composed:
    """``COPY (SELECT position, seqval, 5, NULL, columns ... ) TO STDOUT``: the staging rows
    of a chunk (``None``: the whole table; ``Keys``: those rows) built by the source."""
    where: sql.Composable = sql.SQL("")
    base = 0
    if isinstance(chunk, Keys):
        base = chunk.base
        # A row comparison with untyped literals: each takes its column's type, and the
        # primary key's index finds the rows.
        row = sql.SQL("({})").format(sql.SQL(", ").join(sql.Identifier(k) for k in spec.key_columns))
        values = sql.SQL(", ").join(
            sql.SQL("({})").format(sql.SQL(", ").join(sql.Literal(v) for v in key)) for key in chunk.values
        )
        where = sql.SQL(" WHERE {} IN ({})").format(row, values)
    elif chunk is not None:
        base = chunk.first * SEQVAL_STRIDE
        bounds = [sql.SQL("ctid >= {}::tid").format(sql.Literal(f"({chunk.first},0)"))]
        if chunk.last is not None:
            bounds.append(sql.SQL("ctid < {}::tid").format(sql.Literal(f"({chunk.last},0)")))
        where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(bounds)
    return sql.SQL(
        "COPY (SELECT CAST({lsn} AS numeric(25,0)), CAST({base} AS numeric(25,0)) + row_number() OVER (), "
        "CAST({op} AS smallint), CAST(NULL AS timestamptz), {cols} FROM {table}{where}) TO STDOUT{fmt}"
    ).format(
        lsn=sql.Literal(position),
        base=sql.Literal(base),
        op=sql.Literal(OP_SNAPSHOT),
        cols=sql.SQL(", ").join(sql.Identifier(c) for c in spec.column_names),
        table=sql.Identifier(spec.schema, spec.name),
        where=where,
        fmt=sql.SQL(" (FORMAT binary)") if binary else sql.SQL(""),
    )


def copy_rows(
    reader: psycopg.Connection,
    serving: psycopg.Connection,
    spec: TableSpec,
    position: int,
    chunk: Chunk | Keys | None = None,
    *,
    binary: bool = False,
    on_rows=None,
) -> int:
    """Stage the rows of ``chunk`` of ``spec``'s table (default: all of it) that ``reader``'s
    snapshot shows, as op 5 at ``position``, inside ``serving``'s open transaction. Returns
    the rows staged.

    Each COPY block goes unchanged from the source into ``COPY stg_cdc_... FROM STDIN``: no
    row is parsed or rebuilt here, memory is one block. ``binary``: both COPYs in binary
    format (see ``PostgresSource.binary_transfer``). ``on_rows`` hears every 10,000 rows."""
    target = sql.SQL("COPY {} ({}) FROM STDIN{}").format(
        sql.Identifier(spec.staging_table),
        sql.SQL(", ").join(sql.Identifier(c) for c in (*META_COLUMNS, *spec.column_names)),
        sql.SQL(" (FORMAT binary)") if binary else sql.SQL(""),
    )
    select = chunk_select(spec, position, chunk, binary=binary)
    n = 0
    with reader.cursor() as rcur, rcur.copy(select) as out, serving.cursor() as wcur, wcur.copy(target) as into:
        for block in out:  # COPY TO sends one message per row
            into.write(block)
            n += 1
            if on_rows is not None and n % 10_000 == 0:
                on_rows(10_000)
    told = n - n % 10_000
    if binary:
        n -= 1  # the header comes with the first row, the trailer alone in the last message
    if on_rows is not None:
        on_rows(n - told)
    return n


class Progress:
    """Rows copied so far, in ``ctl_backfills`` (for status) and as a log line with a bar,
    the rate and the time left. Thread-safe: the copy's workers all report to one."""

    def __init__(self, serving_dsn: str, source_name: str, spec: TableSpec, lsn: int, estimate: int | None) -> None:
        self.conn = db.connect(serving_dsn, "serving", autocommit=True)
        self.source_name, self.spec, self.lsn, self.estimate = source_name, spec, lsn, estimate
        self.started = self.last = time.monotonic()
        self.rows = self.before = 0
        self.lock = threading.Lock()

    def resume(self, rows: int) -> None:
        """Rows copied by earlier attempts (their chunks are done)."""
        self.rows = self.before = rows
        self.write()

    def write(self) -> None:
        try:
            self.conn.execute(
                sqlfiles.query(QUERIES, "backfill_progress"),
                {
                    "source": self.source_name,
                    "capture": self.spec.capture,
                    "lsn": self.lsn,
                    "rows": self.rows,
                    "estimate": self.estimate,
                    "resumed": self.before,
                },
            )
        except psycopg.Error as exc:  # progress is for people; the copy goes on
            log.debug("copy progress not recorded: %s", db.describe_error(exc))

    def __call__(self, rows: int) -> None:
        with self.lock:
            self.rows += rows
            now = time.monotonic()
            if now - self.last < PROGRESS_SECONDS:
                return
            self.last = now
            log.info("%s", self.line(now))
            self.write()

    def line(self, now: float) -> str:
        rate = (self.rows - self.before) / max(now - self.started, 1e-6)
        if self.estimate and self.estimate > 0:
            share = min(self.rows / self.estimate, 1.0)
            bar = "#" * int(share * 20)
            left = max(self.estimate - self.rows, 0) / max(rate, 1.0)
            return (
                f"copying {self.spec.qualified}: [{bar:<20}] {share:4.0%} {self.rows:,} of about "
                f"{self.estimate:,} rows, {rate:,.0f} rows/s, about {left:,.0f} s left"
            )
        return f"copying {self.spec.qualified}: {self.rows:,} rows, {rate:,.0f} rows/s"

    def close(self) -> None:
        db.close_quietly(self.conn)


def _chunk_records(serving: psycopg.Connection, source_name: str, capture: str) -> list[tuple[int, int | None, int]]:
    rows = serving.execute(sqlfiles.query(QUERIES, "read_backfill_chunks"), {"source": source_name, "capture": capture})
    return [(int(a), None if b is None else int(b), int(n)) for a, b, n in rows]


def _before_first_chunk(serving: psycopg.Connection, spec: TableSpec) -> None:
    """No chunk is done yet, and nothing streams into the staging table meanwhile: if it is
    empty, its indexes go (built once at the end, in one sorted pass each)."""
    with db.rolled_back_on_error(serving, f"copying {spec.qualified}"):
        schema.drop_indexes_if_empty(serving, spec)
        serving.commit()


def copy_table(
    source,
    serving_dsn: str,
    source_name: str,
    spec: TableSpec,
    snapshot_name: str,
    position: int,
    *,
    drop_indexes: bool,
    binary: bool,
    options: CopyOptions,
    stop: threading.Event | None = None,
) -> int:
    """Copy the chunks of ``spec``'s table not done yet, from the exported snapshot
    ``snapshot_name`` at ``position`` (see the module's docstring). ``drop_indexes``: nothing
    streams into the staging table meanwhile. Returns all the rows the capture's chunks hold,
    those of earlier attempts included."""
    with db.connect(serving_dsn, "serving") as serving:
        done = _chunk_records(serving, source_name, spec.capture)
        serving.rollback()
        if not done and drop_indexes:
            _before_first_chunk(serving, spec)
    reader: psycopg.Connection | None = _reader(source.dsn, snapshot_name)
    progress = None
    try:
        assert reader is not None
        row = reader.execute(
            sqlfiles.query("source_postgres.sql", "table_blocks"), {"schema": spec.schema, "table": spec.name}
        ).fetchone()
        blocks, per_block = row if row else (0, 0)
        todo: list[Chunk | None]
        if reader.info.server_version >= 140000:
            size = int(options.chunk_rows / per_block) if per_block else DEFAULT_CHUNK_BLOCKS
            todo = list(plan([(a, b) for a, b, _ in done if a >= 0], int(blocks), size))
        else:  # no TID range scans before 14: one pass, not resumable
            todo = [] if done else [None]
        progress = Progress(serving_dsn, source_name, spec, position, source.estimate_rows(spec))
        progress.resume(sum(n for _, _, n in done))
        if done:
            log.info("copying %s: resuming, %d chunks done, %d to go", spec.qualified, len(done), len(todo))
        else:
            log.info("copying %s: %d blocks in %d chunks", spec.qualified, blocks, len(todo))
        lanes = _Lanes(source.dsn, serving_dsn, source_name, spec, snapshot_name, position, binary, progress, stop)
        lanes.run(reader, todo, options.workers)
        reader = None  # the first lane closed it
    finally:
        db.close_quietly(reader)
        if progress is not None:
            progress.close()
    with db.connect(serving_dsn, "serving") as serving:
        total = sum(n for _, _, n in _chunk_records(serving, source_name, spec.capture))
    log.info("copied %s: %d rows", spec.qualified, total)
    return total


def fetch_keys(
    source, serving: psycopg.Connection, source_name: str, spec: TableSpec, keys: list[tuple[str, ...]], *, binary: bool
) -> int:
    """Stage the rows of these keys of ``spec``'s table as op 5 from a new snapshot, at its
    position less one, in one serving transaction with a record among the capture's chunks
    (a negative block range, which no plan reads), so that the copy's completion waits for
    the stream to pass that position. A key the table no longer has stages nothing. Returns
    the rows staged."""
    cp, snapshot_name, repl = source.create_slot_with_snapshot(temporary=True)
    position = cp - 1
    try:
        reader = _reader(source.dsn, snapshot_name)
        try:
            with db.rolled_back_on_error(serving, f"copying rows of {spec.qualified} again"):
                lowest = min((a for a, _, _ in _chunk_records(serving, source_name, spec.capture)), default=0)
                record = min(lowest, 0) - 1
                rows = 0
                for i in range(0, len(keys), FETCH_KEYS):
                    batch = Keys(tuple(keys[i : i + FETCH_KEYS]), base=i * SEQVAL_STRIDE)
                    rows += copy_rows(reader, serving, spec, position, batch, binary=binary)
                _record_chunk(serving, source_name, spec, record, record, position, rows)
                serving.commit()
        finally:
            db.close_quietly(reader)
    finally:
        repl.close()  # the temporary slot goes with it
    return rows


def _reader(dsn: str, snapshot_name: str) -> psycopg.Connection:
    reader = db.connect(dsn, "source")
    try:
        reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        reader.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_name)))
    except psycopg.Error as exc:
        db.close_quietly(reader)
        raise db.wrap_db_error("importing the snapshot", exc) from None
    return reader


class _Lanes:
    """Chunks copied on several connection pairs at once; the first error stops them all and
    is raised (chunks committed stay done)."""

    def __init__(self, source_dsn, serving_dsn, source_name, spec, snapshot_name, position, binary, progress, stop):
        self.source_dsn, self.serving_dsn, self.snapshot_name = source_dsn, serving_dsn, snapshot_name
        self.source_name, self.spec, self.position, self.binary = source_name, spec, position, binary
        self.progress, self.stop = progress, stop
        self.work: queue.SimpleQueue = queue.SimpleQueue()
        self.failed: list[BaseException] = []
        self.halt = threading.Event()

    def run(self, reader: psycopg.Connection, todo: list, workers: int) -> None:
        for chunk in todo:
            self.work.put(chunk)
        n = max(1, min(workers, len(todo)))
        threads = [threading.Thread(target=self.lane, name=f"copy-{self.spec.capture}-{i}") for i in range(1, n)]
        for t in threads:
            t.start()
        self.lane(reader)
        for t in threads:
            t.join()
        if self.failed:
            raise self.failed[0]
        if not self.work.empty():
            raise CopyAborted(f"copy of {self.spec.qualified} stopped; it resumes from the chunks done")

    def stopped(self) -> bool:
        return self.halt.is_set() or (self.stop is not None and self.stop.is_set())

    def lane(self, reader: psycopg.Connection | None = None) -> None:
        serving = None
        try:
            if reader is None:
                reader = _reader(self.source_dsn, self.snapshot_name)
            serving = db.connect(self.serving_dsn, "serving")
            while not self.stopped():
                try:
                    chunk = self.work.get_nowait()
                except queue.Empty:
                    return
                self.copy_chunk(reader, serving, chunk)
        except BaseException as exc:  # noqa: BLE001 - raised by run()
            self.failed.append(exc)
            self.halt.set()
        finally:
            db.close_quietly(serving)
            db.close_quietly(reader)

    def copy_chunk(self, reader: psycopg.Connection, serving: psycopg.Connection, chunk: Chunk | None) -> None:
        """One chunk's rows, its record and the capture's row count, in one serving transaction."""
        spec, source_name = self.spec, self.source_name
        with db.rolled_back_on_error(serving, f"copying {spec.qualified}"):
            rows = copy_rows(reader, serving, spec, self.position, chunk, binary=self.binary, on_rows=self.progress)
            first, last = (0, None) if chunk is None else (chunk.first, chunk.last)
            _record_chunk(serving, source_name, spec, first, last, self.position, rows)
            serving.commit()


def _record_chunk(
    serving: psycopg.Connection, source_name: str, spec: TableSpec, first: int, last: int | None, lsn: int, rows: int
) -> None:
    """In the transaction that staged them: a chunk's record, and its rows in the capture's count."""
    serving.execute(
        sqlfiles.query(QUERIES, "backfill_record_chunk"),
        {"source": source_name, "capture": spec.capture, "first": first, "last": last, "lsn": lsn, "rows": rows},
    )
    # Last, and briefly: the capture's row lock (ingestion's batches wait for it).
    counted = serving.execute(
        sqlfiles.query(QUERIES, "backfill_count_rows"), {"source": source_name, "capture": spec.capture, "rows": rows}
    ).rowcount
    if counted != 1:
        raise CopyAborted(f"capture {spec.capture} left BACKFILL while its table was copied")


def use_binary(source, serving: psycopg.Connection) -> bool:
    """Whether a copy may be in binary format (the stream's rule), said once in the log."""
    told, source.serving_version = source.serving_version, serving.info.server_version
    try:
        binary, why = source.binary_transfer()
    finally:
        source.serving_version = told  # the stream's own choice stays the ingestion worker's
    log.info("snapshot copy: %s", why)
    return binary


def stage_vanished(
    serving: psycopg.Connection,
    spec: TableSpec,
    watermark: int,
    base: int,
    history: int | None = None,
    *,
    snapshot_from: int | None = None,
) -> int:
    """Stage a delete at ``watermark`` for every key whose latest state staged at or before
    ``history`` (default: before ``watermark``) is live but that no snapshot row staged at or
    after ``snapshot_from`` (default: ``watermark``) has. Seqvals from ``base`` + 1. Returns
    how many."""
    keys = [sql.Identifier(k) for k in spec.key_columns]
    cur = serving.execute(
        sqlfiles.query(
            QUERIES,
            "stage_vanished_deletes",
            table=sql.Identifier(spec.staging_table),
            keys=sql.SQL(", ").join(keys),
            k_keys=sql.SQL(", ").join(sql.SQL("k.{}").format(k) for k in keys),
            match=schema.keys_match(spec.key_columns, "s", "k"),
        ),
        {
            "lsn": watermark,
            "base": base,
            "history": watermark if history is None else history,
            "snapshot_from": watermark if snapshot_from is None else snapshot_from,
        },
    )
    if cur.rowcount:
        log.info("resync: %s had %d keys deleted during the gap; staged their deletes", spec.qualified, cur.rowcount)
    return max(cur.rowcount, 0)
