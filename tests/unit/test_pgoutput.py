"""The pgoutput decoder on hand-built protocol messages (layouts from the PostgreSQL docs)."""

import struct

import pytest

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


def tup(*values) -> bytes:
    out = struct.pack(">h", len(values))
    for v in values:
        if v is None:
            out += b"n"
        elif v == "<u>":
            out += b"u"
        else:
            b = v.encode()
            out += b"t" + struct.pack(">i", len(b)) + b
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

    def add_unchanged(self, capture, line, columns):
        self._unchanged[line] = columns

    @property
    def rows(self):
        self.dec.drain(self)
        return [(c, line.decode().rstrip("\n").split("\t"), self._unchanged.get(line, ())) for c, line in self._rows]


def decoder(**kw):
    out = Collect()
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
