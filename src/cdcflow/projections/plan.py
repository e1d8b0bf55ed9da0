"""From a definition to the plan the incremental engine runs: which tables and columns
it reads, how they join, what it groups and aggregates, and the result's key and types.

The query is checked three ways, in this order:

1. its tables must be captured tables (``public.orders`` or ``orders``);
2. PostgreSQL itself must accept it, run over the staging tables' columns: the result's
   column names and exact types (``numeric(18,2)``, ``timestamp``, ``varchar(20)``) are
   PostgreSQL's, and so is every message about a wrong column or type;
3. it must be in the incremental fragment (``docs/projections.md``): one table or a
   chain of INNER/LEFT/RIGHT/FULL joins on equalities of columns, WHERE, GROUP BY with
   COUNT/SUM/AVG/MIN/MAX/COUNT(DISTINCT)/BOOL_AND/BOOL_OR (FILTER allowed), HAVING, and
   UNION ALL of such branches, alone or under one GROUP BY. Anything else is refused with
   one line naming the construct (unless the definition asks for ``mode: full``).

The shapes, normalised:

- *rows*: ``SELECT exprs FROM joins [WHERE]``, or a UNION ALL of such branches; the
  result is keyed (declared with ``-- key:``, or inferred);
- *groups*: ``SELECT keys, aggregates FROM joins [WHERE] GROUP BY keys [HAVING]``, or the
  same over ``FROM (branch UNION ALL branch ...) alias``; keyed by the GROUP BY keys.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from sqlglot import exp

from cdcflow import sqlfiles
from cdcflow.projections import fragment
from cdcflow.projections.catalog import CapturedTable
from cdcflow.projections.definition import Definition
from cdcflow.projections.pgsql import parse_pg, parse_pg_expr, quote
from cdcflow.projections.pgtypes import SUPPORTED, UnsupportedType, arrow_type

Q = "projections/catalog.sql"

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
#: Kinds kept as (group, value) -> count in a state table of their own.
VALUE_KINDS = ("min", "max", "count_distinct", "bool_and", "bool_or")


@dataclass
class Alias:
    name: str
    table: CapturedTable
    branch: int


@dataclass(frozen=True)
class Edge:
    """Equalities ``a.a_cols = b.b_cols`` of one join; a side is *preserved* when the join
    keeps its rows without a match (LEFT: the left side, RIGHT: the right, FULL: both)."""

    branch: int
    a: str
    a_cols: tuple[str, ...]
    b: str
    b_cols: tuple[str, ...]
    a_preserved: bool
    b_preserved: bool
    kind: str  # inner, left, right, full
    #: The join's ON is these equalities alone (no other table, no filter): whether a row of
    #: the preserved side is NULL-extended then depends only on whether one match exists.
    sole: bool = False

    def directions(self) -> list[tuple[str, tuple[str, ...], str, tuple[str, ...], bool]]:
        """(from alias, its columns, to alias, its columns, the *to* side is preserved)."""
        return [
            (self.a, self.a_cols, self.b, self.b_cols, self.b_preserved),
            (self.b, self.b_cols, self.a, self.a_cols, self.a_preserved),
        ]


@dataclass
class Branch:
    index: int
    select: exp.Select  # columns qualified by alias, stars expanded
    aliases: list[Alias]
    edges: list[Edge]

    @property
    def driving(self) -> Alias:
        return self.aliases[0]

    def alias(self, name: str) -> Alias:
        return next(a for a in self.aliases if a.name == name)


@dataclass
class Arg:
    """An aggregate's argument: evaluated per input row (in DuckDB)."""

    index: int
    expr: exp.Expr
    pg_type: str
    #: False when it is never NULL (a constant, coalesce(x, 0), ...): its count of non-NULL
    #: values is then the group's row count, and no state is kept for it.
    nullable: bool = True


@dataclass
class Aggregate:
    kind: str  # count_star, count, sum, avg, min, max, count_distinct, bool_and, bool_or
    arg: Arg | None
    node: exp.Expr  # the call as written (in outputs and HAVING)
    pg_type: str = ""  # its result type in PostgreSQL


@dataclass
class GroupKey:
    index: int
    expr: exp.Expr
    pg_type: str
    column: str  # its column in the projection table


@dataclass
class Output:
    name: str
    pg_type: str
    expr: exp.Expr


@dataclass
class TableUse:
    """What the projection keeps of one captured table: its state table's columns."""

    table: CapturedTable
    columns: list[str] = field(default_factory=list)  # key first, then the columns the query uses
    lookups: set[tuple[str, ...]] = field(default_factory=set)  # join columns rows are found by
    lsn: bool = False  # keep each row's __lsn (a driving table of a rows projection)

    def use(self, column: str) -> None:
        if column not in self.columns:
            self.columns.append(column)

    @property
    def types(self) -> dict[str, str]:
        return self.table.types


@dataclass
class Plan:
    definition: Definition
    branches: list[Branch]
    outputs: list[Output]
    key: list[str]
    tables: dict[str, TableUse]  # by source table
    aggregated: bool = False
    outer: exp.Select | None = None  # groups over a UNION ALL subquery: the outer SELECT
    outer_alias: str | None = None
    group_keys: list[GroupKey] = field(default_factory=list)
    args: list[Arg] = field(default_factory=list)
    aggregates: list[Aggregate] = field(default_factory=list)
    having: exp.Expr | None = None
    union_columns: list[str] = field(default_factory=list)
    union_types: list[str] = field(default_factory=list)  # PostgreSQL's, of union_columns
    #: The whole query as analysed: columns qualified, stars expanded (the branches and the
    #: outer SELECT are parts of it). PostgreSQL runs it over the state in the self-check.
    query: exp.Query | None = None

    @property
    def name(self) -> str:
        return self.definition.name

    def value_args(self) -> list[Arg]:
        """Arguments of MIN/MAX/COUNT(DISTINCT)/BOOL_AND/BOOL_OR: one value state table each."""
        seen: dict[int, Arg] = {}
        for a in self.aggregates:
            if a.kind in VALUE_KINDS and a.arg is not None:
                seen[a.arg.index] = a.arg
        return [seen[i] for i in sorted(seen)]

    def aliases(self) -> Iterable[Alias]:
        for b in self.branches:
            yield from b.aliases


# -- the PostgreSQL side: rendering over other relations, and asking for types ------------


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
        return [(str(n), str(t)) for n, t in conn.execute(sqlfiles.query(Q, "probe_types")).fetchall()]


# -- analysis -------------------------------------------------------------------------


class Analyzer:
    """Builds the :class:`Plan` of one definition (see the module docstring)."""

    def __init__(self, definition: Definition, catalog: dict[str, CapturedTable], conn: psycopg.Connection):
        self.d = definition
        self.catalog = catalog
        self.conn = conn
        self.tables: dict[str, TableUse] = {}

    def fail(self, what: str) -> Exception:
        return self.d.error(what)

    # tables -----------------------------------------------------------------------

    def resolve_tables(self) -> None:
        ctes = cte_names(self.d.query)
        for t in self.d.query.find_all(exp.Table):
            if not t.db and t.name.lower() in ctes:
                continue
            if t.catalog:
                raise self.fail(f"table {t.sql(dialect='postgres')}: name tables as schema.table or table")
            name = qualified_name(t)
            if find_table(t, self.catalog) is None:
                captured = ", ".join(sorted(self.catalog)) or "none yet"
                raise self.fail(
                    f"table {name} is not a captured table (captured: {captured}): add it to CAPTURE_TABLES, "
                    "or correct the name"
                )

    def staging_relation(self) -> Callable[[exp.Table], exp.Expr]:
        return relation_over(self.catalog, lambda t: quote(t.staging))

    def pg_check(self) -> list[tuple[str, str]]:
        """The result's columns as PostgreSQL names and types them; PostgreSQL's own message
        when it rejects the query."""
        text = substitute_tables(self.d.query, self.staging_relation()).sql(dialect="postgres")
        try:
            columns = probe(self.conn, text)
        except psycopg.Error as exc:
            msg = (exc.diag.message_primary or str(exc)).strip()
            raise self.fail(f"PostgreSQL rejects the query over the captured tables: {msg}") from None
        names = [n for n, _ in columns]
        for n in names:
            if n.startswith("__"):
                raise self.fail(f"output column {n}: names starting with __ are cdcflow's own; rename it (AS ...)")
            if n == "?column?":
                raise self.fail("an output column has no name: give every expression a name (AS ...)")
        return columns

    # the fragment -----------------------------------------------------------------

    def check_shape(self, q: exp.Expr) -> None:
        """Constructs no incremental projection supports, wherever they are."""
        for node in q.walk():
            why = fragment.refused_anywhere(node)
            if why:
                raise self.fail(f"{why}; add '-- mode: full' to recompute this projection in full each cycle")

    def flatten_union(self, q: exp.Expr) -> list[exp.Select]:
        if isinstance(q, exp.Union):
            if q.args.get("distinct"):
                raise self.fail(
                    "UNION (without ALL) removes duplicates across branches, which is not in the incremental "
                    "fragment: use UNION ALL, or add '-- mode: full'"
                )
            return self.flatten_union(q.this) + self.flatten_union(q.expression)
        if isinstance(q, exp.Select):
            return [q]
        raise self.fail(f"{q.key.upper()} is not in the incremental fragment; add '-- mode: full'")

    def branch(self, index: int, select: exp.Select, *, top: bool = False) -> Branch:
        """One SELECT ... FROM joins [WHERE]: its aliases, join edges, and columns qualified
        (``top``: the query itself, whose GROUP BY and HAVING the plan takes apart)."""
        for arg in ("group", "having", "order", "limit", "offset", "distinct", "qualify", "windows"):
            if select.args.get(arg) and not (arg in ("group", "having") and top):
                raise self.fail(f"{arg.upper()} inside a UNION ALL branch is not in the incremental fragment")
        from_ = select.args.get("from_")
        if from_ is None:
            raise self.fail("a SELECT without FROM is not in the incremental fragment")
        items = [from_.this] + [j.this for j in select.args.get("joins") or []]
        aliases: list[Alias] = []
        for item in items:
            if not isinstance(item, exp.Table):
                raise self.fail(
                    "a subquery or parenthesised join in FROM is not in the incremental fragment "
                    "(only FROM (... UNION ALL ...) under GROUP BY): write a chain of JOINs"
                )
            name = table_alias(item)
            if any(a.name == name for a in aliases):
                raise self.fail(f"alias {name} is used twice in one FROM clause")
            found = find_table(item, self.catalog)
            assert found is not None  # resolve_tables checked every reference
            aliases.append(Alias(name, found, index))
        b = Branch(index, select, aliases, [])
        for a in aliases:
            self.use(a, "")  # a table read for its rows alone (count(*) FROM t) is read by its key
        self.qualify(b)
        for pos, join in enumerate(select.args.get("joins") or [], start=1):
            b.edges.extend(self.join_edges(b, pos, join))
        return b

    def qualify(self, b: Branch) -> None:
        """Expand ``*`` and ``alias.*``; give every column its alias."""
        by_name = {a.name: a for a in b.aliases}
        out: list[exp.Expr] = []
        for item in b.select.expressions:
            star: exp.Expr | None = item if isinstance(item, exp.Star) else None
            if isinstance(item, exp.Column) and isinstance(item.this, exp.Star):
                star = item
            if star is None:
                out.append(item)
                continue
            which = [by_name[star.table.lower()]] if isinstance(star, exp.Column) and star.table else b.aliases
            for a in which:
                out.extend(exp.column(c, table=a.name, quoted=True) for c, _ in a.table.columns)
        b.select.set("expressions", out)
        output_aliases = {e.alias.lower() for e in out if isinstance(e, exp.Alias)}
        for col in list(b.select.find_all(exp.Column)):
            if isinstance(col.this, exp.Star) or self._in_nested_select(col, b.select):
                continue
            name = col.name.lower()
            if col.table:
                alias = col.table.lower()
                if alias not in by_name:
                    raise self.fail(f"column {col.sql(dialect='postgres')}: no table {alias} in its FROM clause")
                a = by_name[alias]
            else:
                owners = [a for a in b.aliases if name in a.table.types]
                if not owners and name in output_aliases:
                    continue  # an output name used in GROUP BY / HAVING: resolved there
                if len(owners) != 1:
                    raise self.fail(f"column {name} is {'ambiguous' if owners else 'unknown'} in its FROM clause")
                a = owners[0]
            if name not in a.table.types:
                raise self.fail(f"column {a.name}.{name}: table {a.table.source_table} has no such column")
            col.set("table", exp.to_identifier(a.name, quoted=True))
            col.set("this", exp.to_identifier(name, quoted=True))
            col.set("db", None)
            col.set("catalog", None)
            self.use(a, name)

    @staticmethod
    def _in_nested_select(node: exp.Expr, top: exp.Select) -> bool:
        parent = node.parent
        while parent is not None and parent is not top:
            if isinstance(parent, exp.Select):
                return True
            parent = parent.parent
        return False

    def use(self, a: Alias, column: str) -> TableUse:
        use = self.tables.get(a.table.source_table)
        if use is None:
            use = self.tables[a.table.source_table] = TableUse(a.table)
            if not a.table.key:
                raise self.fail(f"table {a.table.source_table} has no key in staging: cdcflow needs its primary key")
            for k in a.table.key:
                use.use(k)
        if column:
            try:
                arrow_type(a.table.types[column])
            except UnsupportedType as exc:
                raise self.fail(
                    f"column {a.table.source_table}.{column} has type {exc}, which incremental projections do not "
                    f"carry (they carry {SUPPORTED}); add '-- mode: full' to compute this projection in PostgreSQL"
                ) from None
            use.use(column)
        return use

    def join_edges(self, b: Branch, pos: int, join: exp.Join) -> list[Edge]:
        right = b.aliases[pos]
        if join.args.get("method") or (join.args.get("kind") or "").upper() == "CROSS":
            raise self.fail(f"{join.sql(dialect='postgres')[:60]}: NATURAL and CROSS joins are not in the fragment")
        side = (join.args.get("side") or "").lower()
        kind = side or "inner"
        using = join.args.get("using")
        on = join.args.get("on")
        if using:
            conds = []
            for ident in using:
                col = ident.name.lower()
                owners = [a for a in b.aliases[:pos] if col in a.table.types]
                if len(owners) != 1 or col not in right.table.types:
                    raise self.fail(f"JOIN {right.name} USING ({col}): the column must be in exactly one table before")
                conds.append(f"{quote(owners[0].name)}.{quote(col)} = {quote(right.name)}.{quote(col)}")
                self.use(owners[0], col)
                self.use(right, col)
            on = parse_pg_expr(" AND ".join(conds))
            join.set("using", None)
            join.set("on", on)
        if on is None:
            raise self.fail(f"the join of {right.name} has no ON condition (write JOIN ... ON a.x = b.y)")
        pairs: dict[str, list[tuple[str, str]]] = {}
        filtered = False
        for conj in _conjuncts(on):
            names = {c.table.lower() for c in conj.find_all(exp.Column)}
            if len(names) <= 1:
                filtered = True
                continue  # a condition on one table: a filter, evaluated as written
            if not (
                isinstance(conj, exp.EQ)
                and isinstance(conj.this, exp.Column)
                and isinstance(conj.expression, exp.Column)
            ):
                raise self.fail(
                    f"join condition {conj.sql(dialect='postgres')}: the fragment joins on equalities of columns "
                    "(a.x = b.y [AND ...]); add '-- mode: full' for other join conditions"
                )
            left_col, right_col = conj.this, conj.expression
            if left_col.table.lower() == right.name:
                left_col, right_col = right_col, left_col
            if right_col.table.lower() != right.name:
                raise self.fail(
                    f"join condition {conj.sql(dialect='postgres')}: it must compare {right.name} "
                    "with a table joined before it"
                )
            pairs.setdefault(left_col.table.lower(), []).append((left_col.name.lower(), right_col.name.lower()))
        if not pairs:
            raise self.fail(f"the join of {right.name} has no equality with a table before it (a cross join)")
        edges = []
        for left, cols in pairs.items():
            for lc, rc in cols:
                self.use(b.alias(left), lc)
                self.use(right, rc)
                self.tables[b.alias(left).table.source_table].lookups.add((lc,))
                self.tables[right.table.source_table].lookups.add((rc,))
            left_cols = tuple(c for c, _ in cols)
            right_cols = tuple(c for _, c in cols)
            if len(cols) > 1:
                self.tables[b.alias(left).table.source_table].lookups.add(left_cols)
                self.tables[right.table.source_table].lookups.add(right_cols)
            edges.append(
                Edge(
                    b.index,
                    left,
                    left_cols,
                    right.name,
                    right_cols,
                    kind in ("left", "full"),
                    kind in ("right", "full"),
                    kind,
                    sole=len(pairs) == 1 and not filtered,
                )
            )
        return edges

    # pre-aggregation expressions (evaluated in DuckDB) --------------------------------

    def check_expressions(self, exprs: Iterable[exp.Expr], scope_from: str) -> None:
        """Every pre-aggregation expression must be in the fragment; the operand types the
        DuckDB translation depends on are asked of PostgreSQL in one probe per scope."""
        needs: list[exp.Expr] = []
        for e in exprs:
            for node in e.walk():
                why = fragment.refused_before_aggregation(node)
                if why:
                    raise self.fail(f"{why}; add '-- mode: full' to compute this projection in PostgreSQL")
                needs.extend(fragment.typed_operands(node))
        if not needs:
            return
        items = ", ".join(f"{n.sql(dialect='postgres')} AS c{i}" for i, n in enumerate(needs))
        types = probe(self.conn, f"SELECT {items} {scope_from}")
        for n, (_, t) in zip(needs, types, strict=True):
            n.meta["pg_type"] = t
        for e in exprs:
            for node in e.walk():
                why = fragment.refused_for_types(node)
                if why:
                    raise self.fail(f"{why}; add '-- mode: full' to compute this projection in PostgreSQL")

    def scope_from(self, select: exp.Select) -> str:
        """``FROM ... [WHERE ...]`` of ``select`` over the staging tables, in PostgreSQL."""
        shell = select.copy()
        shell.set("expressions", [exp.Literal.number(1)])
        for arg in ("group", "having", "order", "limit"):
            shell.set(arg, None)
        text = substitute_tables(shell, self.staging_relation()).sql(dialect="postgres")
        assert text.upper().startswith("SELECT 1 "), text
        return text[len("SELECT 1 ") :]

    # the two shapes -----------------------------------------------------------------

    def rows(self, branches: list[Branch], columns: list[tuple[str, str]]) -> Plan:
        for b in branches:
            if len(b.select.expressions) != len(columns):
                raise self.fail("every UNION ALL branch must have as many columns as the first")
            self.check_expressions(
                [*b.select.expressions, *_where(b.select), *_on_filters(b)], self.scope_from(b.select)
            )
            drive = self.use(b.driving, "")
            drive.lsn = True
        outputs = [Output(n, t, e) for (n, t), e in zip(columns, branches[0].select.expressions, strict=True)]
        plan = Plan(self.d, branches, outputs, [], self.tables)
        plan.key = self.rows_key(plan)
        return plan

    def rows_key(self, plan: Plan) -> list[str]:
        names = [o.name for o in plan.outputs]
        if self.d.key:
            for k in self.d.key:
                if names.count(k) != 1:
                    raise self.fail(f"key column {k} is not an output column (outputs: {', '.join(names)})")
            why = self.key_gap(plan, list(self.d.key))
            if why:
                raise self.fail(f"key ({', '.join(self.d.key)}) does not identify a row: {why}")
            return list(self.d.key)
        if len(plan.branches) == 1:
            b = plan.branches[0]
            for candidate in (b.aliases[:1], b.aliases):
                cols = []
                for a in candidate:
                    for k in a.table.key:
                        name = _output_of(b, a.name, k, names)
                        if name is None:
                            break
                        cols.append(name)
                    else:
                        continue
                    break
                else:
                    if cols and not self.key_gap(plan, cols):
                        return cols
        raise self.fail(
            "no key: a row of this query is not identified by its tables' primary keys in the output; "
            "declare one with '-- key: col[, col ...]' naming output columns that identify a row"
            + (
                " (with UNION ALL, include a constant column that tells the branches apart)"
                if len(plan.branches) > 1
                else ""
            )
        )

    def key_gap(self, plan: Plan, key: list[str]) -> str | None:
        """Why ``key`` may not identify a row (None: it does). Sound, not complete: an alias
        is identified by its primary key in the key, or by a join on its whole primary key
        from an identified alias (many-to-one), in a direction where it is not NULL-extended."""
        names = [o.name for o in plan.outputs]
        positions = [names.index(k) for k in key]
        for b in plan.branches:
            known = set()
            for a in b.aliases:
                if all(_output_of(b, a.name, k, names) in key for k in a.table.key):
                    known.add(a.name)
            changed = True
            while changed:
                changed = False
                for e in b.edges:
                    for src, _src_cols, dst, dst_cols, _pres in e.directions():
                        allowed = (
                            e.kind == "inner" or (e.kind == "left" and dst == e.b) or (e.kind == "right" and dst == e.a)
                        )
                        dst_key = b.alias(dst).table.key
                        if src in known and dst not in known and allowed and set(dst_key) <= set(dst_cols):
                            known.add(dst)
                            changed = True
            missing = [a.name for a in b.aliases if a.name not in known]
            if missing:
                return (
                    f"table {b.alias(missing[0]).table.source_table} ({missing[0]}) is neither in the key by "
                    "its primary key nor joined many-to-one on its primary key"
                )
        if len(plan.branches) > 1:
            for p in positions:
                lits = [b.select.expressions[p].unalias() for b in plan.branches]
                if all(isinstance(x, exp.Literal) for x in lits) and len({x.sql() for x in lits}) == len(lits):
                    return None
            return "with UNION ALL, the key needs a column that is a different constant in each branch"
        return None

    def groups(self, top: exp.Select, branches: list[Branch], columns: list[tuple[str, str]]) -> Plan:
        outer_alias = None
        if len(branches) == 1 and branches[0].select is top:
            scope = top  # SELECT ... FROM joins GROUP BY ...
            scope_from = self.scope_from(top)
            pre = [*_where(top), *_on_filters(branches[0])]
        else:
            outer_alias, scope, union_cols = self.outer_scope(top, branches)
            scope_from = self.scope_from(top)
            pre = list(_where(top))
        group_exprs = self.group_by(top)
        aggs = self.aggregates(top)
        args: list[Arg] = []
        unfiltered: dict[int, exp.Expr] = {}  # a FILTER's CASE by the argument it wraps
        for a in aggs:
            node = a.node.this if isinstance(a.node, exp.Filter) else a.node
            arg_expr = _agg_argument(node)
            filt = a.node.expression.this if isinstance(a.node, exp.Filter) else None
            if a.kind == "count_star" and filt is not None:
                a.kind, arg_expr = "count", exp.Literal.number(1)
            if arg_expr is None:
                continue
            inner = arg_expr
            if filt is not None:
                arg_expr = exp.Case(ifs=[exp.If(this=filt.copy(), true=arg_expr.copy())])
            same = next((x for x in args if x.expr == arg_expr), None)
            if same is None:
                same = Arg(len(args), arg_expr, "")
                args.append(same)
                if filt is not None:
                    unfiltered[same.index] = inner
            a.arg = same
        for x in args:
            x.nullable = not _never_null(x.expr, branches if outer_alias else None)
        self.check_expressions([*group_exprs, *(x.expr for x in args), *pre], scope_from)
        if outer_alias is None:
            for b in branches:
                self.check_expressions(list(_on_filters(b)), self.scope_from(b.select))
        else:
            for b in branches:
                self.check_expressions(
                    [*b.select.expressions, *_where(b.select), *_on_filters(b)], self.scope_from(b.select)
                )
        typed = (
            probe(
                self.conn,
                "SELECT "
                + ", ".join(
                    f"{e.sql(dialect='postgres')} AS c{i}"
                    for i, e in enumerate([*group_exprs, *(x.expr for x in args)])
                )
                + f" {scope_from}",
            )
            if (group_exprs or args)
            else []
        )
        for i, g in enumerate(group_exprs):
            _check_carried(self, g, typed[i][1])
        for x, (_, t) in zip(args, typed[len(group_exprs) :], strict=True):
            x.pg_type = t
        lost = [x for x in args if x.pg_type == "numeric" and x.index in unfiltered]
        if lost:
            # CASE WHEN f THEN x END drops x's numeric(p,s) (its implicit ELSE NULL has none):
            # the argument is cast back to the type x has.
            inner_types = probe(
                self.conn,
                "SELECT "
                + ", ".join(f"{unfiltered[x.index].sql(dialect='postgres')} AS c{i}" for i, x in enumerate(lost))
                + f" {scope_from}",
            )
            for x, (_, t) in zip(lost, inner_types, strict=True):
                if t != "numeric":
                    x.expr, x.pg_type = exp.Cast(this=x.expr, to=exp.DataType.build(t, dialect="postgres")), t
        for x in args:
            _check_carried(self, x.expr, x.pg_type)
        for a in aggs:
            if a.kind == "avg" and a.arg is not None and a.arg.pg_type == "numeric":
                raise self.fail(
                    f"{a.node.sql(dialect='postgres')}: the average of a numeric without a precision has as many "
                    "digits as its inputs' scales give, which cdcflow does not keep; cast the argument "
                    "(avg(x::numeric(20,4))) or declare the column numeric(p,s)"
                )
        self.aggregate_types(top, aggs, group_exprs)
        outputs = []
        group_keys = [GroupKey(i, g, typed[i][1], "") for i, g in enumerate(group_exprs)]
        for (name, t), item in zip(columns, top.expressions, strict=True):
            e = item.unalias()
            outputs.append(Output(name, t, e))
            for key in group_keys:
                if not key.column and e == key.expr:
                    key.column = name
        for key in group_keys:
            key.column = key.column or f"__g{key.index}"
        plan = Plan(
            self.d,
            branches,
            outputs,
            [g.column for g in group_keys],
            self.tables,
            aggregated=True,
            outer=scope if outer_alias else None,
            outer_alias=outer_alias,
            group_keys=group_keys,
            args=args,
            aggregates=aggs,
            having=top.args["having"].this if top.args.get("having") else None,
        )
        if outer_alias:
            plan.union_columns = [c for c, _ in union_cols]
            plan.union_types = [t for _, t in union_cols]
        if self.d.key and list(self.d.key) != [o.name for o in outputs if o.name in plan.key]:
            raise self.fail("'-- key:' is for queries without GROUP BY: a grouped result is keyed by its GROUP BY")
        return plan

    def outer_scope(self, top: exp.Select, branches: list[Branch]) -> tuple[str, exp.Select, list[tuple[str, str]]]:
        sub = top.args["from_"].this
        alias = (sub.alias or "").lower()
        if not alias:
            raise self.fail("the subquery in FROM needs an alias")
        inner = substitute_tables(sub.this, self.staging_relation()).sql(dialect="postgres")
        union_cols = probe(self.conn, inner)
        names = [c for c, _ in union_cols]
        for col in top.find_all(exp.Column):
            if isinstance(col.this, exp.Star) or any(col.find_ancestor(exp.Subquery) is sub for _ in [0]):
                continue
            name = col.name.lower()
            if col.table and col.table.lower() != alias:
                raise self.fail(f"column {col.sql(dialect='postgres')}: the FROM clause has only {alias}")
            if name not in names:
                outputs = {e.alias.lower() for e in top.expressions if isinstance(e, exp.Alias)}
                if name in outputs and not col.table:
                    continue
                raise self.fail(f"column {name} is not a column of {alias} ({', '.join(names)})")
            col.set("table", exp.to_identifier(alias, quoted=True))
            col.set("this", exp.to_identifier(name, quoted=True))
        return alias, top, union_cols

    def group_by(self, top: exp.Select) -> list[exp.Expr]:
        group = top.args.get("group")
        if group is None:
            return []
        if group.args.get("grouping_sets") or group.args.get("cube") or group.args.get("rollup"):
            raise self.fail("GROUPING SETS, CUBE and ROLLUP are not in the fragment; add '-- mode: full'")
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

    def aggregates(self, top: exp.Select) -> list[Aggregate]:
        found: list[Aggregate] = []
        having = top.args.get("having")
        for e in [*top.expressions, *([having.this] if having else [])]:
            for node in e.find_all(exp.AggFunc):
                if node.find_ancestor(exp.AggFunc):
                    continue
                wrapper = node.parent if isinstance(node.parent, exp.Filter) else node
                kind = AGGREGATES.get(type(node))
                if kind is None:
                    raise self.fail(
                        f"aggregate {node.sql(dialect='postgres')[:50]} is not in the fragment (it keeps COUNT, SUM, "
                        "AVG, MIN, MAX, COUNT(DISTINCT), BOOL_AND, BOOL_OR); add '-- mode: full'"
                    )
                if any(isinstance(n, exp.AggFunc) for n in node.walk() if n is not node):
                    raise self.fail(f"{node.sql(dialect='postgres')}: an aggregate inside an aggregate")
                distinct = isinstance(node.this, exp.Distinct)
                if kind == "count":
                    if isinstance(node.this, exp.Star) or node.this is None:
                        kind = "count_star"
                    elif distinct:
                        kind = "count_distinct"
                elif distinct:
                    raise self.fail(f"{node.sql(dialect='postgres')}: DISTINCT is kept for COUNT only")
                if isinstance(node.this, exp.Distinct) and len(node.this.expressions) != 1:
                    raise self.fail(f"{node.sql(dialect='postgres')}: COUNT(DISTINCT) of one expression only")
                if any(isinstance(n, exp.Order) for n in node.walk()):
                    raise self.fail(f"{node.sql(dialect='postgres')}: ORDER BY inside an aggregate")
                found.append(Aggregate(kind, None, wrapper))
        return found

    def aggregate_types(self, top: exp.Select, aggs: list[Aggregate], group_exprs: list[exp.Expr]) -> None:
        if not aggs:
            return
        items = ", ".join(f"{a.node.sql(dialect='postgres')} AS c{i}" for i, a in enumerate(aggs))
        shell = top.copy()
        shell.set("expressions", parse_pg(f"SELECT {items}").expressions)
        shell.set("having", None)
        # The GROUP BY as resolved (an ordinal or an output name would point at the new list).
        shell.set("group", exp.Group(expressions=[g.copy() for g in group_exprs]) if group_exprs else None)
        text = substitute_tables(shell, self.staging_relation()).sql(dialect="postgres")
        for a, (_, t) in zip(aggs, probe(self.conn, text), strict=True):
            a.pg_type = t

    def run(self) -> Plan:
        plan = self._run()
        plan.query = self.q
        return plan

    def _run(self) -> Plan:
        self.check_shape(self.d.query)  # first: WITH names would read as tables not captured
        self.resolve_tables()
        columns = self.pg_check()
        q = self.q = self.d.query.copy()
        if isinstance(q, exp.Union):
            branches = [self.branch(i, s) for i, s in enumerate(self.flatten_union(q))]
            if any(_has_aggregate(b.select) for b in branches):
                raise self.fail(
                    "aggregates inside UNION ALL branches: aggregate over the union instead "
                    "(SELECT ... FROM (... UNION ALL ...) u GROUP BY ...)"
                )
            return self.rows(branches, columns)
        assert isinstance(q, exp.Select)
        for arg in ("order", "limit", "offset", "distinct"):
            if q.args.get(arg):
                raise self.fail(f"{arg.upper()} is not in the incremental fragment; add '-- mode: full'")
        aggregated = q.args.get("group") is not None or _has_aggregate(q)
        from_ = q.args.get("from_")
        if from_ is not None and isinstance(from_.this, exp.Subquery):
            if not aggregated:
                raise self.fail(
                    "a subquery in FROM is in the fragment only under GROUP BY; select from the tables directly"
                )
            if q.args.get("joins"):
                raise self.fail("a subquery in FROM joined with other tables is not in the fragment")
            inner = from_.this.this
            selects = self.flatten_union(inner)
            branches = [self.branch(i, s) for i, s in enumerate(selects)]
            if any(_has_aggregate(b.select) for b in branches):
                raise self.fail("an aggregate inside the subquery in FROM is not in the fragment")
            return self.groups(q, branches, columns)
        b = self.branch(0, q, top=True)
        if aggregated:
            return self.groups(q, [b], columns)
        if q.args.get("having"):
            raise self.fail("HAVING without GROUP BY or aggregates")
        return self.rows([b], columns)


def analyze(definition: Definition, catalog: dict[str, CapturedTable], conn: psycopg.Connection) -> Plan:
    """The plan of an incremental definition, or DefinitionError naming what prevents it."""
    return Analyzer(definition, catalog, conn).run()


def check_full(
    definition: Definition, catalog: dict[str, CapturedTable], conn: psycopg.Connection
) -> list[tuple[str, str]]:
    """A ``mode: full`` definition: its tables are captured and PostgreSQL accepts it; its columns."""
    a = Analyzer(definition, catalog, conn)
    a.resolve_tables()
    return a.pg_check()


# -- helpers --------------------------------------------------------------------------


def _conjuncts(e: exp.Expr) -> list[exp.Expr]:
    e = e.unnest()
    if isinstance(e, exp.And):
        return _conjuncts(e.this) + _conjuncts(e.expression)
    return [e]


def _where(select: exp.Select) -> list[exp.Expr]:
    w = select.args.get("where")
    return [w.this] if w is not None else []


def _on_filters(b: Branch) -> list[exp.Expr]:
    return [j.args["on"] for j in b.select.args.get("joins") or [] if j.args.get("on") is not None]


def _has_aggregate(select: exp.Select) -> bool:
    having = select.args.get("having")
    return any(
        node.find_ancestor(exp.Select) is select or node.find_ancestor(exp.Select) is None
        for e in [*select.expressions, *([having] if having else [])]
        for node in e.find_all(exp.AggFunc)
    )


def _agg_argument(node: exp.Expr) -> exp.Expr | None:
    this = node.this
    if isinstance(this, exp.Distinct):
        this = this.expressions[0]
    if this is None or isinstance(this, exp.Star):
        return None
    return this


def _output_of(b: Branch, alias: str, column: str, names: list[str]) -> str | None:
    """The output column that is ``alias.column`` as written (None: not in the output)."""
    for name, item in zip(names, b.select.expressions, strict=False):
        e = item.unalias()
        if isinstance(e, exp.Column) and e.table.lower() == alias and e.name.lower() == column:
            return name
    return None


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


def _check_carried(a: Analyzer, e: exp.Expr, pg_type: str) -> None:
    try:
        arrow_type(pg_type)
    except UnsupportedType:
        raise a.fail(
            f"{e.sql(dialect='postgres')} has type {pg_type}, which incremental projections do not carry (they "
            f"carry {SUPPORTED}); cast it, or add '-- mode: full'"
        ) from None


__all__ = ["Plan", "analyze", "check_full", "itertools"]
