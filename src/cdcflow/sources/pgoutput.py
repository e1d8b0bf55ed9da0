"""Decoder for PostgreSQL's ``pgoutput`` logical replication protocol (version 1).

It turns the binary messages of one replication stream into staging rows in COPY text
format: ``lsn, seqval, op, commit_time, <table columns>``. A change's position is the
commit LSN of its transaction (``Begin.final_lsn``) and its ordinal inside it.
pgoutput sends values in their text output format, which is also COPY's input format,
so a value only needs escaping when it holds a backslash, tab, CR or LF.

Message layouts: https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import struct
from dataclasses import dataclass, field

from cdcflow.sources.base import (
    META_COLUMNS,
    OP_DELETE,
    OP_INSERT,
    OP_UPDATE_AFTER,
    OP_UPDATE_BEFORE,
    TableSpec,
    copy_escape_bytes,
    dropped_column_message,
    no_key_message,
    retyped_column_message,
)

try:  # the C build of the hot path (setup.py); optional: the Python code below does the same
    from cdcflow._pgoutput_c import copy_line as _c_copy_line
    from cdcflow._pgoutput_c import copy_row_binary as _c_copy_row_binary
except ImportError:  # pragma: no cover - depends on the install
    _c_copy_line = None
    _c_copy_row_binary = None

log = logging.getLogger(__name__)

#: True when the C hot path is installed (see setup.py); status and the benchmarks say so.
ACCELERATED = _c_copy_line is not None

PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")
_I32 = struct.Struct(">i")
_I16 = struct.Struct(">h")
_NEEDS_ESCAPE_RE = re.compile(rb"[\\\t\n\r]")

NULL = b"\\N"
NULL_FIELD = b"\xff\xff\xff\xff"  # a NULL in COPY's binary format (length -1)
_TIME_FIELD = struct.pack(">i", 8)


def numeric_field(value: int) -> bytes:
    """A non-negative integer as a COPY binary field of type numeric (scale 0):
    int32 length, then ndigits, weight, sign, dscale and base-10000 digits, all int16."""
    digits: list[int] = []
    while value:
        value, d = divmod(value, 10000)
        digits.append(d)
    digits.reverse()
    n = len(digits)
    return struct.pack(f">ihhhh{n}h", 8 + 2 * n, n, n - 1 if n else 0, 0, 0, *digits)


def _op_field(op: int) -> bytes:
    return struct.pack(">ih", 2, op)


OP_FIELDS = {op: _op_field(op) for op in (OP_DELETE, OP_INSERT, OP_UPDATE_BEFORE, OP_UPDATE_AFTER)}


class Unchanged:
    """Marker for a TOASTed value the server did not send because it did not change."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = Unchanged()


@dataclass
class Relation:
    """What a Relation message told us, mapped onto a captured table."""

    relid: int
    spec: TableSpec | None  # None: not captured (ignored)
    index: list[int] | None = None  # message column index for each staging column; None = same order
    key_index: list[int] = field(default_factory=list)  # staging indices of key columns
    capture: str = ""
    fields: int = 0  # fields of a staged row: the position columns and the table's


def _read_cstring(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.index(0, pos)
    return buf[pos:end].decode(), end + 1


def decode_tuple(buf: bytes, pos: int) -> tuple[list[bytes | None | Unchanged], int]:
    """TupleData at ``pos`` -> (values, next position). Text values stay raw bytes."""
    (ncols,) = _I16.unpack_from(buf, pos)
    pos += 2
    values: list[bytes | None | Unchanged] = []
    append = values.append
    unpack_i32 = _I32.unpack_from
    for _ in range(ncols):
        kind = buf[pos]
        pos += 1
        if kind == 116 or kind == 98:  # 't' text / 'b' binary
            (length,) = unpack_i32(buf, pos)
            pos += 4
            append(buf[pos : pos + length])
            pos += length
        elif kind == 110:  # 'n' null
            append(None)
        elif kind == 117:  # 'u' unchanged TOAST datum
            append(UNCHANGED)
        else:
            raise ValueError(f"unknown tuple column kind {kind!r} at byte {pos - 1}")
    return values, pos


class PgOutputDecoder:
    """Stateful decoder for one replication stream.

    ``emit(capture, line, unchanged_columns)`` receives each staging row; unchanged
    columns (TOAST) are staged as NULL and named so the writer can carry the previous
    value forward.
    """

    def __init__(
        self,
        specs: dict[tuple[str, str], TableSpec],
        skip_captures: set[str] | None = None,
        *,
        accelerated: bool = True,
        binary: bool = False,
        floors: dict[str, int] | None = None,
    ) -> None:
        self.specs = specs
        #: Per capture, the commit LSN up to which its changes are staged already (a capture
        #: ahead of the stream's start, such as one just backfilled): those are dropped.
        self.floors = floors if floors is not None else {}
        #: The stream is in pgoutput's binary mode: rows come out in COPY's binary format.
        self.binary = binary
        #: The C row builder, or None for the pure-Python path (``accelerated=False``, or not built).
        self._fast = _c_copy_line if accelerated else None
        self._fast_binary = _c_copy_row_binary if accelerated else None
        self.skip_captures = skip_captures if skip_captures is not None else set()
        self.relations: dict[int, Relation] = {}
        self.in_txn = False
        self.skipping = False  # replayed transaction already staged
        self.commit_lsn = 0
        self.end_lsn = 0
        self.commit_time: dt.datetime | None = None
        self._prefix = b""
        self._ct = b""
        self._ct_tab = b""
        self._lsn_field = b""
        self._ct_field = b""
        self.seq = 0
        self.rows = 0
        #: Staged rows waiting to be handed to the sink (see drain), per capture.
        self.buffers: dict[str, list[bytes]] = {}
        self.buffered_bytes = 0
        #: Rows whose TOASTed columns were not resent: (capture, (lsn, seqval, op), column names).
        self.unchanged: list[tuple[str, tuple[int, int, int], tuple[str, ...]]] = []
        self.truncated: dict[str, int] = {}  # capture -> lsn of a TRUNCATE seen
        self.paused: dict[str, str] = {}  # capture -> why it stopped (schema drift)
        self.warned: set[tuple[str, str]] = set()
        self.skip_before = 0  # transactions whose commit LSN is below this were staged already

    def drain(self, sink) -> dict[str, int]:
        """Hand the buffered rows to ``sink`` (``add_lines``/``add_unchanged``); rows per capture."""
        counts = {}
        for capture, lines in self.buffers.items():
            if lines:
                counts[capture] = len(lines)
                sink.add_lines(capture, lines, sum(map(len, lines)))
        self.buffers = {}
        self.buffered_bytes = 0
        for capture, position, columns in self.unchanged:
            sink.add_unchanged(capture, position, columns)
        self.unchanged = []
        return counts

    # -- dispatch ---------------------------------------------------------------

    def feed(self, buf: bytes) -> int:
        """Decode one message; returns its type byte."""
        kind = buf[0]
        if kind == 73:  # 'I'
            self._insert(buf)
        elif kind == 85:  # 'U'
            self._update(buf)
        elif kind == 68:  # 'D'
            self._delete(buf)
        elif kind == 66:  # 'B'
            self._begin(buf)
        elif kind == 67:  # 'C'
            self._commit(buf)
        elif kind == 82:  # 'R'
            self._relation(buf)
        elif kind == 84:  # 'T'
            self._truncate(buf)
        # 'Y' type, 'O' origin, 'M' message: nothing to stage
        return kind

    # -- transaction framing ----------------------------------------------------

    def _begin(self, buf: bytes) -> None:
        (final_lsn,) = _U64.unpack_from(buf, 1)
        (ts,) = _I64.unpack_from(buf, 9)
        self.in_txn = True
        self.commit_lsn = final_lsn
        self.skipping = final_lsn < self.skip_before
        self.seq = 0
        self.commit_time = PG_EPOCH + dt.timedelta(microseconds=ts)
        self._ct = self.commit_time.isoformat().encode()
        self._ct_tab = self._ct + b"\t"
        self._prefix = b"%d\t" % final_lsn
        if self.binary:
            self._lsn_field = numeric_field(final_lsn)
            self._ct_field = _TIME_FIELD + _I64.pack(ts)

    def _commit(self, buf: bytes) -> None:
        (self.end_lsn,) = _U64.unpack_from(buf, 10)
        self.in_txn = False

    # -- relations --------------------------------------------------------------

    def _relation(self, buf: bytes) -> None:
        (relid,) = _I32.unpack_from(buf, 1)
        pos = 5
        nspname, pos = _read_cstring(buf, pos)
        relname, pos = _read_cstring(buf, pos)
        replident = chr(buf[pos])
        pos += 1
        (ncols,) = _I16.unpack_from(buf, pos)
        pos += 2
        names: list[str] = []
        oids: list[int] = []
        key_flagged = False
        for _ in range(ncols):
            key_flagged = key_flagged or bool(buf[pos] & 1)
            pos += 1
            name, pos = _read_cstring(buf, pos)
            names.append(name)
            (oid,) = _I32.unpack_from(buf, pos)
            oids.append(oid)
            pos += 8  # type oid, typmod
        spec = self.specs.get((nspname, relname))
        rel = Relation(relid=relid, spec=spec, capture=spec.capture if spec else "")
        self.relations[relid] = rel
        if spec is None:
            return
        problem = self._drift(spec, names, oids, replident, key_flagged)
        if problem is not None:
            self.pause(spec.capture, problem)
            return
        staged = list(spec.column_names)
        for col in names:
            if col not in staged and (spec.qualified, col) not in self.warned:
                self.warned.add((spec.qualified, col))
                log.warning(
                    "new column %s.%s in the source is not captured (staging keeps its columns; "
                    "re-bootstrap to capture it)",
                    spec.qualified,
                    col,
                )
        if names != staged:
            rel.index = [names.index(c) for c in staged]
        rel.key_index = [i for i, c in enumerate(spec.columns) if c.is_key]
        rel.fields = len(META_COLUMNS) + len(spec.columns)

    @staticmethod
    def _drift(spec: TableSpec, names: list[str], oids: list[int], replident: str, key_flagged: bool) -> str | None:
        """Why this Relation message no longer matches staging, or None."""
        for col in spec.columns:
            if col.name not in names:
                return dropped_column_message(spec, col.name)
            oid = oids[names.index(col.name)]
            if col.type_oid and oid != col.type_oid:
                return retyped_column_message(spec, col.name, col.type_sql, f"type oid {oid}")
        if replident == "n" or (replident == "d" and not key_flagged):
            return no_key_message(spec)
        return None

    def pause(self, capture: str, reason: str) -> None:
        """Stop staging a capture from here on (its watermark stays), and say why once."""
        if capture not in self.paused:
            log.error("%s", reason)
        self.paused.setdefault(capture, reason)
        self.skip_captures.add(capture)

    def _rel(self, buf: bytes) -> Relation | None:
        (relid,) = _I32.unpack_from(buf, 1)
        rel = self.relations.get(relid)
        if rel is None:
            raise ValueError(f"change for relation {relid} before its Relation message")
        if rel.spec is None or self.skipping or rel.capture in self.skip_captures:
            return None
        if self.floors and self.commit_lsn <= self.floors.get(rel.capture, 0):
            return None
        return rel

    # -- changes ----------------------------------------------------------------

    def _out(self, capture: str, line: bytes) -> None:
        buf = self.buffers.get(capture)
        if buf is None:
            buf = self.buffers[capture] = []
        buf.append(line)
        self.buffered_bytes += len(line)
        self.rows += 1

    def _stage(self, rel: Relation, op: int, values: list[bytes | None | Unchanged]) -> None:
        """General path: any column order, NULLs, unchanged TOAST values, escaping."""
        spec = rel.spec
        assert spec is not None
        if rel.index is not None:
            values = [values[i] for i in rel.index]
        self.seq += 1
        binary = self.binary
        null = NULL_FIELD if binary else NULL
        unchanged: tuple[str, ...] = ()
        parts: list[bytes] = []
        for i, v in enumerate(values):
            if v is None or v is UNCHANGED:
                parts.append(null)
                if v is UNCHANGED:
                    unchanged += (spec.columns[i].name,)
            elif binary:  # the type's send format: a COPY binary field is length + bytes
                assert isinstance(v, bytes)
                parts.append(_I32.pack(len(v)) + v)
            else:
                assert isinstance(v, bytes)
                parts.append(v if _NEEDS_ESCAPE_RE.search(v) is None else copy_escape_bytes(v))
        if binary:
            head = (_I16.pack(rel.fields), self._lsn_field, numeric_field(self.seq))
            line = b"".join((*head, OP_FIELDS[op], self._ct_field, *parts))
        else:
            line = b"%s%d\t%d\t%s\t%s\n" % (self._prefix, self.seq, op, self._ct, b"\t".join(parts))
        self._out(rel.capture, line)
        if unchanged:
            self.unchanged.append((rel.capture, (self.commit_lsn, self.seq, op), unchanged))

    def _insert(self, buf: bytes) -> None:
        rel = self._rel(buf)
        if rel is None:
            return
        if self._fast_single(rel, buf, OP_INSERT):
            return
        if not self.binary and rel.index is None and self._fast is None and _NEEDS_ESCAPE_RE.search(buf, 8) is None:
            # Python hot path: columns in staging order, nothing to escape anywhere in the message.
            (ncols,) = _I16.unpack_from(buf, 6)
            pos = 8
            parts: list[bytes] = []
            append = parts.append
            unpack_i32 = _I32.unpack_from
            for _ in range(ncols):
                kind = buf[pos]
                if kind == 116:  # 't'
                    start = pos + 5
                    pos = start + unpack_i32(buf, pos + 1)[0]
                    append(buf[start:pos])
                elif kind == 110:  # 'n'
                    append(NULL)
                    pos += 1
                else:
                    break  # unchanged or binary: general path
            else:
                self.seq += 1
                self._out(rel.capture, b"%s%d\t2\t%s\t%s\n" % (self._prefix, self.seq, self._ct, b"\t".join(parts)))
                return
        values, _ = decode_tuple(buf, 6)  # after relid and 'N'
        self._stage(rel, OP_INSERT, values)

    def _fast_single(self, rel: Relation, buf: bytes, op: int) -> bool:
        """A message with one tuple at byte 6 staged by the C path; False: use the general one."""
        if rel.index is not None:
            return False
        if self.binary:
            if self._fast_binary is None:
                return False
            line = self._fast_binary(
                buf,
                6,
                rel.fields,
                self._lsn_field,
                self.seq + 1,
                OP_FIELDS[op],
                self._ct_field,
            )
        elif self._fast is None:
            return False
        else:
            line = self._fast(buf, 6, self._prefix, self.seq + 1, op, self._ct_tab)
        if line is None:
            return False
        self.seq += 1
        self._out(rel.capture, line)
        return True

    def _update(self, buf: bytes) -> None:
        rel = self._rel(buf)
        if rel is None:
            return
        pos = 5
        old: list[bytes | None | Unchanged] | None = None
        old_kind = buf[pos]
        if old_kind == 78 and self._fast_single(rel, buf, OP_UPDATE_AFTER):  # 'N': no old image
            return
        if old_kind in (75, 79):  # 'K' key / 'O' old row
            old, pos = decode_tuple(buf, pos + 1)
        new, _ = decode_tuple(buf, pos + 1)  # skip 'N'
        if old is not None:
            if rel.index is not None:
                old_m = [old[i] for i in rel.index]
                new_m = [new[i] for i in rel.index]
            else:
                old_m, new_m = old, new
            key_changed = any(old_m[i] != new_m[i] for i in rel.key_index)
            if key_changed:
                # The row moved to another key: the old key is gone.
                self._stage(rel, OP_DELETE, old)
            elif old_kind == 79:
                # REPLICA IDENTITY FULL: an unchanged TOAST value can come from the old image.
                new = [o if n is UNCHANGED and o is not UNCHANGED else n for n, o in zip(new, old, strict=True)]
                self._stage(rel, OP_UPDATE_BEFORE, old)
        self._stage(rel, OP_UPDATE_AFTER, new)

    def _delete(self, buf: bytes) -> None:
        rel = self._rel(buf)
        if rel is None:
            return
        if self._fast_single(rel, buf, OP_DELETE):
            return
        values, _ = decode_tuple(buf, 6)  # after relid and 'K'/'O'
        self._stage(rel, OP_DELETE, values)

    def _truncate(self, buf: bytes) -> None:
        (nrels,) = _I32.unpack_from(buf, 1)
        pos = 6
        for _ in range(nrels):
            (relid,) = _I32.unpack_from(buf, pos)
            pos += 4
            rel = self.relations.get(relid)
            if (
                rel is not None
                and rel.spec is not None
                and not self.skipping
                and self.commit_lsn > self.floors.get(rel.spec.capture, 0)
            ):
                self.truncated.setdefault(rel.spec.capture, self.commit_lsn)
                self.skip_captures.add(rel.spec.capture)
