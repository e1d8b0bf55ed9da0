"""SQL kept in ``.sql`` files, loaded by name with importlib.resources.

A file is either a script, run whole (bootstrap's numbered files), or a set of named
blocks::

    -- name: read_watermarks
    -- What it does, one line.
    SELECT ...;

Blocks may hold ``{identifier}`` placeholders for psycopg.sql composition and
``%(value)s`` parameters. Identifiers are always quoted by psycopg.sql, never formatted
into the text.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

from psycopg import sql

_NAME_RE = re.compile(r"^--\s*name:\s*([A-Za-z0-9_]+)\s*$", re.M)


def read_text(path: str) -> str:
    """The text of ``cdcflow/sql/<path>``."""
    return resources.files("cdcflow").joinpath("sql", path).read_text(encoding="utf-8")


def scripts(folder: str) -> list[tuple[str, str]]:
    """``(name, text)`` of the numbered scripts in ``sql/<folder>``, in order."""
    base = resources.files("cdcflow").joinpath("sql", folder)
    names = sorted(p.name for p in base.iterdir() if p.name.endswith(".sql"))
    return [(n, base.joinpath(n).read_text(encoding="utf-8")) for n in names]


def parse_blocks(text: str) -> dict[str, str]:
    """Split a file into its named blocks. Raises ValueError on a duplicate name."""
    out: dict[str, str] = {}
    matches = list(_NAME_RE.finditer(text))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body_lines = [line for line in text[m.end() : end].strip().splitlines() if not line.startswith("--")]
        body = "\n".join(body_lines).strip().rstrip(";").strip()
        if m.group(1) in out:
            raise ValueError(f"duplicate query name {m.group(1)!r}")
        out[m.group(1)] = body
    return out


@functools.cache
def queries(path: str) -> dict[str, str]:
    """Named blocks of ``cdcflow/sql/<path>``."""
    return parse_blocks(read_text(path))


def query(path: str, name: str, **identifiers: sql.Composable) -> sql.Composed:
    """One named block, with ``{name}`` placeholders filled by psycopg.sql objects."""
    try:
        text = queries(path)[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in sql/{path}") from None
    return sql.SQL(text).format(**identifiers)  # type: ignore[arg-type]
