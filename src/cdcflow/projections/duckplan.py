"""The DuckDB side of a cycle: the query over the loaded rows as they were ("before")
and as they are with the delta applied ("after"), and the exact change between the two.

For each table ``T`` the cycle registers two Arrow tables: ``s_<capture>`` (the stored
rows it loaded: the closed neighbourhood of the delta, in its old versions) and
``d_<capture>`` (the delta: the latest version of each changed key, ``__deleted`` when
it is gone). ``<capture>__old`` is the first; ``<capture>__new`` is the first with the
changed keys replaced by the delta's live rows. The query runs over both, as written
(each table reference pointing at one or the other); every result row that involves a
changed row comes out of both runs, every other row out of neither, so ``after - before``
is the change of the whole result.

- Grouped: the signed input rows (``-1`` before, ``+1`` after) are summed per group into
  the change of its aggregate state (counts, sums, and per value for MIN/MAX/...).
- Rows: the rows in ``after`` but not in ``before`` are written, the keys in ``before`` but
  not in ``after`` deleted.
"""

from __future__ import annotations

from sqlglot import exp

from cdcflow.projections import translate
from cdcflow.projections.pgsql import quote
from cdcflow.projections.plan import Branch, Plan, TableUse
from cdcflow.projections.storage import Layout


def registered(kind: str, use: TableUse) -> str:
    return f"{kind}_{use.table.capture}"


def relation(use: TableUse, side: str) -> str:
    return f"{use.table.capture}__{side}"


class DuckQueries:
    """The DuckDB statements of one plan (each built once: they depend on the plan only)."""

    def __init__(self, plan: Plan, layout: Layout) -> None:
        self.plan = plan
        self.layout = layout
        self.groups = [f"__g{g.index}" for g in plan.group_keys]
        self._built: dict[tuple, object] = {}

    def _once(self, key: tuple, build):  # type: ignore[no-untyped-def]
        if key not in self._built:
            self._built[key] = build()
        return self._built[key]

    # relations ------------------------------------------------------------------------

    def views(self) -> list[str]:
        return self._once(("views",), self._views)  # type: ignore[return-value]

    def _views(self) -> list[str]:
        out = []
        for use in self.plan.tables.values():
            cols = ", ".join(quote(c.name) for c in self.layout.state_columns(use))
            stored, delta = quote(registered("s", use)), quote(registered("d", use))
            match = " AND ".join(f"d.{quote(k)} = s.{quote(k)}" for k in use.table.key)
            out.append(f"CREATE OR REPLACE TEMP VIEW {quote(relation(use, 'old'))} AS SELECT {cols} FROM {stored}")
            out.append(
                f"CREATE OR REPLACE TEMP VIEW {quote(relation(use, 'new'))} AS "
                f"SELECT {cols} FROM {stored} AS s WHERE NOT EXISTS (SELECT 1 FROM {delta} AS d WHERE {match}) "
                f"UNION ALL SELECT {cols} FROM {delta} WHERE NOT __deleted"
            )
        return out

    # the query over one side -------------------------------------------------------------

    def _select(self, b: Branch, items: list[exp.Expr], side: str) -> exp.Select:
        """Branch ``b`` with its select list replaced by ``items`` (already translated), its
        tables by the ``side`` relations, and its conditions translated."""
        shell = b.select.copy()
        shell.set("expressions", items)
        for arg in ("group", "having", "order", "limit"):
            shell.set(arg, None)
        by_alias = {a.name: a for a in b.aliases}

        def swap(node: exp.Expr) -> exp.Expr:
            if isinstance(node, exp.Table):
                use = self.plan.tables[by_alias[(node.alias or node.name).lower()].table.source_table]
                return exp.Table(
                    this=exp.to_identifier(relation(use, side), quoted=True),
                    alias=exp.TableAlias(this=exp.to_identifier((node.alias or node.name).lower(), quoted=True)),
                )
            return node

        shell = shell.transform(swap, copy=False)  # type: ignore[assignment]
        where = shell.args.get("where")
        if where is not None:
            shell.set("where", exp.Where(this=translate.rewrite(where.this)))
        for j in shell.args.get("joins") or []:
            if j.args.get("on") is not None:
                j.set("on", translate.rewrite(j.args["on"]))
        return shell

    @staticmethod
    def _items(exprs: list[tuple[exp.Expr, str]], types: list[str] | None = None) -> list[exp.Expr]:
        """Translated, named; with ``types`` (a UNION ALL branch's), each cast to the decimal
        of its PostgreSQL type where that is numeric (:func:`translate.as_carried`)."""
        out = []
        for i, (e, name) in enumerate(exprs):
            value = translate.rewrite(e)
            if types is not None:
                value = translate.as_carried(value, types[i])
            out.append(exp.alias_(value, name, quoted=True))
        return out

    def tuples(self, side: str) -> str:
        return self._once(("tuples", side), lambda: self._tuples(side))  # type: ignore[return-value]

    def _tuples(self, side: str) -> str:
        """The rows the query's FROM/WHERE yields on ``side`` ("old" or "new"): for a grouped
        query, each row's GROUP BY keys ``__g<i>`` and aggregate arguments ``__a<i>``; for
        a query without GROUP BY, its output columns and ``__source_lsn``."""
        plan = self.plan
        pre_aggregation = [(g.expr, f"__g{g.index}") for g in plan.group_keys] + [
            (a.expr, f"__a{a.index}") for a in plan.args
        ]
        if not plan.aggregated:
            parts = []
            for b in plan.branches:
                cols = [(item.unalias(), o.name) for item, o in zip(b.select.expressions, plan.outputs, strict=True)]
                items = self._items(cols, [o.pg_type for o in plan.outputs] if len(plan.branches) > 1 else None)
                items.append(
                    exp.alias_(exp.column("__lsn", table=b.driving.name, quoted=True), "__source_lsn", quoted=True)
                )
                parts.append(self._select(b, items, side))
            return _union(parts).sql(dialect="duckdb")
        if plan.outer is None:
            (b,) = plan.branches
            items = self._items(pre_aggregation) or [exp.alias_(exp.Literal.number(1), "__one", quoted=True)]
            return self._select(b, items, side).sql(dialect="duckdb")
        parts = []
        for b in plan.branches:
            cols = [(item.unalias(), name) for item, name in zip(b.select.expressions, plan.union_columns, strict=True)]
            parts.append(self._select(b, self._items(cols, plan.union_types), side))
        outer = plan.outer.copy()
        outer.set(
            "expressions", self._items(pre_aggregation) or [exp.alias_(exp.Literal.number(1), "__one", quoted=True)]
        )
        for arg in ("group", "having", "order", "limit"):
            outer.set(arg, None)
        outer.set(
            "from_",
            exp.From(
                this=exp.Subquery(
                    this=_union(parts), alias=exp.TableAlias(this=exp.to_identifier(plan.outer_alias, quoted=True))
                )
            ),
        )
        where = outer.args.get("where")
        if where is not None:
            outer.set("where", exp.Where(this=translate.rewrite(where.this)))
        return outer.sql(dialect="duckdb")

    # grouped: the change of each group's state -------------------------------------------

    def signed(self) -> str:
        return (
            f"CREATE OR REPLACE TEMP TABLE __t AS SELECT CAST(-1 AS INTEGER) AS __sign, * FROM ({self.tuples('old')}) "
            f"UNION ALL SELECT CAST(1 AS INTEGER) AS __sign, * FROM ({self.tuples('new')})"
        )

    def _mask(self, cols: list[str]) -> str:
        return " + ".join(f"(CASE WHEN {quote(c)} IS NULL THEN {1 << n} ELSE 0 END)" for n, c in enumerate(cols)) or "0"

    def values(self, index: int) -> str:
        return self._once(("values", index), lambda: self._values(index))  # type: ignore[return-value]

    def _values(self, index: int) -> str:
        g = ", ".join(quote(c) for c in self.groups)
        head = f"{g}, " if g else ""
        count = "count(*) FILTER (WHERE __sign > 0) - count(*) FILTER (WHERE __sign < 0)"
        return (
            f"CREATE OR REPLACE TEMP TABLE __v{index} AS SELECT {head}__a{index} AS __v, CAST({count} AS BIGINT) AS "
            f"__cnt, {self._mask(self.groups)} AS __nulls FROM __t WHERE __a{index} IS NOT NULL "
            f"GROUP BY {head}__a{index} HAVING {count} <> 0"
        )

    def groups_diff(self) -> str:
        """The change of each touched group's state (with the NULL pattern of its keys)."""
        return self._once(("groups_diff",), self._groups_diff)  # type: ignore[return-value]

    def _groups_diff(self) -> str:
        layout = self.layout

        def delta(agg: str) -> str:
            return f"coalesce({agg} FILTER (WHERE __sign > 0), 0) - coalesce({agg} FILTER (WHERE __sign < 0), 0)"

        aggregates = layout.state.part_aggregates(lambda i: f"__a{i}")
        parts = [f"CAST({delta('count(*)')} AS BIGINT) AS __count"]
        parts += [
            f"CAST({delta(agg)} AS BIGINT) AS {name}" if agg.startswith("count") else f"{delta(agg)} AS {name}"
            for name, agg in aggregates
        ]
        g = ", ".join(quote(c) for c in self.groups)
        inner = f"SELECT {g + ', ' if g else ''}{', '.join(parts)} FROM __t" + (f" GROUP BY {g}" if g else "")
        cols = [*self.groups, "__count", *(name for name, _ in aggregates)]
        select = f"SELECT {', '.join(quote(c) for c in cols)}, {self._mask(self.groups)} AS __nulls FROM ({inner}) AS l"
        if not self.groups:
            return select  # the one group of a query without GROUP BY is always written
        changed = [f"l.{quote(p)} <> 0" for p in cols[len(self.groups) :]]
        for arg in layout.values:
            match = " AND ".join(f"v.{quote(c)} IS NOT DISTINCT FROM l.{quote(c)}" for c in self.groups)
            changed.append(f"EXISTS (SELECT 1 FROM __v{arg.index} AS v WHERE {match})")
        return f"{select} WHERE {' OR '.join(changed)}"

    # rows: what to write and what to delete -----------------------------------------------

    def rows(self) -> list[str]:
        return [
            f"CREATE OR REPLACE TEMP TABLE __old AS {self.tuples('old')}",
            f"CREATE OR REPLACE TEMP TABLE __new AS {self.tuples('new')}",
        ]

    def rows_written(self) -> str:
        return f"SELECT *, {self._mask(self.plan.key)} AS __nulls FROM (SELECT * FROM __new EXCEPT SELECT * FROM __old)"

    def rows_deleted(self) -> str:
        k = ", ".join(quote(c) for c in self.plan.key)
        return (
            f"SELECT {k}, {self._mask(self.plan.key)} AS __nulls FROM "
            f"(SELECT {k} FROM __old EXCEPT SELECT {k} FROM __new)"
        )

    def duplicate_key(self) -> str:
        k = ", ".join(quote(c) for c in self.plan.key)
        return f"SELECT {k}, count(*) FROM __new GROUP BY {k} HAVING count(*) > 1 LIMIT 1"


def _union(parts: list[exp.Select]) -> exp.Query:
    out: exp.Query = parts[0]
    for p in parts[1:]:
        out = exp.union(out, p, distinct=False)
    return out
