"""PostgreSQL source: logical decoding with ``pgoutput`` over the streaming protocol.

One replication slot and one publication carry every captured table. The stream stays
open across batches (:mod:`cdcflow.sources.pg_replication`, on libpq). A batch ends at
a transaction boundary once ``max_rows`` are read or the stream has nothing more
buffered. The slot is confirmed (flush feedback) only by :meth:`PostgresSource.confirm`,
which the ingestion worker calls after the serving commit, so the slot never runs ahead
of staging: no other position is ever sent as the flush position.

Positions: a change's ``lsn`` is its transaction's commit LSN. A watermark ``W`` means
every change with ``lsn <= W`` is staged; the stream resumes at ``W + 1``, which is also
what we confirm to the slot. After a transaction that ends at ``E`` (the end of its
commit record) ``W = E - 1``: the next commit record may start exactly at ``E``. Idle,
``W = sent - 1`` for the server's decoded position ``sent``. The initial snapshot at
consistent point ``cp`` is staged at ``lsn = cp - 1`` with ``W = cp - 1``.

The publication and the slot (state, creation, dropping, the gap check) are in
:mod:`cdcflow.sources.pg_slot`; snapshots and resync in :mod:`cdcflow.snapshot`.
"""

from __future__ import annotations

import logging
import select
import time
from collections.abc import Iterable

import psycopg

from cdcflow import db, privileges, sqlfiles
from cdcflow import snapshot as pg_snapshot
from cdcflow.config import Settings
from cdcflow.errors import SourceConfigError, TransientError
from cdcflow.positions import format_pg_lsn, parse_pg_lsn
from cdcflow.sources.base import BatchResult, ChangeSink, Column, SourceFacts, Stream, TableSpec
from cdcflow.sources.pg_replication import ReplicationConnection
from cdcflow.sources.pg_slot import SlotManagement, SlotState
from cdcflow.sources.pgoutput import ACCELERATED, PgOutputDecoder

__all__ = ["PostgresSource", "SlotState"]

log = logging.getLogger(__name__)
QUERIES = "source_postgres.sql"

#: How often an idle stream asks the server for a keepalive (which carries its position).
KEEPALIVE_REQUEST_SECONDS = 0.5
#: An idle stream moves the watermark to the server's position at most this often. Without
#: the pause, a serving database on the source's server spins: each idle advance commits,
#: its WAL moves the server's position, and the next read returns at once to advance again.
IDLE_ADVANCE_SECONDS = 0.2
#: A stream that answers none of our keepalive requests for this long is presumed dead
#: (a silent network partition) and reconnected.
STREAM_SILENCE_SECONDS = 30.0
#: Types with OIDs below this are built in: the same OID in every database.
FIRST_NORMAL_OID = 16384
#: Decoded rows are handed to the sink in chunks of about this size (bounded memory).
HANDOFF_BYTES = 256 << 10


#: While the serving side is busy, how often a batch that found the stream empty looks again.
BACKLOG_POLL_SECONDS = 0.002


def _never() -> bool:
    return False


#: pg_type.typtype, as the start-up line about a source-only type names it.
_KINDS = {"e": "enum", "d": "domain", "c": "composite type", "r": "range type", "m": "multirange type", "b": "type"}


#: (source, table, column) whose staged type was logged: said once per process.
_SAID: set[tuple[str, str, str]] = set()


def _split(qualified: str) -> tuple[str, str]:
    schema, _, table = qualified.partition(".")
    return schema, table


class PostgresSource(SlotManagement):
    """The PostgreSQL implementation of :class:`cdcflow.sources.base.Source`.

    ``binary=False`` keeps the stream in pgoutput's text mode even where binary transfer
    is possible (a benchmark compares the two); by default it is binary where safe (see
    :meth:`binary_transfer`).
    """

    engine = "postgres"

    def __init__(self, dsn: str, tables: Iterable[str], slot: str, publication: str, *, binary: bool = True) -> None:
        self.dsn = dsn
        self.tables = tuple(tables)
        self.slot = slot
        self.publication = publication
        self._conn: psycopg.Connection | None = None
        self._repl: ReplicationConnection | None = None
        self._decoder: PgOutputDecoder | None = None
        self._specs: list[TableSpec] | None = None
        self._sink: ChangeSink | None = None
        self.skip_captures: set[str] = set()
        #: Captures whose changes are staged up to a commit LSN past the stream's start.
        self.floors: dict[str, int] = {}
        self._last_keepalive_request = 0.0
        self._last_idle_advance = 0.0
        self._stream_pos = -1
        self._heard = 0.0
        #: The serving server's ``server_version_num``, told by the ingestion worker: binary
        #: transfer is used only between servers of the same major version.
        self.serving_version: int | None = None
        self._binary = False  # the open stream is in pgoutput's binary mode
        self._allow_binary = binary

    @classmethod
    def from_settings(cls, settings: Settings, *, binary: bool = True) -> PostgresSource:
        source_dsn, _ = settings.require_dsns()
        return cls(source_dsn, settings.capture_tables, settings.slot, settings.publication, binary=binary)

    # -- preparing --------------------------------------------------------------

    def check(self) -> None:
        """wal_level is logical and the server is new enough; else one line on how to fix."""
        row = self._one("server_settings")
        assert row is not None
        wal_level, version_num, dbname = row
        if version_num < 140000:
            raise SourceConfigError(f"source PostgreSQL is version {version_num // 10000}: cdcflow needs 14 or newer")
        if wal_level != "logical":
            raise SourceConfigError(
                f"source database {dbname!r} has wal_level={wal_level}; logical decoding needs "
                "wal_level=logical: run ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL"
            )

    def describe_tables(self) -> list[TableSpec]:
        if self._specs is not None:
            return self._specs
        specs = []
        for qualified in self.tables:
            schema, table = _split(qualified)
            try:
                rows = (
                    self.conn()
                    .execute(sqlfiles.query(QUERIES, "table_columns"), {"schema": schema, "table": table})
                    .fetchall()
                )
            except psycopg.Error as exc:
                self.close()
                raise db.wrap_db_error("reading the source catalog", exc) from None
            if not rows:
                raise SourceConfigError(
                    f"captured table {qualified} does not exist in the source database: create it, "
                    "or remove it from CAPTURE_TABLES"
                )
            for name, staged, _key, _ident, _oid, source_type, kind in rows:
                if staged != source_type and (self.dsn, qualified, name) not in _SAID:
                    _SAID.add((self.dsn, qualified, name))
                    what = _KINDS.get(kind, "type")
                    log.info(
                        "%s.%s: %s %s exists only in the source; staged as %s, values as the source prints them",
                        qualified,
                        name,
                        what,
                        source_type,
                        staged,
                    )
            specs.append(TableSpec(schema, table, tuple(Column(r[0], r[1], bool(r[2]), int(r[4])) for r in rows)))
        names = [s.name for s in specs]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise SourceConfigError(
                f"CAPTURE_TABLES has two tables named {sorted(dupes)[0]!r} in different schemas; "
                "staging names are stg_cdc_<table>, so capture only one of them"
            )
        self._specs = specs
        return specs

    def use_specs(self, specs: list[TableSpec]) -> None:
        """Stage these (reconciled) column lists instead of the source catalog's."""
        self._specs = list(specs)
        self.close_stream()

    def privilege_problems(self, settings: Settings) -> list[str]:
        try:
            return privileges.source_problems(self.conn(), settings)
        except psycopg.Error as exc:
            raise db.wrap_db_error("checking the source role's privileges", exc) from None

    def prepare(self, *, demo: bool = False) -> None:
        """The demo's schema and rows (``demo``), then the publication of the captured tables."""
        if demo:
            conn = self.conn()
            for name, text in sqlfiles.scripts("source"):
                if not name.startswith("30_"):  # the publication: ensure_publication makes it
                    log.info("source: running %s", name)
                    conn.execute(text)  # type: ignore[arg-type]  # packaged script
        self.ensure_publication()

    # -- snapshots --------------------------------------------------------------

    def initial_snapshot(self, serving: psycopg.Connection, settings: Settings) -> None:
        """Every captured table at a new slot's consistent point, when nothing is staged yet
        (:mod:`cdcflow.snapshot`); tables added later are copied by the backfill worker."""
        pg_snapshot.initial_snapshots(self, serving, settings)

    def resync(self, serving: psycopg.Connection, settings: Settings, captures: list[str] | None) -> int:
        """The captures share one slot: alone when the slot is sound and another capture
        streams, else every capture from a new slot (:func:`cdcflow.snapshot.resync_captures`)."""
        self.ensure_publication()
        return pg_snapshot.resync_captures(self, serving, settings, captures)

    def forget(self) -> str | None:
        if self.slot_state() is None:
            return None
        self.drop_slot()
        return f"dropped slot {self.slot}"

    # -- positions and status ---------------------------------------------------

    def current_lsn(self) -> int:
        row = self._one("current_lsn")
        assert row is not None
        return parse_pg_lsn(row[0])

    @staticmethod
    def format_position(value: int | None) -> str:
        """``16/B374D848``, as PostgreSQL prints an LSN; ``-`` for none."""
        return "-" if value is None else format_pg_lsn(value)

    def status_facts(self) -> SourceFacts:
        """The replication slot: its positions, WAL status and the WAL it holds."""
        st = self.slot_state()
        if st is None:
            return SourceFacts(problems=[f"replication slot {self.slot} does not exist"])
        slot: dict[str, object] = {
            "name": self.slot,
            "confirmed_flush": self.format_position(st.confirmed_flush),
            "restart_lsn": self.format_position(st.restart_lsn),
            "wal_status": st.wal_status,
            "active": st.active_pid is not None,
            "retained_wal_bytes": self.retained_wal_bytes(),
        }
        return SourceFacts(slot=slot)

    def bounds(self) -> tuple[int, int]:
        state = self.slot_state()
        low = state.confirmed_flush if state and state.confirmed_flush is not None else 0
        return low, self.current_lsn()

    def estimate_rows(self, spec: TableSpec) -> int | None:
        """The planner's estimate of the table's rows, or None when it has none."""
        row = self._one("estimate_rows", {"schema": spec.schema, "table": spec.name})
        return int(row[0]) if row and row[0] is not None and row[0] > 0 else None

    # -- streaming --------------------------------------------------------------

    def streams(self) -> list[Stream]:
        """One slot carries every captured table: one stream, and backfills beside it."""
        return [Stream(self, None, backfills=True)]

    def use_serving_version(self, version: int) -> None:
        self.serving_version = version

    def binary_transfer(self) -> tuple[bool, str]:
        """Whether to stream in pgoutput's binary mode, and why (or why not).

        Binary rows go into staging with COPY's binary format: no value is printed as text
        by the walsender and parsed back by the serving database. That needs the C decoder,
        servers of the same major version (binary formats are the types' own), and captured
        columns of built-in types with binary send and receive functions only (a custom
        type's OID differs between databases). Otherwise the stream stays in text mode.
        """
        if not ACCELERATED:
            return False, "text transfer: the C decoder is not built"
        if not self._allow_binary:
            return False, "text transfer: binary transfer turned off"
        row = self._one("server_settings")
        assert row is not None
        version = int(row[1])
        if self.serving_version is None or self.serving_version // 10000 != version // 10000:
            return False, "text transfer: source and serving are not the same PostgreSQL major version"
        oids = sorted({c.type_oid for s in self.describe_tables() for c in s.columns})
        if not oids or oids[0] <= 0 or oids[-1] >= FIRST_NORMAL_OID:
            return False, "text transfer: a captured column has a type that is not built in"
        row = self._one("types_without_binary_io", {"oids": oids})
        if row is None or row[0]:
            return False, "text transfer: a captured column's type has no binary send/receive function"
        return True, "binary transfer"

    def _start_stream(self, after_lsn: int) -> None:
        self.verify_slot(after_lsn)
        binary, why = self.binary_transfer()
        options = {"proto_version": "1", "publication_names": self.publication}
        if binary:
            options["binary"] = "true"
        conn = self._replication_connect()
        try:
            conn.start(self.slot, after_lsn + 1, options)
        except psycopg.Error as exc:
            conn.close()
            text = str(exc)
            if "is active for PID" in text:
                # A previous run of ours died and its walsender has not noticed yet.
                self._one("terminate_slot_reader", {"slot": self.slot})
                raise TransientError(f"replication slot {self.slot} was still held by an old connection") from None
            if "publication" in text and "does not exist" in text:
                raise SourceConfigError(
                    f"publication {self.publication} does not exist in the source: run 'cdcflow bootstrap'"
                ) from None
            raise db.wrap_db_error("starting replication", exc) from None
        self._repl = conn
        self._heard = time.monotonic()
        specs = {(s.schema, s.name): s for s in self.describe_tables()}
        self._decoder = PgOutputDecoder(specs, self.skip_captures, binary=binary, floors=self.floors)
        self._binary = binary
        self._stream_pos = after_lsn
        log.info(
            "streaming slot %s from %s (decoder: %s; %s)",
            self.slot,
            format_pg_lsn(after_lsn),
            "C hot path" if ACCELERATED else "pure Python, install with a C compiler for faster catch-up",
            why,
        )

    def read_batch(self, after_lsn: int, max_rows: int, sink: ChangeSink, wait_seconds: float) -> BatchResult:
        """Stream whole transactions after ``after_lsn`` into ``sink``.

        Returns when ``max_rows`` are read (at the next commit), when the stream has
        nothing more buffered after a commit, or after ``wait_seconds`` idle. When idle,
        the result's ``end_lsn`` advances to the server's position so the slot can free
        WAL even if no captured table changes (invariant 7).
        """
        repl, dec = self._begin_batch(after_lsn, sink)
        end_lsn, txns = after_lsn, 0
        last_commit_time = first_commit_time = None
        deadline = time.monotonic() + wait_seconds
        read, feed = repl.read, dec.feed  # the hot loop: no attribute look-ups
        backlogged = getattr(sink, "backlogged", _never)
        try:
            while True:
                msg = read()
                if msg is not None:
                    self._heard = time.monotonic()
                    kind = feed(msg)
                    if dec.buffered_bytes >= HANDOFF_BYTES:
                        self._drain()  # a big transaction streams on into the sink's COPY chunks
                    if kind == 67 and not dec.skipping:  # 'C'
                        if txns == 0:
                            first_commit_time = dec.commit_time
                        txns += 1
                        end_lsn = max(end_lsn, dec.end_lsn - 1)
                        last_commit_time = dec.commit_time
                        if dec.rows >= max_rows:
                            return self._result(end_lsn, txns, last_commit_time, more=True, first=first_commit_time)
                    continue
                # Nothing buffered.
                if dec.in_txn:
                    timeout = 1.0
                elif dec.rows > 0 or txns > 0:
                    if not (dec.rows < max_rows and backlogged()):
                        return self._result(end_lsn, txns, last_commit_time, more=False, first=first_commit_time)
                    # The serving side is still busy with earlier batches: a commit now would
                    # only queue. Read on (a bigger batch, fewer commits) until it is free,
                    # more data comes, or the batch is full.
                    select.select([repl], [], [], BACKLOG_POLL_SECONDS)
                    continue
                else:
                    idle = self._idle(repl, end_lsn, deadline)
                    if isinstance(idle, BatchResult):
                        return idle
                    timeout = idle
                self._wait_for_data(repl, timeout, dec.in_txn)
        except psycopg.Error as exc:
            self.close_stream()
            raise db.wrap_db_error("reading the replication stream", exc) from None
        except Exception:
            self.close_stream()
            raise
        finally:
            self._sink = None

    def _begin_batch(self, after_lsn: int, sink: ChangeSink) -> tuple[ReplicationConnection, PgOutputDecoder]:
        """The stream open at ``after_lsn`` and its decoder reset for a new batch into ``sink``."""
        if self._repl is not None and after_lsn != self._stream_pos:
            self.close_stream()  # the watermark moved under us (reset, resync): start over there
        if self._repl is None:
            self._start_stream(after_lsn)
        assert self._repl is not None and self._decoder is not None
        dec = self._decoder
        sink.copy_format = "binary" if self._binary else "text"
        dec.skip_before = after_lsn + 1  # a replayed transaction is dropped, not staged twice
        dec.rows = 0
        dec.truncated = {}
        dec.paused = {}
        self._counts: dict[str, int] = {}
        self._sink = sink
        return self._repl, dec

    def _idle(self, repl: ReplicationConnection, end_lsn: int, deadline: float) -> BatchResult | float:
        """Between transactions with nothing read yet: an idle advance or the end of the wait
        (a result), else how long to wait for the stream."""
        now = time.monotonic()
        advance_due = repl.wal_end - 1 > end_lsn
        if advance_due and (now - self._last_idle_advance >= IDLE_ADVANCE_SECONDS or now >= deadline):
            # Idle advance: the server has decoded up to wal_end and sent us every
            # transaction whose commit record starts before it.
            self._last_idle_advance = now
            return self._result(repl.wal_end - 1, 0, None, more=False)
        if now >= deadline:
            return self._result(end_lsn, 0, None, more=False)
        if now - self._last_keepalive_request >= KEEPALIVE_REQUEST_SECONDS:
            repl.send_status(reply=True)  # the keepalive that answers carries the server's position
            self._last_keepalive_request = now
        timeout = min(deadline - now, KEEPALIVE_REQUEST_SECONDS)
        if advance_due:  # an idle advance is due when the pause ends
            timeout = min(timeout, IDLE_ADVANCE_SECONDS - (now - self._last_idle_advance))
        return timeout

    def _wait_for_data(self, repl: ReplicationConnection, timeout: float, in_txn: bool) -> None:
        """Wait up to ``timeout`` for the stream; a stream silent for too long is dead."""
        if select.select([repl], [], [], max(0.0, timeout))[0]:
            self._heard = time.monotonic()  # data or a keepalive arrived
        elif not in_txn and time.monotonic() - self._heard > STREAM_SILENCE_SECONDS:
            raise TransientError(
                f"the replication stream of slot {self.slot} has been silent for "
                f"{STREAM_SILENCE_SECONDS:.0f}s despite keepalive requests: reconnecting"
            )

    def _drain(self) -> None:
        assert self._decoder is not None and self._sink is not None
        for capture, n in self._decoder.drain(self._sink).items():
            self._counts[capture] = self._counts.get(capture, 0) + n

    def _result(self, end_lsn: int, txns: int, last_commit_time, more: bool, first=None) -> BatchResult:
        dec = self._decoder
        assert dec is not None
        self._drain()
        self._stream_pos = end_lsn
        result = BatchResult(
            end_lsn=end_lsn,
            rows=dec.rows,
            transactions=txns,
            rows_by_capture=dict(self._counts),
            last_commit_time=last_commit_time,
            first_commit_time=first,
            more_pending=more,
            truncated=dict(dec.truncated),
            paused=dict(dec.paused),
        )
        return result

    def confirm(self, lsn: int) -> None:
        """Tell the slot everything up to ``lsn`` is safely staged (after the serving commit)."""
        if self._repl is None:
            return
        try:
            self._repl.confirm(lsn + 1)
        except psycopg.Error as exc:
            self.close_stream()
            raise db.wrap_db_error("confirming the slot position", exc) from None

    def close_stream(self) -> None:
        db.close_quietly(self._repl)
        self._repl = None
        self._decoder = None

    def close(self) -> None:
        self.close_stream()
        db.close_quietly(self._conn)
        self._conn = None
