"""The plan of an incremental projection: which tables and columns it reads, how they
join, what it groups and aggregates, and the result's key and types. :mod:`.analysis`
builds it from a definition; the storage, the closure and the DuckDB queries follow it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlglot import exp

from cdcflow.projections.catalog import CapturedTable
from cdcflow.projections.definition import Definition

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
