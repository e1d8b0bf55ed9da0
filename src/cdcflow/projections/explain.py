"""What ``cdcflow projections list | check | explain`` print: per projection, how it is
kept, what it reads, and the state it keeps."""

from __future__ import annotations

from cdcflow.projections import base
from cdcflow.projections.pgtables import groups_table, state_table, value_table

KINDS = {
    "count_star": "count(*)",
    "count": "count of non-NULL",
    "sum": "sum",
    "avg": "sum and count (avg)",
    "min": "per-value counts (min)",
    "max": "per-value counts (max)",
    "count_distinct": "per-value counts (count distinct)",
    "bool_and": "per-value counts (bool_and)",
    "bool_or": "per-value counts (bool_or)",
}


def summary(projection: base.Projection) -> dict:
    """One projection as ``list`` shows it."""
    from cdcflow.projections.incremental import SqlProjection

    out = {
        "projection": projection.name,
        "file": projection.definition_file,
        "mode": projection.mode,
        "captures": list(projection.captures),
    }
    if isinstance(projection, SqlProjection):
        plan = projection.plan
        out["shape"] = ("grouped" if plan.aggregated else "rows") + (
            " over UNION ALL" if len(plan.branches) > 1 else ""
        )
        out["key"] = list(plan.key)
    return out


def explain(projection: base.Projection) -> str:
    """A readable account of how the projection is kept."""
    from cdcflow.projections.incremental import SqlProjection

    lines = [f"projection {projection.name}", f"  file: {projection.definition_file}", f"  mode: {projection.mode}"]
    if not isinstance(projection, SqlProjection):
        lines.append("  recomputed in full in PostgreSQL at every cycle with new changes (cost grows with history)")
        lines.append(f"  reads: {', '.join(projection.captures)}")
        return "\n".join(lines)
    plan, layout = projection.plan, projection.layout
    lines.append(f"  result: table {plan.name}, keyed by ({', '.join(plan.key) or 'one row'})")
    for o in plan.outputs:
        lines.append(f"    {o.name} {o.pg_type}")
    lines.append("  reads (each kept in a state table with the columns the query uses):")
    for use in plan.tables.values():
        lookups = ", ".join("(" + ", ".join(c) + ")" for c in sorted(use.lookups)) or "its key only"
        state = state_table(plan.name, use.table.capture)
        lines.append(
            f"    {use.table.source_table} (capture {use.table.capture}) -> {state}:"
            f" key ({', '.join(use.table.key)}), columns {', '.join(use.columns)}; found by {lookups}"
        )
    for b in plan.branches:
        head = f"  branch {b.index + 1}: " if len(plan.branches) > 1 else "  joins: "
        if not b.edges:
            lines.append(head + f"{b.driving.table.source_table} alone")
        for e in b.edges:
            lines.append(
                head
                + f"{e.a}.({', '.join(e.a_cols)}) = {e.b}.({', '.join(e.b_cols)}) [{e.kind}"
                + (
                    ", " + " and ".join(n for n, p in ((e.a, e.a_preserved), (e.b, e.b_preserved)) if p) + " preserved"
                    if e.a_preserved or e.b_preserved
                    else ""
                )
                + "]"
            )
            head = " " * len(head)
    if plan.aggregated:
        lines.append(
            "  group state"
            + (
                f" (in {groups_table(plan.name)}; HAVING filters the result)"
                if layout.having
                else " (in the result table's __ columns)"
            )
            + ":"
        )
        lines.append("    __count: input rows of the group (the group exists while it is > 0)")
        for a in plan.aggregates:
            if a.arg is None:
                continue
            where = (
                f" in {value_table(plan.name, a.arg)}"
                if a.kind in ("min", "max", "count_distinct", "bool_and", "bool_or")
                else ""
            )
            lines.append(f"    {a.node.sql(dialect='postgres')}: {KINDS[a.kind]} of argument {a.arg.index}{where}")
    lines.append("  per cycle, in DuckDB, over the loaded rows after the delta:")
    lines.append("    " + projection.duckq.tuples("new"))
    return "\n".join(lines)
