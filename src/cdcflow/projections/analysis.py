"""From a definition to the plan the incremental engine runs (:mod:`.plan`).

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

- *rows* (:mod:`.rowsplan`): ``SELECT exprs FROM joins [WHERE]``, or a UNION ALL of such
  branches; the result is keyed (declared with ``-- key:``, or inferred);
- *groups* (:mod:`.groupsplan`): ``SELECT keys, aggregates FROM joins [WHERE] GROUP BY keys
  [HAVING]``, or the same over ``FROM (branch UNION ALL branch ...) alias``; keyed by the
  GROUP BY keys.

Each branch (one ``SELECT ... FROM joins [WHERE]``) is read by :mod:`.branches`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import psycopg
from sqlglot import exp

from cdcflow.projections import fragment
from cdcflow.projections.branches import read_branch
from cdcflow.projections.catalog import CapturedTable
from cdcflow.projections.definition import Definition
from cdcflow.projections.groupsplan import plan_groups
from cdcflow.projections.pgsql import quote
from cdcflow.projections.pgtypes import SUPPORTED, UnsupportedType, arrow_type
from cdcflow.projections.plan import Alias, Plan, TableUse
from cdcflow.projections.relations import cte_names, find_table, probe, qualified_name, relation_over, substitute_tables
from cdcflow.projections.rowsplan import plan_rows


class Analyzer:
    """Builds the :class:`Plan` of one definition (see the module docstring)."""

    def __init__(self, definition: Definition, catalog: dict[str, CapturedTable], conn: psycopg.Connection):
        self.definition = definition
        self.catalog = catalog
        self.conn = conn
        self.tables: dict[str, TableUse] = {}

    def fail(self, what: str) -> Exception:
        return self.definition.error(what)

    # tables -----------------------------------------------------------------------

    def resolve_tables(self) -> None:
        ctes = cte_names(self.definition.query)
        for t in self.definition.query.find_all(exp.Table):
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
        text = substitute_tables(self.definition.query, self.staging_relation()).sql(dialect="postgres")
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

    def check_shape(self, query: exp.Expr) -> None:
        """Constructs no incremental projection supports, wherever they are."""
        for node in query.walk():
            why = fragment.refused_anywhere(node)
            if why:
                raise self.fail(f"{why}; add '-- mode: full' to recompute this projection in full each cycle")

    def flatten_union(self, query: exp.Expr) -> list[exp.Select]:
        """The SELECTs of a UNION ALL (one: the query itself)."""
        if isinstance(query, exp.Union):
            if query.args.get("distinct"):
                raise self.fail(
                    "UNION (without ALL) removes duplicates across branches, which is not in the incremental "
                    "fragment: use UNION ALL, or add '-- mode: full'"
                )
            return self.flatten_union(query.this) + self.flatten_union(query.expression)
        if isinstance(query, exp.Select):
            return [query]
        raise self.fail(f"{query.key.upper()} is not in the incremental fragment; add '-- mode: full'")

    # what the plan reads ------------------------------------------------------------

    def use(self, alias: Alias, column: str) -> TableUse:
        """The TableUse of ``alias``'s table, which now reads ``column`` too ("": its key alone)."""
        use = self.tables.get(alias.table.source_table)
        if use is None:
            use = self.tables[alias.table.source_table] = TableUse(alias.table)
            if not alias.table.key:
                raise self.fail(
                    f"table {alias.table.source_table} has no key in staging: cdcflow needs its primary key"
                )
            for k in alias.table.key:
                use.use(k)
        if column:
            try:
                arrow_type(alias.table.types[column])
            except UnsupportedType as exc:
                raise self.fail(
                    f"column {alias.table.source_table}.{column} has type {exc}, which incremental projections do not "
                    f"carry (they carry {SUPPORTED}); add '-- mode: full' to compute this projection in PostgreSQL"
                ) from None
            use.use(column)
        return use

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

    def run(self) -> Plan:
        plan = self._run()
        plan.query = self.query
        return plan

    def _run(self) -> Plan:
        self.check_shape(self.definition.query)  # first: WITH names would read as tables not captured
        self.resolve_tables()
        columns = self.pg_check()
        q = self.query = self.definition.query.copy()
        if isinstance(q, exp.Union):
            branches = [read_branch(self, i, s) for i, s in enumerate(self.flatten_union(q))]
            if any(_has_aggregate(b.select) for b in branches):
                raise self.fail(
                    "aggregates inside UNION ALL branches: aggregate over the union instead "
                    "(SELECT ... FROM (... UNION ALL ...) u GROUP BY ...)"
                )
            return plan_rows(self, branches, columns)
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
            branches = [read_branch(self, i, s) for i, s in enumerate(selects)]
            if any(_has_aggregate(b.select) for b in branches):
                raise self.fail("an aggregate inside the subquery in FROM is not in the fragment")
            return plan_groups(self, q, branches, columns)
        b = read_branch(self, 0, q, top=True)
        if aggregated:
            return plan_groups(self, q, [b], columns)
        if q.args.get("having"):
            raise self.fail("HAVING without GROUP BY or aggregates")
        return plan_rows(self, [b], columns)


def analyze(definition: Definition, catalog: dict[str, CapturedTable], conn: psycopg.Connection) -> Plan:
    """The plan of an incremental definition, or DefinitionError naming what prevents it."""
    return Analyzer(definition, catalog, conn).run()


def check_full(
    definition: Definition, catalog: dict[str, CapturedTable], conn: psycopg.Connection
) -> list[tuple[str, str]]:
    """A ``mode: full`` definition: its tables are captured and PostgreSQL accepts it; its columns."""
    analyzer = Analyzer(definition, catalog, conn)
    analyzer.resolve_tables()
    return analyzer.pg_check()


def _has_aggregate(select: exp.Select) -> bool:
    having = select.args.get("having")
    return any(
        node.find_ancestor(exp.Select) is select or node.find_ancestor(exp.Select) is None
        for e in [*select.expressions, *([having] if having else [])]
        for node in e.find_all(exp.AggFunc)
    )
