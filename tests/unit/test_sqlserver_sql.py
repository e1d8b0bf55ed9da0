"""Every T-SQL statement cdcflow sends to SQL Server parses with sqlglot's ``tsql`` dialect.

A parse is not an execution: only a real server (tests/integration/test_source_contract.py
with CDCFLOW_TEST_MSSQL_DSN) checks what the statements do. Statements sqlglot parses
only as an opaque ``Command`` are listed, so a new one cannot slip by unparsed.
"""

from __future__ import annotations

import re

import pytest
import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel

from cdcflow import sqlfiles
from cdcflow.sources import mssql_support as ms

IDENTS = {
    "columns": ms.column_list(["customer_id", "segment"], alias="c"),
    "change_table": ms.change_table("dbo_customers"),
    "table": ms.Quoted(ms.quote_ident("dbo") + "." + ms.quote_ident("customers")),
}
# sqlglot 30 knows no SNAPSHOT isolation level; the block is parsed with it swapped for
# SERIALIZABLE, and this test checks that is the only difference.
SNAPSHOT_BLOCK = "begin_snapshot_read"
# sqlglot parses ALTER DATABASE ... SET only as a Command (a recognised statement kind).
OPAQUE_OK = {("00_init.sql", "ALTER DATABASE CURRENT SET ALLOW_SNAPSHOT_ISOLATION ON")}


def _as_tsql(text: str) -> str:
    """Driver parameters %(name)s become T-SQL variables @name, as the server sees values."""
    return re.sub(r"%\((\w+)\)s", r"@\1", ms.render(text, **{k: v for k, v in IDENTS.items() if "{" + k + "}" in text}))


def _blocks():
    for path in (ms.QUERIES, "sqlserver/enable_cdc.sql"):
        for name, text in sqlfiles.queries(path).items():
            yield pytest.param(name, text, id=f"{path.split('/')[-1]}:{name}")


def _parse(text: str) -> list[exp.Expression]:
    return [e for e in sqlglot.parse(text, read="tsql", error_level=ErrorLevel.RAISE) if e is not None]


@pytest.mark.parametrize(("name", "text"), list(_blocks()))
def test_runtime_query_parses_as_tsql(name, text):
    sql = _as_tsql(text)
    if name == SNAPSHOT_BLOCK:
        assert "ISOLATION LEVEL SNAPSHOT" in sql
        sql = sql.replace("ISOLATION LEVEL SNAPSHOT", "ISOLATION LEVEL SERIALIZABLE")
    statements = _parse(sql)
    assert statements
    assert not any(isinstance(s, exp.Command) for s in statements), f"{name} parsed only as an opaque command"


def test_changes_query_reads_the_change_table_capped_with_ties_in_command_id_order():
    """cdc.<capture_instance>_CT page: order a transaction's changes by __$command_id, not
    __$seqval (https://learn.microsoft.com/sql/relational-databases/system-tables/cdc-capture-instance-ct-transact-sql)."""
    tree = _parse(_as_tsql(sqlfiles.queries(ms.QUERIES)["changes"]))[0]
    inner = tree.find(exp.Subquery).this
    assert inner.args["limit"].args["limit_options"].args["with_ties"] is True
    assert [o.this.name for o in inner.args["order"].expressions] == ["__$start_lsn"]
    table = inner.find(exp.Table)
    assert (table.db, table.name) == ("cdc", "dbo_customers_CT")
    order = [o.this.sql("tsql") for o in tree.args["order"].expressions]
    assert order == ["c.[__$start_lsn]", "c.[__$command_id]", "c.[__$seqval]", "c.[__$operation]"]


@pytest.mark.parametrize(("script", "batches"), ms.bootstrap_scripts(demo=True), ids=lambda v: str(v)[:20])
def test_bootstrap_scripts_parse_as_tsql(script, batches):
    assert batches
    for batch in batches:
        statements = _parse(batch)
        assert statements, batch
        for s in statements:
            for command in [s, *s.find_all(exp.Command)]:
                if isinstance(command, exp.Command):
                    text = " ".join(command.sql("tsql").split()).rstrip(";")
                    assert (script, text) in OPAQUE_OK, f"{script}: {text!r} parsed only as a Command"
