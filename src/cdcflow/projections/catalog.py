"""The captured tables a definition may read: source name, capture, staging table, and
its columns with their PostgreSQL types, read from the serving database's catalog."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from cdcflow import sqlfiles
from cdcflow.sources.base import META_COLUMNS

QUERIES = "projections/catalog.sql"


@dataclass(frozen=True)
class CapturedTable:
    source_table: str  # schema.table in the source
    capture: str
    staging: str
    columns: tuple[tuple[str, str], ...]  # (name, PostgreSQL type) of the source's columns, in order
    key: tuple[str, ...]

    @property
    def types(self) -> dict[str, str]:
        return dict(self.columns)


def read(conn: psycopg.Connection, source_name: str) -> dict[str, CapturedTable]:
    """Every capture of the source whose staging table exists, by source table (``schema.table``)."""
    out: dict[str, CapturedTable] = {}
    rows = conn.execute(sqlfiles.query(QUERIES, "captures"), {"source": source_name}).fetchall()
    for source_table, capture, staging in rows:
        cols = conn.execute(sqlfiles.query(QUERIES, "columns"), {"table": staging}).fetchall()
        if not cols:
            continue
        key = [r[0] for r in conn.execute(sqlfiles.query(QUERIES, "key_columns"), {"index": f"{staging}_key_idx"})]
        columns = tuple((n, t) for n, t in cols if n not in META_COLUMNS and n != "__staged_at")
        out[source_table] = CapturedTable(source_table, capture, staging, columns, tuple(key))
    return out
