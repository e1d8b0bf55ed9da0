"""One branch of a definition, ``SELECT ... FROM joins [WHERE]``: its aliases, its columns
qualified by alias (stars expanded), and the equalities of its joins as :class:`Edge`\\ s.

Reading a branch also records, in the analyzer's :class:`TableUse`\\ s, every column the
branch reads of each table and the join columns rows are looked up by.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlglot import exp

from cdcflow.projections.pgsql import parse_pg_expr, quote
from cdcflow.projections.plan import Alias, Branch, Edge
from cdcflow.projections.relations import find_table, table_alias

if TYPE_CHECKING:
    from cdcflow.projections.analysis import Analyzer

#: Clauses a UNION ALL branch may not have (a query's own GROUP BY and HAVING are the plan's).
_BRANCH_REFUSED = ("group", "having", "order", "limit", "offset", "distinct", "qualify", "windows")


def read_branch(analyzer: Analyzer, index: int, select: exp.Select, *, top: bool = False) -> Branch:
    """One SELECT ... FROM joins [WHERE]: its aliases, join edges, and columns qualified
    (``top``: the query itself, whose GROUP BY and HAVING the plan takes apart)."""
    for arg in _BRANCH_REFUSED:
        if select.args.get(arg) and not (arg in ("group", "having") and top):
            raise analyzer.fail(f"{arg.upper()} inside a UNION ALL branch is not in the incremental fragment")
    branch = Branch(index, select, _from_aliases(analyzer, index, select), [])
    for alias in branch.aliases:
        analyzer.use(alias, "")  # a table read for its rows alone (count(*) FROM t) is read by its key
    _qualify(analyzer, branch)
    for pos, join in enumerate(select.args.get("joins") or [], start=1):
        branch.edges.extend(_join_edges(analyzer, branch, pos, join))
    return branch


def _from_aliases(analyzer: Analyzer, index: int, select: exp.Select) -> list[Alias]:
    """The tables of the FROM clause and its JOINs, in order, by alias."""
    from_ = select.args.get("from_")
    if from_ is None:
        raise analyzer.fail("a SELECT without FROM is not in the incremental fragment")
    items = [from_.this] + [j.this for j in select.args.get("joins") or []]
    aliases: list[Alias] = []
    for item in items:
        if not isinstance(item, exp.Table):
            raise analyzer.fail(
                "a subquery or parenthesised join in FROM is not in the incremental fragment "
                "(only FROM (... UNION ALL ...) under GROUP BY): write a chain of JOINs"
            )
        name = table_alias(item)
        if any(a.name == name for a in aliases):
            raise analyzer.fail(f"alias {name} is used twice in one FROM clause")
        found = find_table(item, analyzer.catalog)
        assert found is not None  # resolve_tables checked every reference
        aliases.append(Alias(name, found, index))
    return aliases


def _qualify(analyzer: Analyzer, branch: Branch) -> None:
    """Expand ``*`` and ``alias.*``; give every column its alias."""
    by_name = {a.name: a for a in branch.aliases}
    out = _expand_stars(branch, by_name)
    branch.select.set("expressions", out)
    output_aliases = {e.alias.lower() for e in out if isinstance(e, exp.Alias)}
    for col in list(branch.select.find_all(exp.Column)):
        if isinstance(col.this, exp.Star) or _in_nested_select(col, branch.select):
            continue
        name = col.name.lower()
        if col.table:
            alias_name = col.table.lower()
            if alias_name not in by_name:
                raise analyzer.fail(f"column {col.sql(dialect='postgres')}: no table {alias_name} in its FROM clause")
            alias = by_name[alias_name]
        else:
            owners = [a for a in branch.aliases if name in a.table.types]
            if not owners and name in output_aliases:
                continue  # an output name used in GROUP BY / HAVING: resolved there
            if len(owners) != 1:
                raise analyzer.fail(f"column {name} is {'ambiguous' if owners else 'unknown'} in its FROM clause")
            alias = owners[0]
        if name not in alias.table.types:
            raise analyzer.fail(f"column {alias.name}.{name}: table {alias.table.source_table} has no such column")
        col.set("table", exp.to_identifier(alias.name, quoted=True))
        col.set("this", exp.to_identifier(name, quoted=True))
        col.set("db", None)
        col.set("catalog", None)
        analyzer.use(alias, name)


def _expand_stars(branch: Branch, by_name: dict[str, Alias]) -> list[exp.Expr]:
    """The select list with ``*`` and ``alias.*`` replaced by the tables' columns."""
    out: list[exp.Expr] = []
    for item in branch.select.expressions:
        star: exp.Expr | None = item if isinstance(item, exp.Star) else None
        if isinstance(item, exp.Column) and isinstance(item.this, exp.Star):
            star = item
        if star is None:
            out.append(item)
            continue
        which = [by_name[star.table.lower()]] if isinstance(star, exp.Column) and star.table else branch.aliases
        for alias in which:
            out.extend(exp.column(c, table=alias.name, quoted=True) for c, _ in alias.table.columns)
    return out


def _in_nested_select(node: exp.Expr, top: exp.Select) -> bool:
    parent = node.parent
    while parent is not None and parent is not top:
        if isinstance(parent, exp.Select):
            return True
        parent = parent.parent
    return False


def _join_edges(analyzer: Analyzer, branch: Branch, pos: int, join: exp.Join) -> list[Edge]:
    """The edges of the join of alias ``pos`` (one per alias before it it is compared with)."""
    right = branch.aliases[pos]
    if join.args.get("method") or (join.args.get("kind") or "").upper() == "CROSS":
        raise analyzer.fail(f"{join.sql(dialect='postgres')[:60]}: NATURAL and CROSS joins are not in the fragment")
    kind = (join.args.get("side") or "").lower() or "inner"
    on = _using_as_on(analyzer, branch, pos, join) if join.args.get("using") else join.args.get("on")
    if on is None:
        raise analyzer.fail(f"the join of {right.name} has no ON condition (write JOIN ... ON a.x = b.y)")
    pairs, filtered = _equalities(analyzer, right, on)
    edges = []
    for left, cols in pairs.items():
        _record_lookups(analyzer, branch.alias(left), right, cols)
        edges.append(
            Edge(
                branch.index,
                left,
                tuple(c for c, _ in cols),
                right.name,
                tuple(c for _, c in cols),
                kind in ("left", "full"),
                kind in ("right", "full"),
                kind,
                sole=len(pairs) == 1 and not filtered,
            )
        )
    return edges


def _using_as_on(analyzer: Analyzer, branch: Branch, pos: int, join: exp.Join) -> exp.Expr:
    """``JOIN t USING (c, ...)`` rewritten in place as ``JOIN t ON owner.c = t.c AND ...``."""
    right = branch.aliases[pos]
    conditions = []
    for ident in join.args["using"]:
        col = ident.name.lower()
        owners = [a for a in branch.aliases[:pos] if col in a.table.types]
        if len(owners) != 1 or col not in right.table.types:
            raise analyzer.fail(f"JOIN {right.name} USING ({col}): the column must be in exactly one table before")
        conditions.append(f"{quote(owners[0].name)}.{quote(col)} = {quote(right.name)}.{quote(col)}")
        analyzer.use(owners[0], col)
        analyzer.use(right, col)
    on = parse_pg_expr(" AND ".join(conditions))
    join.set("using", None)
    join.set("on", on)
    return on


def _equalities(analyzer: Analyzer, right: Alias, on: exp.Expr) -> tuple[dict[str, list[tuple[str, str]]], bool]:
    """The column equalities of ``on`` between ``right`` and each alias before it, as
    (left column, right column) pairs by left alias; and whether ``on`` also has a
    condition on one table alone (a filter, evaluated as written)."""
    pairs: dict[str, list[tuple[str, str]]] = {}
    filtered = False
    for conj in _conjuncts(on):
        names = {c.table.lower() for c in conj.find_all(exp.Column)}
        if len(names) <= 1:
            filtered = True
            continue
        if not (
            isinstance(conj, exp.EQ) and isinstance(conj.this, exp.Column) and isinstance(conj.expression, exp.Column)
        ):
            raise analyzer.fail(
                f"join condition {conj.sql(dialect='postgres')}: the fragment joins on equalities of columns "
                "(a.x = b.y [AND ...]); add '-- mode: full' for other join conditions"
            )
        left_col, right_col = conj.this, conj.expression
        if left_col.table.lower() == right.name:
            left_col, right_col = right_col, left_col
        if right_col.table.lower() != right.name:
            raise analyzer.fail(
                f"join condition {conj.sql(dialect='postgres')}: it must compare {right.name} "
                "with a table joined before it"
            )
        pairs.setdefault(left_col.table.lower(), []).append((left_col.name.lower(), right_col.name.lower()))
    if not pairs:
        raise analyzer.fail(f"the join of {right.name} has no equality with a table before it (a cross join)")
    return pairs, filtered


def _record_lookups(analyzer: Analyzer, left: Alias, right: Alias, cols: list[tuple[str, str]]) -> None:
    """Rows of each side's table are looked up by each of its join columns, and by all of
    them together."""
    for left_col, right_col in cols:
        analyzer.use(left, left_col).lookups.add((left_col,))
        analyzer.use(right, right_col).lookups.add((right_col,))
    if len(cols) > 1:
        analyzer.tables[left.table.source_table].lookups.add(tuple(c for c, _ in cols))
        analyzer.tables[right.table.source_table].lookups.add(tuple(c for _, c in cols))


def _conjuncts(e: exp.Expr) -> list[exp.Expr]:
    e = e.unnest()
    if isinstance(e, exp.And):
        return _conjuncts(e.this) + _conjuncts(e.expression)
    return [e]


def where_conditions(select: exp.Select) -> list[exp.Expr]:
    """The WHERE condition of ``select`` (none or one)."""
    where = select.args.get("where")
    return [where.this] if where is not None else []


def join_filters(branch: Branch) -> list[exp.Expr]:
    """The ON conditions of the branch's joins."""
    return [j.args["on"] for j in branch.select.args.get("joins") or [] if j.args.get("on") is not None]
