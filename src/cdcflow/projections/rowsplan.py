"""The plan of a query without GROUP BY (*rows*): ``SELECT exprs FROM joins [WHERE]``, or a
UNION ALL of such branches, and the key that identifies each of its rows (declared with
``-- key:``, or inferred from the tables' primary keys in the output)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlglot import exp

from cdcflow.projections.branches import join_filters, where_conditions
from cdcflow.projections.plan import Alias, Branch, Output, Plan

if TYPE_CHECKING:
    from cdcflow.projections.analysis import Analyzer


def plan_rows(analyzer: Analyzer, branches: list[Branch], columns: list[tuple[str, str]]) -> Plan:
    """The plan of the UNION ALL of ``branches`` (one: a plain query), whose result has
    ``columns`` (name, PostgreSQL type)."""
    for branch in branches:
        if len(branch.select.expressions) != len(columns):
            raise analyzer.fail("every UNION ALL branch must have as many columns as the first")
        analyzer.check_expressions(
            [*branch.select.expressions, *where_conditions(branch.select), *join_filters(branch)],
            analyzer.scope_from(branch.select),
        )
        driving = analyzer.use(branch.driving, "")
        driving.lsn = True
    outputs = [Output(n, t, e) for (n, t), e in zip(columns, branches[0].select.expressions, strict=True)]
    plan = Plan(analyzer.definition, branches, outputs, [], analyzer.tables)
    plan.key = _rows_key(analyzer, plan)
    return plan


def _rows_key(analyzer: Analyzer, plan: Plan) -> list[str]:
    names = [o.name for o in plan.outputs]
    declared = analyzer.definition.key
    if declared:
        for k in declared:
            if names.count(k) != 1:
                raise analyzer.fail(f"key column {k} is not an output column (outputs: {', '.join(names)})")
        why = key_gap(plan, list(declared))
        if why:
            raise analyzer.fail(f"key ({', '.join(declared)}) does not identify a row: {why}")
        return list(declared)
    if len(plan.branches) == 1:
        branch = plan.branches[0]
        # The driving table's primary key first, else every table's.
        for candidate in (branch.aliases[:1], branch.aliases):
            cols = _primary_key_outputs(branch, candidate, names)
            if cols and not key_gap(plan, cols):
                return cols
    raise analyzer.fail(
        "no key: a row of this query is not identified by its tables' primary keys in the output; "
        "declare one with '-- key: col[, col ...]' naming output columns that identify a row"
        + (
            " (with UNION ALL, include a constant column that tells the branches apart)"
            if len(plan.branches) > 1
            else ""
        )
    )


def _primary_key_outputs(branch: Branch, aliases: list[Alias], names: list[str]) -> list[str]:
    """The output columns holding the primary keys of ``aliases`` ([] unless all are output)."""
    cols = []
    for alias in aliases:
        for k in alias.table.key:
            name = _output_of(branch, alias.name, k, names)
            if name is None:
                return []
            cols.append(name)
    return cols


def key_gap(plan: Plan, key: list[str]) -> str | None:
    """Why ``key`` may not identify a row (None: it does). Sound, not complete: an alias
    is identified by its primary key in the key, or by a join on its whole primary key
    from an identified alias (many-to-one), in a direction where it is not NULL-extended."""
    names = [o.name for o in plan.outputs]
    positions = [names.index(k) for k in key]
    for branch in plan.branches:
        known = _identified_aliases(branch, key, names)
        missing = [a.name for a in branch.aliases if a.name not in known]
        if missing:
            return (
                f"table {branch.alias(missing[0]).table.source_table} ({missing[0]}) is neither in the key by "
                "its primary key nor joined many-to-one on its primary key"
            )
    if len(plan.branches) > 1:
        for pos in positions:
            values = [b.select.expressions[pos].unalias() for b in plan.branches]
            if all(isinstance(v, exp.Literal) for v in values) and len({v.sql() for v in values}) == len(values):
                return None
        return "with UNION ALL, the key needs a column that is a different constant in each branch"
    return None


def _identified_aliases(branch: Branch, key: list[str], names: list[str]) -> set[str]:
    """The aliases of ``branch`` whose row a value of ``key`` identifies (see :func:`key_gap`)."""
    known = set()
    for alias in branch.aliases:
        if all(_output_of(branch, alias.name, k, names) in key for k in alias.table.key):
            known.add(alias.name)
    changed = True
    while changed:
        changed = False
        for edge in branch.edges:
            for source, _source_cols, target, target_cols, _preserved in edge.directions():
                not_null_extended = (
                    edge.kind == "inner"
                    or (edge.kind == "left" and target == edge.b)
                    or (edge.kind == "right" and target == edge.a)
                )
                target_key = branch.alias(target).table.key
                if (
                    source in known
                    and target not in known
                    and not_null_extended
                    and set(target_key) <= set(target_cols)
                ):
                    known.add(target)
                    changed = True
    return known


def _output_of(branch: Branch, alias: str, column: str, names: list[str]) -> str | None:
    """The output column that is ``alias.column`` as written (None: not in the output)."""
    for name, item in zip(names, branch.select.expressions, strict=False):
        e = item.unalias()
        if isinstance(e, exp.Column) and e.table.lower() == alias and e.name.lower() == column:
            return name
    return None
