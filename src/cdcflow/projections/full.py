"""A projection kept by full recompute (``-- mode: full``): for a query outside the
incremental fragment (window functions, ORDER BY ... LIMIT, subqueries, ...).

Every cycle with a delta recomputes the whole result in PostgreSQL, from the latest
staged version of every row up to the cutoff, and replaces the projection's rows, in the
cycle's transaction (readers see the old rows until it commits). The query runs as
written, so any PostgreSQL query over captured tables works; the cost grows with the
staged history, and ``cdcflow status`` says so.
"""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql
from sqlglot import exp

from cdcflow.projections import base
from cdcflow.projections.catalog import CapturedTable
from cdcflow.projections.definition import Definition
from cdcflow.projections.pgsql import quote
from cdcflow.projections.relations import find_table, relation_over, substitute_tables

log = logging.getLogger(__name__)
UPTO = 987654321987654321  # stands for the cutoff in the rendered query (an integer, replaced by the cycle's)


def latest_rows(t: CapturedTable) -> str:
    """The latest live version of each key of ``t`` staged at or below the cutoff."""
    key = ", ".join(quote(k) for k in t.key)
    cols = ", ".join(quote(c) for c, _ in t.columns)
    return (
        f"(SELECT {cols} FROM (SELECT DISTINCT ON ({key}) {cols}, __op FROM {quote(t.staging)} "
        f"WHERE __lsn <= {UPTO} AND __op <> 3 ORDER BY {key}, __lsn DESC, __seqval DESC) AS latest "
        "WHERE __op <> 1) AS latest_rows"
    )


class FullProjection(base.Projection):
    mode = "full"

    def __init__(self, definition: Definition, catalog: dict[str, CapturedTable], columns: list[tuple[str, str]]):
        self.definition = definition
        self.name = definition.name
        self.digest = definition.digest
        self.definition_file = definition.path
        self.columns = columns
        found = [find_table(t, catalog) for t in definition.query.find_all(exp.Table)]
        self.captures = tuple(sorted({t.capture for t in found if t is not None}))
        self.query = substitute_tables(definition.query, relation_over(catalog, latest_rows)).sql(dialect="postgres")

    def prepare(self, conn: psycopg.Connection) -> None:
        body = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t))  # type: ignore[arg-type]
            for n, t in self.columns
        )
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(self.name)))
        conn.execute(sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(self.name), body))

    def clear(self, conn: psycopg.Connection) -> None:
        conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(self.name)))

    def apply(self, ctx: base.Context) -> int:
        if not ctx.fresh:
            self.clear(ctx.conn)
        query = self.query.replace(str(UPTO), str(int(ctx.cutoff)))
        cur = ctx.conn.execute(
            sql.SQL("INSERT INTO {} SELECT * FROM ({}) AS q").format(sql.Identifier(self.name), sql.SQL(query))  # type: ignore[arg-type]
        )
        return max(cur.rowcount, 0)
