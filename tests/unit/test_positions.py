import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdcflow.positions import (
    MAX_MSSQL_LSN,
    MAX_PG_LSN,
    Position,
    format_lsn,
    format_mssql_lsn,
    format_pg_lsn,
    mssql_lsn_from_bytes,
    mssql_lsn_to_bytes,
    parse_lsn,
    parse_mssql_lsn,
    parse_pg_lsn,
)


def test_pg_lsn_examples():
    assert parse_pg_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert format_pg_lsn((0x16 << 32) | 0xB374D848) == "16/B374D848"
    assert format_pg_lsn(0) == "0/0"


def test_mssql_lsn_examples():
    assert format_mssql_lsn(parse_mssql_lsn("0x0000002A000001F80003")) == "0x0000002A000001F80003"
    assert mssql_lsn_from_bytes(bytes.fromhex("0000002A000001F80003")) == 0x2A000001F80003


@pytest.mark.parametrize("bad", ["", "16", "16/", "/1", "G/1", "123456789/1", "1/2/3"])
def test_pg_lsn_rejects_bad_text(bad):
    with pytest.raises(ValueError, match="PostgreSQL LSN"):
        parse_pg_lsn(bad)


@pytest.mark.parametrize("bad", ["", "0x12", "0000002A000001F80003", "0x0000002A000001F8000G"])
def test_mssql_lsn_rejects_bad_text(bad):
    with pytest.raises(ValueError, match="SQL Server LSN"):
        parse_mssql_lsn(bad)


@given(st.integers(min_value=0, max_value=MAX_PG_LSN))
def test_pg_lsn_roundtrip(v):
    assert parse_pg_lsn(format_pg_lsn(v)) == v
    assert parse_lsn("postgres", format_lsn("postgres", v)) == v


@given(st.integers(min_value=0, max_value=MAX_MSSQL_LSN))
def test_mssql_lsn_roundtrip(v):
    text = format_mssql_lsn(v)
    assert len(text) == 22
    assert parse_mssql_lsn(text) == v
    assert mssql_lsn_from_bytes(mssql_lsn_to_bytes(v)) == v


@given(st.integers(min_value=0, max_value=MAX_MSSQL_LSN), st.integers(min_value=0, max_value=MAX_MSSQL_LSN))
def test_mssql_byte_order_is_numeric_order(a, b):
    # Positions are compared as numbers, never as strings of different widths.
    assert (mssql_lsn_to_bytes(a) < mssql_lsn_to_bytes(b)) == (a < b)


@given(
    st.tuples(st.integers(0, MAX_PG_LSN), st.integers(0, 10**6)),
    st.tuples(st.integers(0, MAX_PG_LSN), st.integers(0, 10**6)),
)
def test_positions_order_by_lsn_then_seqval(a, b):
    assert (Position(*a) < Position(*b)) == (a < b)


def test_format_none():
    assert format_lsn("postgres", None) == "-"
