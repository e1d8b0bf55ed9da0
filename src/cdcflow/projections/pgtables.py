"""The tables a projection keeps in the serving database: their names (within
PostgreSQL's 63 bytes), their columns, and the statements that create them."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from psycopg import sql

from cdcflow.projections.plan import Arg

#: Free space left on each page for updates in place (HOT: no index entry to write when no
#: indexed column changes): group state is updated by every cycle that touches the group,
#: stored rows by each change of theirs.
FILLFACTOR_GROUPS = 80
FILLFACTOR_ROWS = 90


@dataclass(frozen=True)
class Column:
    name: str
    type: str


def bounded_name(text: str) -> str:
    """A table name within PostgreSQL's 63 bytes (long ones keep a hash of the whole)."""
    if len(text) <= 63:
        return text
    return text[:54] + "_" + hashlib.sha256(text.encode()).hexdigest()[:8]


def prefix(projection: str) -> str:
    """State tables of ``proj_x`` are ``pst_x__...``."""
    return "pst_" + projection.removeprefix("proj_") + "__"


def state_table(projection: str, capture: str) -> str:
    return bounded_name(prefix(projection) + capture)


def value_table(projection: str, arg: Arg) -> str:
    return bounded_name(f"{prefix(projection)}v{arg.index}")


def groups_table(projection: str) -> str:
    return bounded_name(prefix(projection) + "groups")


def temp_name(kind: str, n: int | str = "") -> str:
    return f"cdcflow_{kind}{n}"


def column_names(names: Iterable[str], prefix: str | None = None) -> sql.Composed:
    """``a, b, ...`` quoted (``prefix.a, prefix.b, ...`` with a table alias)."""
    if prefix:
        return sql.SQL(", ").join(sql.SQL(prefix + ".{}").format(sql.Identifier(n)) for n in names)
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def create_table(
    table: str,
    cols: list[Column],
    *,
    unique: list[str] | None = None,
    primary: list[str] | None = None,
    fillfactor: int = FILLFACTOR_ROWS,
) -> list[sql.Composed]:
    body = [sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.type)) for c in cols]  # type: ignore[arg-type]
    if primary:
        body.append(sql.SQL("PRIMARY KEY ({})").format(column_names(primary)))
    out: list[sql.Composed] = [
        sql.SQL("CREATE TABLE {} ({}) WITH (fillfactor = {})").format(
            sql.Identifier(table), sql.SQL(", ").join(body), sql.Literal(fillfactor)
        )
    ]
    if unique:
        out.append(
            sql.SQL("CREATE UNIQUE INDEX {} ON {} ({}) NULLS NOT DISTINCT").format(
                sql.Identifier(bounded_name(f"{table}_key")), sql.Identifier(table), column_names(unique)
            )
        )
    return out


def create_temp(name: str, cols: list[Column]) -> sql.Composed:
    body = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.type))  # type: ignore[arg-type]
        for c in cols
    )
    return sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(sql.Identifier(name), body)
