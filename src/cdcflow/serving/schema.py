"""Serving-side bootstrap: run the numbered scripts, create staging from source metadata."""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql

from cdcflow import sqlfiles
from cdcflow.errors import SchemaDriftError
from cdcflow.sources.base import META_COLUMNS, TableSpec

log = logging.getLogger(__name__)
Q = "serving_runtime.sql"


def run_scripts(conn: psycopg.Connection, folder: str) -> None:
    for name, text in sqlfiles.scripts(folder):
        log.info("running %s/%s", folder, name)
        conn.execute(text)  # type: ignore[arg-type]  # our own packaged scripts


def ensure_staging(conn: psycopg.Connection, spec: TableSpec) -> None:
    """Create ``stg_cdc_<table>`` if missing; if present, check it still matches the source."""
    table = sql.Identifier(spec.staging_table)
    columns = sql.SQL(",\n    ").join(
        sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.type_sql)) for c in spec.columns
    )
    conn.execute(
        sqlfiles.query(Q, "create_staging", table=table, columns=columns, pk=sql.Identifier(spec.staging_table + "_pkey"))
    )
    conn.execute(
        sqlfiles.query(
            Q,
            "create_staging_key_index",
            index=sql.Identifier(spec.staging_table + "_key_idx"),
            table=table,
            keys=sql.SQL(", ").join(sql.Identifier(k) for k in spec.key_columns),
        )
    )
    have = conn.execute(sqlfiles.query(Q, "staging_columns"), {"table": spec.staging_table}).fetchall()
    have_cols = [(n, t) for n, t in have if n not in META_COLUMNS and n != "__staged_at"]
    want_cols = [(c.name, c.type_sql) for c in spec.columns]
    if have_cols != want_cols:
        have_map = dict(have_cols)
        for name, type_sql in want_cols:
            if name not in have_map:
                raise SchemaDriftError(
                    f"staging table {spec.staging_table} has no column {name!r} that {spec.qualified} has: "
                    f"add it (ALTER TABLE {spec.staging_table} ADD COLUMN ...) or drop and re-bootstrap"
                )
            if have_map[name] != type_sql:
                raise SchemaDriftError(
                    f"column {spec.qualified}.{name} is {type_sql} in the source but {have_map[name]} in "
                    f"{spec.staging_table}: alter the staging column to match, then run 'cdcflow run' again"
                )
        extra = [n for n, _ in have_cols if n not in dict(want_cols)]
        raise SchemaDriftError(
            f"column {spec.qualified}.{extra[0]} is staged but no longer in the source: capture "
            f"{spec.capture} is paused; restore the column or re-bootstrap this capture"
        )


def ensure_control_rows(conn: psycopg.Connection, source_name: str, engine: str, specs: list[TableSpec]) -> None:
    for spec in specs:
        conn.execute(
            sqlfiles.query(Q, "ensure_watermark"),
            {
                "source": source_name,
                "capture": spec.capture,
                "engine": engine,
                "source_table": spec.qualified,
                "staging_table": spec.staging_table,
            },
        )
