"""Table references of a definition's query, and running the query over other relations
in PostgreSQL: finding the captured table a reference names, putting another relation
(the staging table, the state) in its place, and asking PostgreSQL for the result's types.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg
from psycopg import sql
from sqlglot import exp

from cdcflow import sqlfiles
from cdcflow.projections.catalog import CapturedTable
from cdcflow.projections.pgsql import parse_pg, quote

QUERIES = "projections/catalog.sql"


def substitute_tables(node: exp.Expr, relation: Callable[[exp.Table], exp.Expr]) -> exp.Expr:
    """A copy of ``node`` with every table reference replaced by ``relation(table)``."""

    def swap(n: exp.Expr) -> exp.Expr:
        return relation(n) if isinstance(n, exp.Table) else n

    return node.copy().transform(swap, copy=False)


def cte_names(query: exp.Expr) -> set[str]:
    """Names the query's WITH clauses define (references to them are not tables)."""
    return {c.alias_or_name.lower() for c in query.find_all(exp.CTE)}


def table_alias(t: exp.Table) -> str:
    return (t.alias or t.name).lower()


def qualified_name(t: exp.Table) -> str:
    return f"{(t.db or 'public').lower()}.{t.name.lower()}"


def find_table(t: exp.Table, catalog: dict[str, CapturedTable]) -> CapturedTable | None:
    """The captured table a reference names: ``schema.table`` as captured (``public`` is
    also SQL Server's ``dbo``, as in CAPTURE_TABLES), or a bare ``table`` captured in one
    schema only (``public`` or ``dbo`` first)."""
    name, schema = t.name.lower(), (t.db or "").lower()
    if schema:
        found = catalog.get(f"{schema}.{name}")
        if found is None and schema == "public":
            found = catalog.get(f"dbo.{name}")
        return found
    same = [c for key, c in catalog.items() if key.split(".", 1)[1] == name]
    if len(same) == 1:
        return same[0]
    return catalog.get(f"public.{name}") or catalog.get(f"dbo.{name}")


def relation_over(catalog: dict[str, CapturedTable], source: Callable[[CapturedTable], str]):
    """``relation`` for :func:`substitute_tables`: each captured table as ``(source(t)) AS alias``,
    the subquery selecting exactly the table's source columns."""

    def relation(t: exp.Table) -> exp.Expr:
        captured = find_table(t, catalog)
        if captured is None:  # a WITH name (resolve_tables checked every other reference)
            return t
        cols = ", ".join(quote(c) for c, _ in captured.columns)
        inner = parse_pg(f"SELECT {cols} FROM {source(captured)}")
        return exp.Subquery(this=inner, alias=exp.TableAlias(this=exp.to_identifier(table_alias(t), quoted=True)))

    return relation


def probe(conn: psycopg.Connection, query: str) -> list[tuple[str, str]]:
    """``(name, type)`` of the columns ``query`` returns, as PostgreSQL types them (the query
    is never run: a scratch table is made from it WITH NO DATA and rolled back)."""
    with conn.transaction(force_rollback=True):
        conn.execute(
            sql.SQL("CREATE TEMP TABLE cdcflow_probe AS {} WITH NO DATA").format(sql.SQL(query))  # type: ignore[arg-type]
        )
        return [(str(n), str(t)) for n, t in conn.execute(sqlfiles.query(QUERIES, "probe_types")).fetchall()]
