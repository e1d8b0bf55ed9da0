"""Projection definitions: one ``.sql`` file per projection, a PostgreSQL query over
captured tables, with a few header comments.

::

    -- proj_orders_latest: the latest state of every order, with its customer's segment
    -- key: order_id
    SELECT o.order_id, o.customer_id, c.segment, o.amount
    FROM orders o LEFT JOIN customers c ON c.customer_id = o.customer_id

The file's name (without ``.sql``) names the projection and its table: ``proj_<name>``,
or the name itself when it already starts with ``proj_``. Header comments before the
query (each ``-- word: value``):

- ``key: col[, col ...]`` the output columns that identify a row of a query without
  GROUP BY (inferred when the query's tables are joined many-to-one on their keys);
- ``mode: full`` recompute the whole result every cycle in PostgreSQL, for a query
  outside the incremental fragment (``mode: incremental`` is the default).

The query is parsed with sqlglot's PostgreSQL dialect: a file is one statement.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import sqlglot
from sqlglot import exp

from cdcflow.errors import DefinitionError
from cdcflow.projections.pgsql import PostgresDialect

#: Bumped when the engine's storage of a projection, or the values it computes, change:
#: every projection is then rebuilt once, as if its definition had changed.
ENGINE_VERSION = "3"
MODES = ("incremental", "full")
_DIRECTIVE_RE = re.compile(r"^--\s*(key|mode)\s*:\s*(.*?)\s*$", re.I)
_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]*$")
#: The longest projection table name: state tables add a suffix within PostgreSQL's 63.
MAX_NAME = 48


@dataclass(frozen=True)
class Definition:
    """One projection definition file, parsed."""

    name: str  # the projection and its table, proj_...
    path: str  # where it was read from (shown in every message about it)
    text: str
    query: exp.Query
    key: tuple[str, ...] | None
    mode: str
    description: str
    builtin: bool = False

    @property
    def digest(self) -> str:
        """Identifies the definition as the engine reads it: a change rebuilds the projection."""
        body = "\0".join([ENGINE_VERSION, self.mode, ",".join(self.key or ()), self.query.sql(dialect="postgres")])
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    def error(self, what: str) -> DefinitionError:
        return DefinitionError(f"projection {self.name} ({self.path}): {what}")


def table_name(stem: str) -> str:
    return stem if stem.startswith("proj_") else f"proj_{stem}"


def parse(text: str, path: str, stem: str, *, builtin: bool = False) -> Definition:
    """A definition from the text of its file; DefinitionError names the file and what is wrong."""
    name = table_name(stem.lower())
    where = f"projection {name} ({path})"
    if not _NAME_RE.match(name) or len(name) > MAX_NAME or "__" in name:
        raise DefinitionError(
            f"{where}: the file name makes the table name {name!r}: use letters, digits and single _ "
            f"(at most {MAX_NAME} characters with proj_), starting with a letter"
        )
    key: tuple[str, ...] | None = None
    mode = "incremental"
    description = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("--"):
            break
        m = _DIRECTIVE_RE.match(stripped)
        if m is None:
            if not description:
                description = stripped.lstrip("-").strip()
            continue
        word, value = m.group(1).lower(), m.group(2)
        if word == "key":
            key = tuple(k.strip().lower() for k in value.split(",") if k.strip())
            if not key:
                raise DefinitionError(f"{where}: '-- key:' names no column (write -- key: col[, col ...])")
        else:
            mode = value.lower()
            if mode not in MODES:
                raise DefinitionError(f"{where}: '-- mode: {value}' is not one of {', '.join(MODES)}")
    _check_intervals(text, where)
    try:
        statements = [s for s in sqlglot.parse(text, read=PostgresDialect) if s is not None]
    except sqlglot.errors.ParseError as exc:
        first = exc.errors[0] if exc.errors else {}
        detail = str(first.get("description", exc)).split(".")[0]
        raise DefinitionError(
            f"{where}: syntax error at line {first.get('line', '?')}, column {first.get('col', '?')}: {detail} "
            f"(near {first.get('highlight', '')!r})"
        ) from None
    if len(statements) != 1:
        raise DefinitionError(f"{where}: expected one SELECT statement, found {len(statements)} statements")
    (query,) = statements
    if not isinstance(query, exp.Query):
        raise DefinitionError(f"{where}: expected a SELECT query, found {query.key.upper()}")
    for node in query.walk():
        node.comments = None  # comments are the reader's; the engine (and the digest) ignore them
    return Definition(name, path, text, query, key, mode, description, builtin)


_INTERVAL_RE = re.compile(
    r"^\s*(-?\d+(\.\d+)?\s+(microsecond|millisecond|second|minute|hour|day|week|month|year)s?\s*)+$", re.I
)


def _check_intervals(text: str, where: str) -> None:
    """Interval constants must read ``'<n> <unit> ...'``: the parser reads some other forms
    with a different meaning (``interval '1 day ago'`` as one day ahead), so they are refused
    before the query is parsed, whatever the mode."""
    from sqlglot.dialects.postgres import Postgres
    from sqlglot.tokens import TokenType

    try:
        tokens = Postgres().tokenize(text)
    except sqlglot.errors.TokenError:
        return  # the parser reports it, with its position
    for a, b in zip(tokens, tokens[1:], strict=False):
        if a.token_type == TokenType.INTERVAL and b.token_type == TokenType.STRING and not _INTERVAL_RE.match(b.text):
            raise DefinitionError(
                f"{where}: interval '{b.text}' at line {b.line}: write interval constants as '<n> <unit> ...' with "
                "units spelled out (second, minute, hour, day, week, month, year), without ago, abbreviations or "
                "clock forms"
            )


def read_file(path: Path, *, builtin: bool = False) -> Definition:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DefinitionError(f"projection file {path}: cannot be read: {exc}") from None
    return parse(text, str(path), path.stem, builtin=builtin)


#: The projections shipped with cdcflow, each enabled by its flag (name -> setting).
BUILTIN = {
    "proj_orders_kpi_by_minute_segment": "enable_proj_orders_kpi",
    "proj_orders_latest": "enable_proj_orders_latest",
}


def builtin(name: str) -> Definition:
    path = resources.files("cdcflow").joinpath("projections", "builtin", f"{name}.sql")
    return parse(path.read_text(encoding="utf-8"), f"cdcflow/projections/builtin/{name}.sql", name, builtin=True)


def folder_files(folder: Path) -> list[Path]:
    """The definition files of a folder, by name; a missing folder is a DefinitionError."""
    if not folder.is_dir():
        raise DefinitionError(f"PROJECTIONS_DIR={str(folder)!r} is not a folder: create it or unset the variable")
    return sorted(p for p in folder.iterdir() if p.suffix == ".sql" and p.is_file())
