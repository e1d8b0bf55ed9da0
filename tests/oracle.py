"""Oracle checks: staging's latest state per key must equal the source tables."""

from __future__ import annotations

import psycopg

from tests.workload import TABLES


def source_rows(src: psycopg.Connection, table: str) -> set[str]:
    key, cols = TABLES[table]
    return {r[0] for r in src.execute(f"SELECT ROW({cols})::text FROM {table}").fetchall()}


def staged_latest_rows(serving: psycopg.Connection, table: str) -> set[str]:
    key, cols = TABLES[table]
    rows = serving.execute(
        f"SELECT ROW({cols})::text, __op FROM (SELECT DISTINCT ON ({key}) * FROM stg_cdc_{table} "
        f"WHERE __op <> 3 ORDER BY {key}, __lsn DESC, __seqval DESC) t"
    ).fetchall()
    return {text for text, op in rows if op != 1}


def assert_latest_state_equals_source(src: psycopg.Connection, serving: psycopg.Connection) -> None:
    for table in TABLES:
        want, got = source_rows(src, table), staged_latest_rows(serving, table)
        assert got == want, f"{table}: missing {sorted(want - got)[:3]}, extra {sorted(got - want)[:3]}"
