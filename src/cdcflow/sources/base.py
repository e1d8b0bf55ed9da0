"""The protocol every source engine implements whole, and the table metadata it shares.

Code outside :mod:`cdcflow.sources` calls a :class:`Source` and never asks which engine
it has: preparing the source, its streams, snapshots and resync, the facts status shows
and how positions print are each the engine's own method.

A source yields *whole transactions* of row changes after a position, as COPY-ready
lines handed to a :class:`ChangeSink`; it never ends a batch inside a transaction. The
ingestion worker commits the sink (rows + watermarks in one serving transaction) and
only then calls :meth:`Source.confirm`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import psycopg

    from cdcflow.config import Settings

# Operation codes (SQL Server's __$operation codes, plus 5 for a snapshot row).
OP_DELETE = 1
OP_INSERT = 2
OP_UPDATE_BEFORE = 3
OP_UPDATE_AFTER = 4
OP_SNAPSHOT = 5

# Staging columns cdcflow adds before the table's own columns.
META_COLUMNS = ("__lsn", "__seqval", "__op", "__commit_time")

_SAFE_TYPE_RE = re.compile(r"^[A-Za-z0-9_ (),.\[\]\"]+$")


@dataclass(frozen=True)
class Column:
    name: str
    type_sql: str  # a PostgreSQL type as format_type prints it
    is_key: bool = False
    type_oid: int = 0  # the source's type OID (PostgreSQL); 0 when unknown

    def __post_init__(self) -> None:
        if not _SAFE_TYPE_RE.match(self.type_sql):
            raise ValueError(f"column {self.name}: unexpected type text {self.type_sql!r}")


@dataclass(frozen=True)
class TableSpec:
    """A captured table: where it is in the source, and its staging table."""

    schema: str
    name: str
    columns: tuple[Column, ...]

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def capture(self) -> str:
        """Capture instance name, SQL Server style: ``<schema>_<table>``."""
        return f"{self.schema}_{self.name}"

    @property
    def staging_table(self) -> str:
        return f"stg_cdc_{self.name}"

    @property
    def key_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.is_key)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


@dataclass
class BatchResult:
    """What one read produced."""

    end_lsn: int  # the new watermark: every change with lsn <= end_lsn was handed over
    rows: int = 0
    transactions: int = 0
    rows_by_capture: dict[str, int] = field(default_factory=dict)
    last_commit_time: dt.datetime | None = None
    first_commit_time: dt.datetime | None = None  # source commit time of the batch's oldest change
    more_pending: bool = False  # the source has more right now: go again at once
    truncated: dict[str, int] = field(default_factory=dict)  # capture -> LSN of a TRUNCATE
    paused: dict[str, str] = field(default_factory=dict)  # capture -> schema drift that stopped it


class ChangeSink(Protocol):
    #: "text" (the default) or "binary": the format of the rows a source adds (it sets it first).
    copy_format: str

    def add_line(self, capture: str, line: bytes) -> None:
        """One staged row in COPY text format: meta columns then the table's, tab-separated."""

    def add_lines(self, capture: str, lines: list[bytes], nbytes: int) -> None:
        """Many staged rows (``nbytes`` in all) at once."""

    def add_unchanged(self, capture: str, position: tuple[int, int, int], columns: tuple[str, ...]) -> None:
        """The row already added at (lsn, seqval, op) whose ``columns`` (TOAST) must carry the previous value."""


@dataclass(frozen=True)
class Stream:
    """One stream of a source's changes, read by one ingestion worker."""

    source: Source  # the reader of this stream
    capture: str | None = None  # the one capture it carries; None: every capture of the source
    backfills: bool = False  # a table can be copied beside the stream while it runs (added or resynced alone)

    def lease_resource(self, source_name: str) -> str:
        """The lease that makes one worker this stream's only reader."""
        return f"ingest:{source_name}" + (f":{self.capture}" if self.capture else "")


@dataclass
class SourceFacts:
    """What ``cdcflow status`` shows about the source itself, beyond its position."""

    slot: dict[str, object] | None = None  # the replication slot (None: the engine has none, or it is missing)
    problems: list[str] = field(default_factory=list)


class Source(Protocol):
    #: The engine's name, as control rows and status show it (never branched on outside sources/).
    engine: str
    skip_captures: set[str]  # captures the stream must not stage (paused)
    floors: dict[str, int]  # capture -> commit LSN it is already staged up to, past the stream's start

    # -- preparing -----------------------------------------------------------------

    def conn(self) -> Any:
        """The source's regular connection (opened on first use)."""
        ...

    def check(self) -> None:
        """The source is configured for capture (wal_level, CDC enabled); else one line on how to fix."""
        ...

    def privilege_problems(self, settings: Settings) -> list[str]:
        """One line per privilege the source role lacks (empty: none, or not checked)."""
        ...

    def prepare(self, *, demo: bool) -> None:
        """Idempotent: make the source ready to capture (demo schema, publication or CDC enablement)."""
        ...

    def describe_tables(self) -> list[TableSpec]: ...

    def use_specs(self, specs: list[TableSpec]) -> None:
        """Stage these (reconciled with staging) column lists instead of the source catalog's."""
        ...

    # -- streams -------------------------------------------------------------------

    def streams(self) -> list[Stream]:
        """The streams this source's changes are read in, each by its own ingestion worker."""
        ...

    def use_serving_version(self, version: int) -> None:
        """The serving server's ``server_version_num``: a stream may choose its format by it."""
        ...

    def read_batch(self, after_lsn: int, max_rows: int, sink: ChangeSink, wait_seconds: float) -> BatchResult:
        """Hand whole transactions committed after ``after_lsn`` to ``sink``."""
        ...

    def confirm(self, lsn: int) -> None:
        """The serving database committed everything up to ``lsn``: the source may free it."""
        ...

    def close_stream(self) -> None:
        """Drop the open stream (if any): the next read starts a new one at its position."""
        ...

    # -- snapshots -----------------------------------------------------------------

    def initial_snapshot(self, serving: psycopg.Connection, settings: Settings) -> None:
        """Stage the rows that existed before capture began, for the captures that staged nothing yet."""
        ...

    def resync(self, serving: psycopg.Connection, settings: Settings, captures: list[str] | None) -> int:
        """Repair captures (default: those not streaming) with a fresh snapshot; the position streaming goes on from."""
        ...

    def forget(self) -> str | None:
        """Drop what the source keeps for cdcflow's stream, for a reset; what was dropped (None: nothing)."""
        ...

    # -- positions and status ------------------------------------------------------

    def bounds(self) -> tuple[int, int]:
        """(oldest position the source can still serve, newest position it has)."""
        ...

    def current_lsn(self) -> int:
        """The source's newest position."""
        ...

    def sample_position(self) -> tuple[int, int | None]:
        """(newest position, bytes of log the source keeps for cdcflow's stream, None where the
        engine has no such figure), in one cheap round trip: what the metrics sampler reads."""
        ...

    def status_facts(self) -> SourceFacts: ...

    def format_position(self, value: int | None) -> str:
        """A position as the engine's users read it; ``-`` for none."""
        ...

    def close(self) -> None: ...


# -- schema drift messages (one wording wherever it is detected) -------------------


def dropped_column_message(spec: TableSpec, column: str) -> str:
    return (
        f"captured column {spec.qualified}.{column} was dropped or renamed in the source; capture "
        f"{spec.capture} is paused (staged rows are kept): restore the column, or re-bootstrap and run "
        "'cdcflow resync'"
    )


def retyped_column_message(spec: TableSpec, column: str, was: str, now: str) -> str:
    return (
        f"captured column {spec.qualified}.{column} changed type ({was} -> {now}); capture {spec.capture} is "
        f"paused (staged rows are kept): alter {spec.staging_table}.{column} to the new type, then run "
        "'cdcflow resync'"
    )


def no_key_message(spec: TableSpec) -> str:
    return (
        f"captured table {spec.qualified} has no primary key or replica identity index; capture {spec.capture} "
        "is paused: add a primary key (cdcflow keeps the latest state of each row by key), then run 'cdcflow resync'"
    )


# -- COPY text format --------------------------------------------------------------

_COPY_ESCAPES = {ord("\\"): "\\\\", ord("\t"): "\\t", ord("\n"): "\\n", ord("\r"): "\\r"}
_COPY_ESCAPE_RE = re.compile(rb"[\\\t\n\r]")
_COPY_ESCAPE_BYTES = {b"\\": b"\\\\", b"\t": b"\\t", b"\n": b"\\n", b"\r": b"\\r"}


def copy_escape_bytes(value: bytes) -> bytes:
    """Escape a text-format value for COPY FROM STDIN (text format)."""
    if _COPY_ESCAPE_RE.search(value) is None:
        return value
    return _COPY_ESCAPE_RE.sub(lambda m: _COPY_ESCAPE_BYTES[m.group(0)], value)


def copy_text(value: object) -> str:
    """A Python value as a COPY text field (``\\N`` for None)."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, bytes):
        return "\\\\x" + value.hex()
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return str(value).translate(_COPY_ESCAPES)


def copy_line(lsn: int, seqval: int, op: int, commit_time: dt.datetime | None, values: Sequence[object]) -> bytes:
    """A full staging row as a COPY line, for sources that produce Python values."""
    parts = [str(lsn), str(seqval), str(op), copy_text(commit_time)]
    parts.extend(copy_text(v) for v in values)
    return ("\t".join(parts) + "\n").encode()
