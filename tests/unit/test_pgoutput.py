"""The pgoutput decoder on hand-built protocol messages (layouts from the PostgreSQL docs)."""

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdcflow.sources import pgoutput
from cdcflow.sources.base import Column, TableSpec
from cdcflow.sources.pgoutput import PgOutputDecoder, decode_tuple

SPEC = TableSpec(
    "public",
    "orders",
    (Column("order_id", "bigint", True), Column("status", "text"), Column("note", "text")),
)


def cstr(s: str) -> bytes:
    return s.encode() + b"\0"


def relation(relid=16384, cols=("order_id", "status", "note"), ns="public", name="orders") -> bytes:
    out = b"R" + struct.pack(">i", relid) + cstr(ns) + cstr(name) + b"d" + struct.pack(">h", len(cols))
    for i, c in enumerate(cols):
        out += bytes([1 if i == 0 else 0]) + cstr(c) + struct.pack(">ii", 25, -1)
    return out


def tup(*values, kind: bytes = b"t") -> bytes:
    """A TupleData: text values (or raw bytes with ``kind=b"b"``), None ('n'), "<u>" (unchanged)."""
    out = struct.pack(">h", len(values))
    for v in values:
        if v is None:
            out += b"n"
        elif v == "<u>":
            out += b"u"
        else:
            b = v.encode() if isinstance(v, str) else v
            out += kind + struct.pack(">i", len(b)) + b
    return out


def begin(final_lsn: int, ts: int = 0, xid: int = 1) -> bytes:
    return b"B" + struct.pack(">Qqi", final_lsn, ts, xid)


def commit(commit_lsn: int, end_lsn: int, ts: int = 0) -> bytes:
    return b"C" + b"\0" + struct.pack(">QQq", commit_lsn, end_lsn, ts)


def insert(*values, relid=16384) -> bytes:
    return b"I" + struct.pack(">i", relid) + b"N" + tup(*values)


def update(new, old=None, old_kind=b"K", relid=16384) -> bytes:
    out = b"U" + struct.pack(">i", relid)
    if old is not None:
        out += old_kind + tup(*old)
    return out + b"N" + tup(*new)


def delete(*values, relid=16384) -> bytes:
    return b"D" + struct.pack(">i", relid) + b"K" + tup(*values)


class Collect:
    """A sink that records what the decoder hands over (drained on each look)."""

    def __init__(self):
        self._rows = []
        self._unchanged = {}
        self.dec = None

    def add_lines(self, capture, lines, nbytes):
        assert nbytes == sum(map(len, lines))
        self._rows.extend((capture, line) for line in lines)

    def add_unchanged(self, capture, position, columns):
        self._unchanged[position] = columns

    @property
    def rows(self):
        self.dec.drain(self)
        out = []
        for c, line in self._rows:
            fields = line.decode().rstrip("\n").split("\t")
            position = (int(fields[0]), int(fields[1]), int(fields[2]))
            out.append((c, fields, self._unchanged.get(position, ())))
        return out


_ACCELERATED = [True]


@pytest.fixture(autouse=True, params=["c", "python"])
def implementation(request):
    """Every test runs against both the C hot path and the pure-Python decoder."""
    if request.param == "c" and not pgoutput.ACCELERATED:
        pytest.skip("the C decoder is not built here (no compiler at install time)")
    _ACCELERATED[0] = request.param == "c"
    return request.param


def decoder(**kw):
    out = Collect()
    kw.setdefault("accelerated", _ACCELERATED[0])
    dec = PgOutputDecoder({("public", "orders"): SPEC}, **kw)
    out.dec = dec
    return dec, out


def test_transaction_rows_get_commit_lsn_and_ordinals():
    dec, out = decoder()
    for m in (
        relation(),
        begin(1000, ts=1_000_000),
        insert("1", "NEW", None),
        insert("2", "NEW", "x"),
        commit(1000, 1050),
    ):
        dec.feed(m)
    assert [r[1][:3] for r in out.rows] == [["1000", "1", "2"], ["1000", "2", "2"]]
    assert out.rows[0][1][3] == "2000-01-01T00:00:01+00:00"
    assert out.rows[0][1][4:] == ["1", "NEW", "\\N"]
    assert dec.end_lsn == 1050 and not dec.in_txn


def test_update_delete_and_key_change():
    dec, out = decoder()
    dec.feed(relation())
    dec.feed(begin(2000))
    dec.feed(update(("1", "PAID", "n")))
    dec.feed(update(("9", "PAID", "n"), old=("1", None, None)))  # key moved 1 -> 9
    dec.feed(delete("9", None, None))
    dec.feed(commit(2000, 2100))
    ops = [(r[1][1], r[1][2], r[1][4]) for r in out.rows]
    assert ops == [("1", "4", "1"), ("2", "1", "1"), ("3", "4", "9"), ("4", "1", "9")]


def test_full_replica_identity_emits_update_before_and_fills_unchanged_toast():
    dec, out = decoder()
    dec.feed(relation())
    dec.feed(begin(3000))
    dec.feed(update(("1", "PAID", "<u>"), old=("1", "NEW", "big text"), old_kind=b"O"))
    dec.feed(commit(3000, 3100))
    assert [r[1][2] for r in out.rows] == ["3", "4"]
    assert out.rows[1][1][4:] == ["1", "PAID", "big text"]
    assert out.rows[1][2] == ()


def test_unchanged_toast_without_old_image_is_flagged_not_silently_null():
    dec, out = decoder()
    dec.feed(relation())
    dec.feed(begin(3000))
    dec.feed(update(("1", "PAID", "<u>")))
    dec.feed(commit(3000, 3100))
    assert out.rows[0][2] == ("note",)


def test_values_are_escaped_for_copy():
    dec, out = decoder()
    dec.feed(relation())
    dec.feed(begin(10))
    dec.feed(insert("1", "a\tb\nc\\d\re", None))
    dec.feed(commit(10, 20))
    line = out.rows[0][1]
    assert line[5] == "a\\tb\\nc\\\\d\\re"


def test_replayed_transactions_are_skipped():
    dec, out = decoder()
    dec.skip_before = 1001
    dec.feed(relation())
    for lsn in (1000, 1001):
        dec.feed(begin(lsn))
        dec.feed(insert(str(lsn), "x", None))
        dec.feed(commit(lsn, lsn + 10))
    assert [r[1][0] for r in out.rows] == ["1001"]


def test_uncaptured_relations_are_ignored():
    dec, out = decoder()
    dec.feed(relation(relid=1, name="other"))
    dec.feed(begin(10))
    dec.feed(insert("1", "x", None, relid=1))
    dec.feed(commit(10, 20))
    assert out.rows == []


def test_reordered_and_new_columns_map_by_name():
    dec, out = decoder()
    dec.feed(relation(cols=("note", "extra", "order_id", "status")))
    dec.feed(begin(10))
    dec.feed(insert("n", "e", "7", "s"))
    dec.feed(commit(10, 20))
    assert out.rows[0][1][4:] == ["7", "s", "n"]


def test_dropped_column_pauses_that_capture_only():
    dec, out = decoder()
    dec.feed(relation(cols=("order_id", "status")))
    assert "public.orders.note was dropped or renamed" in dec.paused["public_orders"]
    dec.feed(begin(10))
    dec.feed(insert("1", "x"))
    dec.feed(commit(10, 20))
    assert out.rows == []  # nothing staged for a paused capture


def test_retyped_column_pauses_capture():
    spec = TableSpec(
        "public",
        "orders",
        (
            Column("order_id", "bigint", True, 20),
            Column("status", "text", False, 25),
            Column("note", "text", False, 25),
        ),
    )
    dec = PgOutputDecoder({("public", "orders"): spec})
    msg = relation()  # every column announced with type oid 25 (text)
    dec.feed(msg)
    assert "public.orders.order_id changed type" in dec.paused["public_orders"]


def test_table_without_key_pauses_capture():
    dec, _ = decoder()
    msg = bytearray(relation())
    # Clear the key flag of the first column: flags byte follows the column count.
    header = 1 + 4 + len(b"public\0orders\0") + 1 + 2
    msg[header] = 0
    dec.feed(bytes(msg))
    assert "no primary key or replica identity" in dec.paused["public_orders"]


def test_truncate_marks_capture_and_skips_it():
    dec, out = decoder()
    dec.feed(relation())
    dec.feed(begin(10))
    dec.feed(b"T" + struct.pack(">ib", 1, 0) + struct.pack(">i", 16384))
    dec.feed(insert("1", "x", None))
    dec.feed(commit(10, 20))
    assert dec.truncated == {"public_orders": 10}
    assert out.rows == []


def test_decode_tuple_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown tuple column kind"):
        decode_tuple(struct.pack(">h", 1) + b"z", 0)


def test_c_decoder_is_built_where_ci_requires_it():
    """CI installs with a compiler: a build that silently fell back to Python fails here."""
    if os.environ.get("CDCFLOW_REQUIRE_C_DECODER") != "1":
        pytest.skip("CDCFLOW_REQUIRE_C_DECODER is not set (CI sets it)")
    assert pgoutput.ACCELERATED, "cdcflow._pgoutput_c was not built: check the install log for compiler errors"


_value = st.one_of(
    st.none(),
    st.just("<u>"),
    st.text(alphabet=st.sampled_from(list("ab\t\n\r\\ é0")), max_size=12),
)


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.tuples(st.sampled_from("IUD"), st.lists(_value, min_size=3, max_size=3)), max_size=8))
def test_c_and_python_paths_stage_identical_rows(rows):
    """The C row builder and the Python decoder produce the same bytes for any tuple:
    text with every character COPY escapes, NULLs, unchanged TOAST values (which take the
    general path in both), inserts, updates and deletes."""
    if not pgoutput.ACCELERATED:
        pytest.skip("the C decoder is not built here")
    outputs = []
    for accelerated in (True, False):
        dec, out = decoder(accelerated=accelerated)
        dec.feed(relation())
        dec.feed(begin(5000, ts=123_456_789))
        for kind, values in rows:
            values = ["1" if values[0] in (None, "<u>") else values[0], *values[1:]]  # a key is always sent
            msg = {"I": insert, "U": lambda *v: update(v), "D": delete}[kind](*values)
            dec.feed(msg)
        dec.feed(commit(5000, 5100))
        dec.drain(out)
        outputs.append((out._rows, out._unchanged))
    assert outputs[0] == outputs[1]


def test_c_path_declines_short_or_odd_tuples():
    """A tuple cut short, or with a kind it does not handle, goes to the Python path (None)."""
    if not pgoutput.ACCELERATED:
        pytest.skip("the C decoder is not built here")
    from cdcflow._pgoutput_c import copy_line

    good = tup("1", None, "x")
    assert copy_line(good, 0, b"7\t", 1, 2, b"T\t") == b"7\t1\t2\tT\t1\t\\N\tx\n"
    assert copy_line(good[:-1], 0, b"7\t", 1, 2, b"T\t") is None  # last value cut short
    assert copy_line(tup("1", "<u>", "x"), 0, b"", 1, 2, b"") is None  # unchanged TOAST
    binary = struct.pack(">h", 1) + b"b" + struct.pack(">i", 1) + b"\x01"
    assert copy_line(binary, 0, b"", 1, 2, b"") is None
    assert copy_line(b"", 0, b"", 1, 2, b"") is None


def btup(*values) -> bytes:
    """A binary-mode TupleData: raw bytes per value ('b'), None ('n'), "<u>" (unchanged)."""
    return tup(*values, kind=b"b")


def parse_binary_row(row: bytes) -> list:
    """One COPY binary tuple -> its fields (bytes, or None for NULL)."""
    (n,) = struct.unpack_from(">h", row, 0)
    pos, fields = 2, []
    for _ in range(n):
        (length,) = struct.unpack_from(">i", row, pos)
        pos += 4
        if length < 0:
            fields.append(None)
        else:
            fields.append(row[pos : pos + length])
            pos += length
    assert pos == len(row), "trailing bytes after the last field"
    return fields


def test_numeric_field_matches_postgres_numeric_send():
    """numeric_field(v) is what numeric_send produces for v (digits base 10000, weight,
    positive sign, scale 0), so COPY BINARY into numeric(25,0) reads v back."""
    from cdcflow.sources.pgoutput import numeric_field

    assert numeric_field(0) == struct.pack(">ihhhh", 8, 0, 0, 0, 0)
    assert numeric_field(7) == struct.pack(">ihhhhh", 10, 1, 0, 0, 0, 7)
    assert numeric_field(123_456_789) == struct.pack(">ihhhhhhh", 14, 3, 2, 0, 0, 1, 2345, 6789)
    assert numeric_field(2**64 - 1)[4:8] == struct.pack(">hh", 5, 4)


@pytest.mark.parametrize("kind", ["I", "U", "D"])
def test_binary_mode_rows_are_copy_binary_tuples(kind):
    """In binary mode each row is a COPY binary tuple: position fields (lsn and seqval as
    numeric, op as smallint, commit time as int64 microseconds) and the values as sent."""
    from cdcflow.sources.pgoutput import numeric_field

    dec, out = decoder(binary=True)
    dec.feed(relation())
    dec.feed(begin(5000, ts=987_654))
    values = (struct.pack(">q", 42), b"PAID", None)
    msg = {
        "I": lambda: b"I" + struct.pack(">i", 16384) + b"N" + btup(*values),
        "U": lambda: b"U" + struct.pack(">i", 16384) + b"N" + btup(*values),
        "D": lambda: b"D" + struct.pack(">i", 16384) + b"K" + btup(*values),
    }[kind]()
    dec.feed(msg)
    dec.feed(commit(5000, 5100))
    dec.drain(out)
    ((capture, row),) = out._rows
    op = {"I": 2, "U": 4, "D": 1}[kind]
    assert parse_binary_row(row) == [
        numeric_field(5000)[4:],
        numeric_field(1)[4:],
        struct.pack(">h", op),
        struct.pack(">q", 987_654),
        *values,
    ]


_bvalue = st.one_of(st.none(), st.just("<u>"), st.binary(max_size=12))


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.tuples(st.sampled_from("IUD"), st.lists(_bvalue, min_size=3, max_size=3)), max_size=8))
def test_c_and_python_paths_stage_identical_binary_rows(rows):
    """Binary mode: the C row builder and the Python path produce the same COPY binary
    tuples and the same TOAST carry-over records, for any bytes, NULLs and unchanged values."""
    if not pgoutput.ACCELERATED:
        pytest.skip("the C decoder is not built here")
    outputs = []
    for accelerated in (True, False):
        dec, out = decoder(accelerated=accelerated, binary=True)
        dec.feed(relation())
        dec.feed(begin(7000, ts=-5))
        for kind, values in rows:
            values = [b"k" if values[0] in (None, "<u>") else values[0], *values[1:]]
            body = btup(*values)
            prefix = {"I": b"I", "U": b"U", "D": b"D"}[kind] + struct.pack(">i", 16384)
            dec.feed(prefix + (b"K" if kind == "D" else b"N") + body)
        dec.feed(commit(7000, 7100))
        dec.drain(out)
        outputs.append((out._rows, out._unchanged))
    assert outputs[0] == outputs[1]
    for _, row in outputs[0][0]:
        assert len(parse_binary_row(row)) == 7


def test_c_binary_path_declines_text_values_and_short_tuples():
    if not pgoutput.ACCELERATED:
        pytest.skip("the C decoder is not built here")
    from cdcflow._pgoutput_c import copy_row_binary

    good = btup(b"\x01", None)
    row = copy_row_binary(good, 0, 6, b"L", 3, b"O", b"T")
    assert row[:2] == struct.pack(">h", 6) and row.endswith(b"\x00\x00\x00\x01\x01\xff\xff\xff\xff")
    assert copy_row_binary(good[:-2], 0, 6, b"", 1, b"", b"") is None  # cut short
    assert copy_row_binary(tup("1"), 0, 5, b"", 1, b"", b"") is None  # a text value in a binary stream
    assert copy_row_binary(btup("<u>"), 0, 5, b"", 1, b"", b"") is None  # unchanged TOAST
