"""The aggregate state of a grouped projection, kept per group in its table (or, with
HAVING, in ``pst_x__groups``), and the PostgreSQL that computes outputs and HAVING from it.

The state of a group is ``__count`` (its input rows) and, per argument i, ``__n<i>`` (its
non-NULL values, kept only for an argument that can be NULL) and ``__s<i>`` (their sum,
for SUM and AVG). MIN, MAX, COUNT(DISTINCT), BOOL_AND and BOOL_OR read the value tables
``pst_x__v<i>`` instead. Output values are PostgreSQL's own arithmetic over the state:
``sum(x)::numeric(18,2)``, ``avg(x)``, HAVING.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlglot import exp

from cdcflow.projections.pgsql import parse_pg_expr, quote
from cdcflow.projections.pgtables import Column, value_table
from cdcflow.projections.plan import Aggregate, Arg, Plan

#: Float infinity, as PostgreSQL and DuckDB both read it. NaN compares above it in both.
_INF = "CAST('Infinity' AS DOUBLE PRECISION)"
#: A float sum keeps its finite part in __s<i> and counts the values it cannot subtract
#: again: +Infinity (__p<i>), -Infinity (__m<i>) and NaN (__x<i>). Removing a NaN from a
#: plain running sum would leave NaN for ever; PostgreSQL's sum is NaN while any NaN (or
#: both infinities) is in, an infinity while one is in, else the finite sum.
_NONFINITE = (("__p", f"= {_INF}"), ("__m", f"= -{_INF}"), ("__x", f"> {_INF}"))


def sum_part_type(arg: Arg) -> str:
    return "double precision" if arg.pg_type in ("real", "double precision") else "numeric"


class AggregateState:
    """The state columns of one grouped plan, and the SQL over them."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.sums = sorted({a.arg.index for a in plan.aggregates if a.kind in ("sum", "avg") and a.arg})
        self.float_sums = [i for i in self.sums if sum_part_type(plan.args[i]) == "double precision"]
        # Non-NULL counts are kept for arguments that can be NULL; for the others it is __count.
        self.counts = sorted(
            {a.arg.index for a in plan.aggregates if a.kind in ("count", "sum", "avg") and a.arg and a.arg.nullable}
        )

    def part_columns(self) -> list[Column]:
        if not self.plan.aggregated:
            return []
        cols = [Column("__count", "bigint")]
        cols += [Column(f"__n{i}", "bigint") for i in self.counts]
        cols += [Column(f"__s{i}", sum_part_type(self.plan.args[i])) for i in self.sums]
        cols += [Column(f"{prefix}{i}", "bigint") for i in self.float_sums for prefix, _ in _NONFINITE]
        return cols

    def part_aggregates(self, arg: Callable[[int], str]) -> list[tuple[str, str]]:
        """(part column, the aggregate over input rows that makes it) for every part after
        __count, in :meth:`part_columns` order; ``arg(i)`` names argument i's column. Valid
        in PostgreSQL and DuckDB alike."""
        out = [(f"__n{i}", f"count({arg(i)})") for i in self.counts]
        for i in self.sums:
            if i in self.float_sums:
                value = arg(i)
                out.append((f"__s{i}", f"sum(CASE WHEN {value} > -{_INF} AND {value} < {_INF} THEN {value} END)"))
            else:
                out.append((f"__s{i}", f"sum({arg(i)})"))
        for i in self.float_sums:
            out += [(f"{prefix}{i}", f"count(CASE WHEN {arg(i)} {test} THEN 1 END)") for prefix, test in _NONFINITE]
        return out

    def render(self, e: exp.Expr, part: Callable[[str], str | None], keys: str, mask: int) -> str:
        """``e`` (an output or HAVING over GROUP BY keys and aggregates) in PostgreSQL, with
        ``part(name)`` the SQL of a state column and ``keys`` the alias holding ``__g<i>``."""
        plan = self.plan

        def swap_aggregate(node: exp.Expr) -> exp.Expr:
            for a in plan.aggregates:
                if node == a.node:
                    return parse_pg_expr(self.aggregate_sql(a, part, keys, mask))
            return node

        def swap_key(node: exp.Expr) -> exp.Expr:
            for g in plan.group_keys:
                if node == g.expr:
                    return parse_pg_expr(f"{keys}.{quote(f'__g{g.index}')}")
            return node

        out = e.copy().transform(swap_aggregate).transform(swap_key)
        return out.sql(dialect="postgres")

    def aggregate_sql(self, agg: Aggregate, part: Callable[[str], str | None], keys: str, mask: int) -> str:
        """One aggregate of a group from its state (``part``, ``keys``: as in :meth:`render`;
        ``mask``: bit n set when GROUP BY key n is NULL)."""

        def column(name: str) -> str:
            value = part(name)
            assert value is not None, name
            return value

        if agg.kind == "count_star":
            return column("__count")
        if agg.kind in ("count", "sum", "avg"):
            assert agg.arg is not None
            i = agg.arg.index
            count = column(f"__n{i}") if agg.arg.nullable else column("__count")
            if agg.kind == "count":
                return count
            return self._sum_or_avg(agg, i, count, column)
        assert agg.arg is not None
        table = quote(value_table(self.plan.name, agg.arg))
        match = (
            " AND ".join(
                f"v.{quote(k)} IS NULL" if mask & (1 << n) else f"v.{quote(k)} = {keys}.{quote(k)}"
                for n, k in enumerate(f"__g{g.index}" for g in self.plan.group_keys)
            )
            or "TRUE"
        )
        if agg.kind in ("min", "max"):
            order = "ASC" if agg.kind == "min" else "DESC"
            return f"(SELECT v.__v FROM {table} AS v WHERE {match} ORDER BY v.__v {order} LIMIT 1)"
        if agg.kind == "count_distinct":
            return f"(SELECT count(*) FROM {table} AS v WHERE {match})"
        return f"(SELECT {agg.kind}(v.__v) FROM {table} AS v WHERE {match})"

    def _sum_or_avg(self, agg: Aggregate, i: int, count: str, column: Callable[[str], str]) -> str:
        """SUM or AVG of argument i: NULL over no values; a float sum's infinities and NaN."""
        assert agg.arg is not None
        total = column(f"__s{i}") if sum_part_type(agg.arg) != "numeric" else f"CAST({column(f'__s{i}')} AS numeric)"
        value = total if agg.kind == "sum" else f"{total} / {count}"
        nonfinite = ""
        if i in self.float_sums:
            plus, minus, nan = (column(f"{prefix}{i}") for prefix, _ in _NONFINITE)
            nonfinite = (
                f"WHEN {nan} > 0 OR ({plus} > 0 AND {minus} > 0) THEN CAST('NaN' AS double precision) "
                f"WHEN {plus} > 0 THEN {_INF} WHEN {minus} > 0 THEN -{_INF} "
            )
        return f"CAST(CASE WHEN {count} = 0 THEN NULL {nonfinite}ELSE {value} END AS {agg.pg_type})"
