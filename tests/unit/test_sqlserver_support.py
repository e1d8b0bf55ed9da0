"""SQL Server helpers: DSN, identifier quoting, type mapping, error classes, LSN text."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdcflow.errors import ConfigError, SourceConfigError, TerminalError, TransientError
from cdcflow.positions import MAX_MSSQL_LSN, format_lsn, format_mssql_lsn, parse_lsn, parse_mssql_lsn
from cdcflow.redact import REDACTOR, redact_dsn
from cdcflow.sources import mssql_support as ms
from cdcflow.sources.sqlserver import _lsn, sqlserver_table

# -- DSN ------------------------------------------------------------------------------


def test_dsn_parts_and_connect_kwargs():
    d = ms.parse_dsn("mssql://cdc%40user:p%40ss%3Aw0rd@db.example:14330/sales?login_timeout=5&timeout=30")
    assert (d.host, d.port, d.database, d.user, d.password) == ("db.example", 14330, "sales", "cdc@user", "p@ss:w0rd")
    kw = d.connect_kwargs()
    assert kw["server"] == "db.example" and kw["port"] == "14330" and kw["login_timeout"] == 5
    assert kw["timeout"] == 30 and kw["autocommit"] is True and kw["tds_version"] == "7.4"
    assert "encryption" not in kw
    kw2 = ms.parse_dsn("mssql://u:p@h/db?encryption=require&tds_version=7.3").connect_kwargs()
    assert kw2["encryption"] == "require" and kw2["tds_version"] == "7.3"
    assert "p@ss:w0rd" not in repr(d) and d.describe() == "db.example:14330/sales"


def test_dsn_defaults_and_sqlserver_scheme():
    d = ms.parse_dsn("sqlserver://sa:pw@localhost/demo")
    assert d.port == 1433 and d.connect_kwargs()["login_timeout"] == 10
    assert ms.is_sqlserver_dsn("MSSQL://x@y/z") and not ms.is_sqlserver_dsn("postgresql://x@y/z")


@pytest.mark.parametrize(
    "bad",
    [
        "mssql://sa:pw@localhost",  # no database
        "mssql://sa:pw@/demo",  # no host
        "mssql://sa:pw@localhost:abc/demo",
        "mssql://sa:pw@localhost/demo?encrypt=yes",  # unknown option
        "mssql://sa:pw@localhost/demo?encryption=maybe",
        "mssql://sa:pw@localhost/demo?timeout=soon",
        "postgresql://sa:pw@localhost/demo",
    ],
)
def test_dsn_rejects_bad_values_without_the_password(bad):
    with pytest.raises(ConfigError) as info:
        ms.parse_dsn(bad)
    assert ":pw@" not in str(info.value)


def test_dsn_password_is_registered_for_redaction():
    ms.parse_dsn("mssql://sa:Very-Secret-42@localhost/demo")
    assert "Very-Secret-42" not in REDACTOR("login failed, password Very-Secret-42")
    assert "Very-Secret-42" not in redact_dsn("mssql://sa:Very-Secret-42@localhost/demo")


# -- identifiers ------------------------------------------------------------------------


def test_quote_ident_doubles_closing_brackets():
    assert ms.quote_ident("a]b") == "[a]]b]"
    for bad in ("", "x" * 129, "a\x00b"):
        with pytest.raises(ValueError):
            ms.quote_ident(bad)


def test_capture_instance_names_are_validated_never_empty():
    assert ms.changes_function("dbo_orders") == "[cdc].[fn_cdc_get_all_changes_dbo_orders]"
    for bad in ("", "dbo.orders", "x]; DROP TABLE t; --", "1abc", "a" * 101):
        with pytest.raises(SourceConfigError):
            ms.changes_function(bad)


def test_render_accepts_only_quoted_identifiers():
    assert ms.render("SELECT {columns} FROM t", columns=ms.column_list(["a", "b]"], "c")) == (
        "SELECT [c].[a], [c].[b]]] FROM t"
    )
    with pytest.raises(KeyError):
        ms.render("SELECT {columns}", columns="a; DROP TABLE x")  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        ms.query("nope")


def test_public_schema_means_dbo():
    assert sqlserver_table("public.orders") == ("dbo", "orders")
    assert sqlserver_table("sales.orders") == ("sales", "orders")
    assert sqlserver_table("orders") == ("dbo", "orders")


def test_script_batches_split_on_go_lines():
    text = "-- c\nSELECT 1;\nGO\n  go  \nSELECT 2;\nGO\n-- only a comment\n"
    assert ms.script_batches(text) == ["-- c\nSELECT 1;", "SELECT 2;"]
    names = [n for n, _ in ms.bootstrap_scripts(demo=False)]
    assert names == ["00_init.sql"]
    assert [n for n, _ in ms.bootstrap_scripts(demo=True)] == ["00_init.sql", "10_schema.sql", "20_seed.sql"]


# -- types ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mssql", "precision", "scale", "pg"),
    [
        ("bigint", 19, 0, "bigint"),
        ("int", 10, 0, "integer"),
        ("tinyint", 3, 0, "smallint"),
        ("bit", 1, 0, "boolean"),
        ("decimal", 18, 2, "numeric(18,2)"),
        ("numeric", 38, 10, "numeric(38,10)"),
        ("money", 19, 4, "numeric(19,4)"),
        ("float", 53, 0, "double precision"),
        ("nvarchar", 0, 0, "text"),
        ("datetime2", 27, 7, "timestamp without time zone"),
        ("datetime", 23, 3, "timestamp without time zone"),
        ("smalldatetime", 16, 0, "timestamp without time zone"),
        ("datetimeoffset", 34, 7, "timestamp with time zone"),
        ("date", 10, 0, "date"),
        ("time", 16, 7, "time without time zone"),
        ("varbinary", 0, 0, "bytea"),
        ("uniqueidentifier", 0, 0, "uuid"),
        ("geography", 0, 0, None),
        ("sql_variant", 0, 0, None),
    ],
)
def test_type_mapping(mssql, precision, scale, pg):
    assert ms.pg_type(mssql, precision, scale) == pg


# -- errors ----------------------------------------------------------------------------


class OperationalError(Exception):
    pass


class ProgrammingError(Exception):
    pass


def test_error_classes_follow_sql_server_numbers():
    assert isinstance(ms.wrap_error("x", OperationalError(1205, b"deadlock")), TransientError)
    assert isinstance(ms.wrap_error("x", OperationalError(20006, b"write failed")), TransientError)
    assert isinstance(ms.wrap_error("x", OperationalError("no number")), TransientError)
    assert isinstance(ms.wrap_error("x", ProgrammingError(208, b"Invalid object name")), TerminalError)
    assert isinstance(ms.wrap_connect_error("h", OperationalError(18456, b"Login failed")), TerminalError)
    assert isinstance(ms.wrap_connect_error("h", OperationalError(20009, b"Unable to connect")), TransientError)
    assert ms.error_number(OperationalError(313, b"x")) == 313
    assert ms.describe(OperationalError(313, b"An insufficient\nnumber")) == "error 313: An insufficient number"


def test_errors_in_the_shape_pymssql_raises():
    """pymssql 2.4 wraps (number, message) in one tuple argument (seen on a refused connect)."""
    import pymssql

    refused = pymssql.OperationalError((20009, b"DB-Lib error message 20009, severity 9:\nUnable to connect"))
    assert ms.error_number(refused) == 20009
    assert ms.describe(refused) == "error 20009: DB-Lib error message 20009, severity 9: Unable to connect"
    assert isinstance(ms.wrap_connect_error("h", refused), TransientError)
    gap = pymssql.OperationalError((313, b"An insufficient number of arguments were supplied"))
    assert ms.error_number(gap) == ms.ERROR_INSUFFICIENT_ARGUMENTS
    assert isinstance(ms.wrap_error("x", pymssql.OperationalError((1205, b"deadlock"))), TransientError)
    assert isinstance(ms.wrap_error("x", pymssql.ProgrammingError((208, b"Invalid object"))), TerminalError)


# -- LSN text as the SQL Server source prints it -------------------------------------------


def test_lsn_from_driver_bytes_and_printed_as_0x_plus_20_hex():
    raw = bytes.fromhex("0000002A000001F80003")
    assert _lsn(raw) == 0x2A000001F80003 and _lsn(None) == 0
    assert format_lsn("sqlserver", _lsn(raw)) == "0x0000002A000001F80003"
    assert parse_lsn("sqlserver", "0x0000002a000001f80003") == _lsn(raw)
    assert format_mssql_lsn(0) == "0x" + "0" * 20 and format_mssql_lsn(MAX_MSSQL_LSN) == "0x" + "F" * 20
    with pytest.raises(ValueError):
        _lsn(b"\x00" * 8)
    with pytest.raises(ValueError):
        format_mssql_lsn(MAX_MSSQL_LSN + 1)


@given(st.integers(min_value=0, max_value=MAX_MSSQL_LSN))
def test_lsn_text_roundtrip_and_fixed_width(v):
    text = format_mssql_lsn(v)
    assert len(text) == 22 and text.startswith("0x") and parse_mssql_lsn(text) == v


def test_real_pymssql_driver_refused_connection_is_transient_and_redacted():
    """The real driver (lazily imported), against a closed loopback port: no server needed."""
    from cdcflow.sources.sqlserver import SqlServerSource

    source = SqlServerSource("mssql://sa:Pw-Secret-77@127.0.0.1:1/demo?login_timeout=2", ["dbo.customers"])
    with pytest.raises(TransientError) as info:
        source.current_lsn()
    assert "127.0.0.1:1/demo" in str(info.value) and "20009" in str(info.value)
    assert "Pw-Secret-77" not in str(info.value)
    source.close()
