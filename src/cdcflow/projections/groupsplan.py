"""The plan of a grouped query (*groups*): ``SELECT keys, aggregates FROM joins [WHERE]
GROUP BY keys [HAVING]``, or the same over ``FROM (branch UNION ALL branch ...) alias``.

The plan takes the query apart: its GROUP BY keys and the arguments of its aggregates are
evaluated per input row in DuckDB (each typed by PostgreSQL first); the aggregates
themselves are kept as state, from which PostgreSQL computes the outputs and HAVING.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlglot import exp

from cdcflow.projections.branches import join_filters, where_conditions
from cdcflow.projections.pgsql import parse_pg
from cdcflow.projections.pgtypes import SUPPORTED, UnsupportedType, arrow_type
from cdcflow.projections.plan import Aggregate, Arg, Branch, GroupKey, Output, Plan
from cdcflow.projections.relations import probe, substitute_tables

if TYPE_CHECKING:
    from cdcflow.projections.analysis import Analyzer

# Aggregate functions of the fragment, by sqlglot class.
AGGREGATES: dict[type, str] = {
    exp.Count: "count",
    exp.Sum: "sum",
    exp.Avg: "avg",
    exp.Min: "min",
    exp.Max: "max",
    exp.LogicalAnd: "bool_and",
    exp.LogicalOr: "bool_or",
}


def plan_groups(analyzer: Analyzer, top: exp.Select, branches: list[Branch], columns: list[tuple[str, str]]) -> Plan:
    """The plan of ``top``, grouped over ``branches`` (one: ``top`` itself; more, or a
    subquery: the UNION ALL in its FROM), whose result has ``columns`` (name, type)."""
    union_columns: list[tuple[str, str]] = []
    if len(branches) == 1 and branches[0].select is top:  # SELECT ... FROM joins GROUP BY ...
        outer_alias = None
        pre_aggregation = [*where_conditions(top), *join_filters(branches[0])]
    else:  # SELECT ... FROM (... UNION ALL ...) alias GROUP BY ...
        outer_alias, union_columns = _outer_scope(analyzer, top)
        pre_aggregation = where_conditions(top)
    scope_from = analyzer.scope_from(top)
    group_exprs = _group_by(analyzer, top)
    aggregates = _aggregates(analyzer, top)
    args, unfiltered = _arguments(aggregates)
    for arg in args:
        arg.nullable = not _never_null(arg.expr, branches if outer_alias else None)
    analyzer.check_expressions([*group_exprs, *(arg.expr for arg in args), *pre_aggregation], scope_from)
    _check_branches(analyzer, branches, over_union=outer_alias is not None)
    key_types = _type_keys_and_arguments(analyzer, group_exprs, args, unfiltered, scope_from)
    for agg in aggregates:
        if agg.kind == "avg" and agg.arg is not None and agg.arg.pg_type == "numeric":
            raise analyzer.fail(
                f"{agg.node.sql(dialect='postgres')}: the average of a numeric without a precision has as many "
                "digits as its inputs' scales give, which cdcflow does not keep; cast the argument "
                "(avg(x::numeric(20,4))) or declare the column numeric(p,s)"
            )
    _aggregate_types(analyzer, top, aggregates, group_exprs)
    group_keys = [GroupKey(i, g, key_types[i], "") for i, g in enumerate(group_exprs)]
    outputs = _outputs(top, columns, group_keys)
    plan = Plan(
        analyzer.definition,
        branches,
        outputs,
        [g.column for g in group_keys],
        analyzer.tables,
        aggregated=True,
        outer=top if outer_alias else None,
        outer_alias=outer_alias,
        group_keys=group_keys,
        args=args,
        aggregates=aggregates,
        having=top.args["having"].this if top.args.get("having") else None,
    )
    if outer_alias:
        plan.union_columns = [c for c, _ in union_columns]
        plan.union_types = [t for _, t in union_columns]
    declared = analyzer.definition.key
    if declared and list(declared) != [o.name for o in outputs if o.name in plan.key]:
        raise analyzer.fail("'-- key:' is for queries without GROUP BY: a grouped result is keyed by its GROUP BY")
    return plan


def _outer_scope(analyzer: Analyzer, top: exp.Select) -> tuple[str, list[tuple[str, str]]]:
    """``SELECT ... FROM (... UNION ALL ...) alias``: the alias, and the union's columns
    (name, type); every column of ``top`` outside the subquery is qualified by the alias."""
    sub = top.args["from_"].this
    alias = (sub.alias or "").lower()
    if not alias:
        raise analyzer.fail("the subquery in FROM needs an alias")
    inner = substitute_tables(sub.this, analyzer.staging_relation()).sql(dialect="postgres")
    union_columns = probe(analyzer.conn, inner)
    names = [c for c, _ in union_columns]
    for col in top.find_all(exp.Column):
        if isinstance(col.this, exp.Star) or col.find_ancestor(exp.Subquery) is sub:
            continue
        name = col.name.lower()
        if col.table and col.table.lower() != alias:
            raise analyzer.fail(f"column {col.sql(dialect='postgres')}: the FROM clause has only {alias}")
        if name not in names:
            outputs = {e.alias.lower() for e in top.expressions if isinstance(e, exp.Alias)}
            if name in outputs and not col.table:
                continue
            raise analyzer.fail(f"column {name} is not a column of {alias} ({', '.join(names)})")
        col.set("table", exp.to_identifier(alias, quoted=True))
        col.set("this", exp.to_identifier(name, quoted=True))
    return alias, union_columns


def _arguments(aggregates: list[Aggregate]) -> tuple[list[Arg], dict[int, exp.Expr]]:
    """The distinct arguments of ``aggregates`` (each aggregate's ``arg`` set to its own),
    and, by argument index, the expression a FILTER's ``CASE WHEN filter THEN x END`` wraps.

    ``count(*) FILTER (WHERE f)`` counts ``CASE WHEN f THEN 1 END``."""
    args: list[Arg] = []
    unfiltered: dict[int, exp.Expr] = {}
    for agg in aggregates:
        call = agg.node.this if isinstance(agg.node, exp.Filter) else agg.node
        arg_expr = _agg_argument(call)
        condition = agg.node.expression.this if isinstance(agg.node, exp.Filter) else None
        if agg.kind == "count_star" and condition is not None:
            agg.kind, arg_expr = "count", exp.Literal.number(1)
        if arg_expr is None:
            continue
        inner = arg_expr
        if condition is not None:
            arg_expr = exp.Case(ifs=[exp.If(this=condition.copy(), true=arg_expr.copy())])
        arg = next((x for x in args if x.expr == arg_expr), None)
        if arg is None:
            arg = Arg(len(args), arg_expr, "")
            args.append(arg)
            if condition is not None:
                unfiltered[arg.index] = inner
        agg.arg = arg
    return args, unfiltered


def _check_branches(analyzer: Analyzer, branches: list[Branch], *, over_union: bool) -> None:
    """The expressions each branch evaluates itself are in the fragment: its join filters,
    and over a UNION ALL also its select list and WHERE."""
    for branch in branches:
        own = [*branch.select.expressions, *where_conditions(branch.select)] if over_union else []
        analyzer.check_expressions([*own, *join_filters(branch)], analyzer.scope_from(branch.select))


def _type_keys_and_arguments(
    analyzer: Analyzer,
    group_exprs: list[exp.Expr],
    args: list[Arg],
    unfiltered: dict[int, exp.Expr],
    scope_from: str,
) -> list[str]:
    """PostgreSQL's types of the GROUP BY keys (returned) and of the arguments (set on
    them), in one probe; each must be a type incremental projections carry."""
    exprs = [*group_exprs, *(arg.expr for arg in args)]
    typed = (
        probe(
            analyzer.conn,
            "SELECT "
            + ", ".join(f"{e.sql(dialect='postgres')} AS c{i}" for i, e in enumerate(exprs))
            + f" {scope_from}",
        )
        if exprs
        else []
    )
    for i, g in enumerate(group_exprs):
        _check_carried(analyzer, g, typed[i][1])
    for arg, (_, t) in zip(args, typed[len(group_exprs) :], strict=True):
        arg.pg_type = t
    _restore_filtered_numeric(analyzer, args, unfiltered, scope_from)
    for arg in args:
        _check_carried(analyzer, arg.expr, arg.pg_type)
    return [t for _, t in typed[: len(group_exprs)]]


def _restore_filtered_numeric(
    analyzer: Analyzer, args: list[Arg], unfiltered: dict[int, exp.Expr], scope_from: str
) -> None:
    """CASE WHEN f THEN x END drops x's numeric(p,s) (its implicit ELSE NULL has none): such
    an argument is cast back to the type x has."""
    lost = [arg for arg in args if arg.pg_type == "numeric" and arg.index in unfiltered]
    if not lost:
        return
    inner_types = probe(
        analyzer.conn,
        "SELECT "
        + ", ".join(f"{unfiltered[arg.index].sql(dialect='postgres')} AS c{i}" for i, arg in enumerate(lost))
        + f" {scope_from}",
    )
    for arg, (_, t) in zip(lost, inner_types, strict=True):
        if t != "numeric":
            arg.expr, arg.pg_type = exp.Cast(this=arg.expr, to=exp.DataType.build(t, dialect="postgres")), t


def _outputs(top: exp.Select, columns: list[tuple[str, str]], group_keys: list[GroupKey]) -> list[Output]:
    """The output columns of ``top``; each GROUP BY key gets its column: the first output
    that is the key expression itself, else a hidden ``__g<i>``."""
    outputs = []
    for (name, t), item in zip(columns, top.expressions, strict=True):
        e = item.unalias()
        outputs.append(Output(name, t, e))
        for key in group_keys:
            if not key.column and e == key.expr:
                key.column = name
    for key in group_keys:
        key.column = key.column or f"__g{key.index}"
    return outputs


def _group_by(analyzer: Analyzer, top: exp.Select) -> list[exp.Expr]:
    """The GROUP BY expressions, each once, ordinals and output names resolved."""
    group = top.args.get("group")
    if group is None:
        return []
    if group.args.get("grouping_sets") or group.args.get("cube") or group.args.get("rollup"):
        raise analyzer.fail("GROUPING SETS, CUBE and ROLLUP are not in the fragment; add '-- mode: full'")
    out = []
    by_alias = {e.alias.lower(): e.this for e in top.expressions if isinstance(e, exp.Alias)}
    for g in group.expressions:
        if isinstance(g, exp.Literal) and not g.is_string:
            g = top.expressions[int(g.this) - 1].unalias()
        elif isinstance(g, exp.Column) and not g.table and g.name.lower() in by_alias:
            g = by_alias[g.name.lower()]
        if g not in out:  # GROUP BY a, a groups as GROUP BY a
            out.append(g.copy())
    # Expressions written with output names resolve to the same expressions.
    for e in [*top.expressions, *([top.args["having"]] if top.args.get("having") else [])]:
        for col in list(e.find_all(exp.Column)):
            if not col.table and col.name.lower() in by_alias and not col.find_ancestor(exp.AggFunc):
                col.replace(by_alias[col.name.lower()].copy())
    return out


def _aggregates(analyzer: Analyzer, top: exp.Select) -> list[Aggregate]:
    """The outermost aggregate calls of the select list and HAVING, each with its kind."""
    found: list[Aggregate] = []
    having = top.args.get("having")
    for e in [*top.expressions, *([having.this] if having else [])]:
        for node in e.find_all(exp.AggFunc):
            if node.find_ancestor(exp.AggFunc):
                continue
            wrapper = node.parent if isinstance(node.parent, exp.Filter) else node
            kind = AGGREGATES.get(type(node))
            if kind is None:
                raise analyzer.fail(
                    f"aggregate {node.sql(dialect='postgres')[:50]} is not in the fragment (it keeps COUNT, SUM, "
                    "AVG, MIN, MAX, COUNT(DISTINCT), BOOL_AND, BOOL_OR); add '-- mode: full'"
                )
            if any(isinstance(n, exp.AggFunc) for n in node.walk() if n is not node):
                raise analyzer.fail(f"{node.sql(dialect='postgres')}: an aggregate inside an aggregate")
            distinct = isinstance(node.this, exp.Distinct)
            if kind == "count":
                if isinstance(node.this, exp.Star) or node.this is None:
                    kind = "count_star"
                elif distinct:
                    kind = "count_distinct"
            elif distinct:
                raise analyzer.fail(f"{node.sql(dialect='postgres')}: DISTINCT is kept for COUNT only")
            if isinstance(node.this, exp.Distinct) and len(node.this.expressions) != 1:
                raise analyzer.fail(f"{node.sql(dialect='postgres')}: COUNT(DISTINCT) of one expression only")
            if any(isinstance(n, exp.Order) for n in node.walk()):
                raise analyzer.fail(f"{node.sql(dialect='postgres')}: ORDER BY inside an aggregate")
            found.append(Aggregate(kind, None, wrapper))
    return found


def _aggregate_types(
    analyzer: Analyzer, top: exp.Select, aggregates: list[Aggregate], group_exprs: list[exp.Expr]
) -> None:
    """Each aggregate's result type, as PostgreSQL types it over the staging tables."""
    if not aggregates:
        return
    items = ", ".join(f"{a.node.sql(dialect='postgres')} AS c{i}" for i, a in enumerate(aggregates))
    shell = top.copy()
    shell.set("expressions", parse_pg(f"SELECT {items}").expressions)
    shell.set("having", None)
    # The GROUP BY as resolved (an ordinal or an output name would point at the new list).
    shell.set("group", exp.Group(expressions=[g.copy() for g in group_exprs]) if group_exprs else None)
    text = substitute_tables(shell, analyzer.staging_relation()).sql(dialect="postgres")
    for a, (_, t) in zip(aggregates, probe(analyzer.conn, text), strict=True):
        a.pg_type = t


def _agg_argument(node: exp.Expr) -> exp.Expr | None:
    this = node.this
    if isinstance(this, exp.Distinct):
        this = this.expressions[0]
    if this is None or isinstance(this, exp.Star):
        return None
    return this


def _never_null(e: exp.Expr, branches: list[Branch] | None) -> bool:
    """Whether ``e`` is NULL for no input row (sound, not complete). ``branches``: the
    UNION ALL branches a column of the outer query comes from."""
    e = e.unnest()
    if isinstance(e, exp.Literal):
        return True
    if isinstance(e, exp.Column) and branches is not None:
        for b in branches:
            names = [i.alias_or_name.lower() for i in branches[0].select.expressions]
            if e.name.lower() not in names:
                return False
            item = b.select.expressions[names.index(e.name.lower())]
            if not _never_null(item.unalias(), None):
                return False
        return True
    if isinstance(e, exp.Coalesce):
        return any(_never_null(x, branches) for x in [e.this, *e.expressions])
    if isinstance(e, exp.Cast):
        return _never_null(e.this, branches)
    if isinstance(e, (exp.Add, exp.Sub, exp.Mul)):
        return _never_null(e.this, branches) and _never_null(e.expression, branches)
    if isinstance(e, exp.Neg):
        return _never_null(e.this, branches)
    if isinstance(e, exp.Case):
        default = e.args.get("default")
        return (
            default is not None
            and _never_null(default, branches)
            and all(_never_null(i.args["true"], branches) for i in e.args["ifs"])
        )
    return False


def _check_carried(analyzer: Analyzer, e: exp.Expr, pg_type: str) -> None:
    try:
        arrow_type(pg_type)
    except UnsupportedType:
        raise analyzer.fail(
            f"{e.sql(dialect='postgres')} has type {pg_type}, which incremental projections do not carry (they "
            f"carry {SUPPORTED}); cast it, or add '-- mode: full'"
        ) from None
