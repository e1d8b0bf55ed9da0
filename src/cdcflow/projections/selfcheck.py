"""The self-check of an incremental projection: PostgreSQL runs the definition's query
over the projection's own state tables and compares the result with the projection.

It checks the whole projection, in one statement on one snapshot, outside the cycles
(:meth:`SelfCheck.suspects`, from the worker's check thread, paced there); the keys it
finds different are checked again under the cycle's lock and restated
(:meth:`SelfCheck.restate`): the rows of a query without GROUP BY, or the aggregate state
of a group (counts, sums, per-value counts) recomputed in PostgreSQL. The count of
restated rows is added to ``restated_buckets``. It should stay at zero: the check is an
independent computation (PostgreSQL over the state, not DuckDB over a delta), so it
catches a wrong delta and a translation that differs from PostgreSQL alike.

Floating-point outputs are compared as ``real`` (about 7 digits): sums of floats kept
incrementally differ from a recompute in their last bits.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg import sql
from sqlglot import exp

from cdcflow.projections.pgsql import parse_pg, quote
from cdcflow.projections.pgtables import Column, groups_table, state_table, temp_name, value_table
from cdcflow.projections.plan import Plan
from cdcflow.projections.relations import find_table, substitute_tables
from cdcflow.projections.storage import Layout

log = logging.getLogger(__name__)
#: At most this many different keys are carried from the check to the restating cycle.
MAX_SUSPECTS = 1000


class SelfCheck:
    def __init__(self, plan: Plan, layout: Layout) -> None:
        self.plan = plan
        self.layout = layout
        # Compared columns: what the projection shows, plus hidden keys and the source LSN.
        self.columns: list[Column] = [c for c in layout.projection_columns() if not _is_part(c.name)]

    # SQL over the state --------------------------------------------------------------

    def _over_state(self, node: exp.Expr) -> exp.Expr:
        tables = {u.table.source_table: u for u in self.plan.tables.values()}
        catalog = {k: u.table for k, u in tables.items()}

        def relation(t: exp.Table) -> exp.Expr:
            found = find_table(t, catalog)
            assert found is not None
            use = tables[found.source_table]
            cols = ", ".join(quote(c.name) for c in self.layout.state_columns(use))
            inner = parse_pg(f"SELECT {cols} FROM {quote(state_table(self.plan.name, use.table.capture))}")
            alias = (t.alias or t.name).lower()
            return exp.Subquery(this=inner, alias=exp.TableAlias(this=exp.to_identifier(alias, quoted=True)))

        return substitute_tables(node, relation)

    def truth(self) -> str:
        """The definition's query over the state, with the projection's hidden columns."""
        plan = self.plan
        assert plan.query is not None
        query = plan.query.copy()
        if plan.aggregated:
            top = query if isinstance(query, exp.Select) else None
            assert top is not None
            outputs = {o.name for o in plan.outputs}
            for g in plan.group_keys:
                if g.column not in outputs:
                    top.append("expressions", exp.alias_(g.expr.copy(), g.column, quoted=True))
        else:
            selects = [query] if isinstance(query, exp.Select) else list(_union_selects(query))
            for select, b in zip(selects, plan.branches, strict=True):
                select.append(
                    "expressions",
                    exp.alias_(exp.column("__lsn", table=b.driving.name, quoted=True), "__source_lsn", quoted=True),
                )
        return self._over_state(query).sql(dialect="postgres")

    def _compared(self, alias: str) -> str:
        out = []
        for c in self.columns:
            col = f"{alias}.{quote(c.name)}"
            out.append(f"CAST({col} AS real)" if c.type in ("real", "double precision") else col)
        return ", ".join(out)

    # the check, on a snapshot ------------------------------------------------------

    def suspects(self, conn: psycopg.Connection) -> list[tuple[Any, ...]]:
        """Keys whose rows differ between the projection and its query over the state."""
        key = ", ".join(quote(k) for k in self.plan.key)
        truth, held = self._compared("t"), self._compared("h")
        text = (
            f"WITH t AS ({self.truth()}), h AS (SELECT * FROM {quote(self.plan.name)}), "
            f"d AS ((SELECT {truth} FROM t EXCEPT ALL SELECT {held} FROM h) UNION ALL "
            f"(SELECT {held} FROM h EXCEPT ALL SELECT {truth} FROM t)) "
            f"SELECT DISTINCT {key or '1'} FROM d LIMIT {MAX_SUSPECTS}"
        )
        rows = conn.execute(text).fetchall()  # type: ignore[arg-type]  # built from the plan, values none
        return [tuple(r) for r in rows] if self.plan.key else ([()] if rows else [])

    # restating, under the cycle's lock --------------------------------------------

    def _keys_values(self, keys: list[tuple[Any, ...]]) -> tuple[str, list[Any]]:
        types = {c.name: c.type for c in self.layout.projection_columns()}
        row = "(" + ", ".join(f"CAST(%s AS {types[k]})" for k in self.plan.key) + ")"
        names = ", ".join(quote(f"k{i}") for i in range(len(self.plan.key)))
        return f"(VALUES {', '.join([row] * len(keys))}) AS k({names})", [v for k in keys for v in k]

    def _filtered(self, query: str, columns: list[str], keys: list[tuple[Any, ...]]) -> tuple[str, list[Any]]:
        if not self.plan.key:
            return query, []
        values, params = self._keys_values(keys)
        match = " AND ".join(f"k.{quote(f'k{i}')} IS NOT DISTINCT FROM s.{quote(c)}" for i, c in enumerate(columns))
        return f"SELECT s.* FROM ({query}) AS s WHERE EXISTS (SELECT 1 FROM {values} WHERE {match})", params

    def still_different(self, conn: psycopg.Connection, keys: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        if not keys:
            return []
        truth, params = self._filtered(self.truth(), self.plan.key, keys)
        held, held_params = self._filtered(f"SELECT * FROM {quote(self.plan.name)}", self.plan.key, keys)
        key = ", ".join(quote(k) for k in self.plan.key)
        text = (
            f"WITH t AS ({truth}), h AS ({held}), "
            f"d AS ((SELECT {self._compared('t')} FROM t EXCEPT ALL SELECT {self._compared('h')} FROM h) UNION ALL "
            f"(SELECT {self._compared('h')} FROM h EXCEPT ALL SELECT {self._compared('t')} FROM t)) "
            f"SELECT DISTINCT {key or '1'} FROM d"
        )
        rows = conn.execute(text, [*params, *held_params]).fetchall()  # type: ignore[arg-type]
        return [tuple(r) for r in rows] if self.plan.key else ([()] if rows else [])

    def restate(self, conn: psycopg.Connection, keys: list[tuple[Any, ...]]) -> int:
        """Rewrite what is still wrong among ``keys``; returns how many rows were restated."""
        wrong = self.still_different(conn, keys)
        if not wrong:
            return 0
        if self.plan.aggregated:
            self._restate_groups(conn, wrong)
        else:
            self._restate_rows(conn, wrong)
        return len(wrong)

    def _delete(self, conn: psycopg.Connection, table: str, columns: list[str], keys: list[tuple[Any, ...]]) -> None:
        if not self.plan.key:
            conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(table)))
            return
        values, params = self._keys_values(keys)
        match = " AND ".join(f"k.{quote(f'k{i}')} IS NOT DISTINCT FROM s.{quote(c)}" for i, c in enumerate(columns))
        conn.execute(f"DELETE FROM {quote(table)} AS s USING {values} WHERE {match}", params)  # type: ignore[arg-type]

    def _restate_rows(self, conn: psycopg.Connection, keys: list[tuple[Any, ...]]) -> None:
        self._delete(conn, self.plan.name, self.plan.key, keys)
        cols = [c.name for c in self.layout.projection_columns()]
        truth, params = self._filtered(self.truth(), self.plan.key, keys)
        names = ", ".join(quote(c) for c in cols)
        conn.execute(
            f"INSERT INTO {quote(self.plan.name)} ({names}) SELECT {names} FROM ({truth}) AS r",  # type: ignore[arg-type]
            params,
        )

    def _restate_groups(self, conn: psycopg.Connection, keys: list[tuple[Any, ...]]) -> None:
        """The groups' state recomputed in PostgreSQL from the state tables, then written
        as a rebuild writes it (value rows, group state, output values)."""
        plan, layout = self.plan, self.layout
        gkeys = [f"__g{g.index}" for g in plan.group_keys]
        self._delete(conn, plan.name, plan.key, keys)
        if layout.having:
            self._delete(conn, groups_table(plan.name), gkeys, keys)
        input_rows = self._pre_aggregation()
        for arg in layout.values:
            self._delete(conn, value_table(plan.name, arg), gkeys, keys)
            g = ", ".join(quote(c) for c in gkeys)
            values = (
                f"SELECT {g + ', ' if g else ''}{quote(f'__a{arg.index}')} AS __v, count(*) AS __cnt "
                f"FROM ({input_rows}) AS p "
                f"WHERE {quote(f'__a{arg.index}')} IS NOT NULL GROUP BY {g + ', ' if g else ''}"
                f"{quote(f'__a{arg.index}')}"
            )
            values, params = self._filtered(values, gkeys, keys)
            names = ", ".join(quote(c) for c in [*gkeys, "__v", "__cnt"])
            conn.execute(
                f"INSERT INTO {quote(value_table(plan.name, arg))} ({names}) SELECT {names} FROM ({values}) AS v",  # type: ignore[arg-type]
                params,
            )
        aggregates = layout.state.part_aggregates(lambda i: quote(f"__a{i}"))
        parts = ["count(*) AS __count"]
        parts += [f"coalesce({agg}, 0) AS {name}" for name, agg in aggregates]
        g = ", ".join(quote(c) for c in gkeys)
        groups = f"SELECT {g + ', ' if g else ''}{', '.join(parts)} FROM ({input_rows}) AS p" + (
            f" GROUP BY {g}" if g else ""
        )
        groups, params = self._filtered(groups, gkeys, keys)
        name, ddl = layout.diff_temp()
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(ddl)
        cols = [*gkeys, "__count", *(name for name, _ in aggregates)]
        names = ", ".join(quote(c) for c in cols)
        conn.execute(
            f"INSERT INTO {quote(name)} ({names}, __nulls) SELECT {names}, 0 FROM ({groups}) AS s",  # type: ignore[arg-type]
            params,
        )
        mask = (
            " + ".join(f"(CASE WHEN {quote(c)} IS NULL THEN {1 << n} ELSE 0 END)" for n, c in enumerate(gkeys)) or "0"
        )
        conn.execute(f"UPDATE {quote(name)} SET __nulls = {mask}")  # type: ignore[arg-type]
        masks = [int(r[0]) for r in conn.execute(f"SELECT DISTINCT __nulls FROM {quote(name)}").fetchall()]  # type: ignore[arg-type]
        for stmt in layout.write_groups(masks, fresh=True):
            conn.execute(stmt)

    def _pre_aggregation(self) -> str:
        """Each input row's GROUP BY keys and aggregate arguments, in PostgreSQL, over the state."""
        plan = self.plan
        assert plan.query is not None and isinstance(plan.query, exp.Select)
        top = plan.query.copy()
        items = [exp.alias_(g.expr.copy(), f"__g{g.index}", quoted=True) for g in plan.group_keys]
        items += [exp.alias_(a.expr.copy(), f"__a{a.index}", quoted=True) for a in plan.args]
        top.set("expressions", items or [exp.alias_(exp.Literal.number(1), "__one", quoted=True)])
        for arg in ("group", "having"):
            top.set(arg, None)
        return self._over_state(top).sql(dialect="postgres")


def _is_part(name: str) -> bool:
    return name == "__count" or (name.startswith(("__n", "__s", "__p", "__m", "__x")) and name[3:].isdigit())


def _union_selects(node: exp.Expr):
    if isinstance(node, exp.Union):
        yield from _union_selects(node.this)
        yield from _union_selects(node.expression)
    else:
        yield node


__all__ = ["MAX_SUSPECTS", "SelfCheck", "temp_name"]
