"""Serving-side bootstrap: run the numbered scripts, create staging from source metadata."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import psycopg
from psycopg import sql

from cdcflow import sqlfiles
from cdcflow.errors import ConfigError, SourceConfigError
from cdcflow.sources.base import (
    META_COLUMNS,
    TableSpec,
    dropped_column_message,
    no_key_message,
    retyped_column_message,
)

log = logging.getLogger(__name__)
QUERIES = "serving_runtime.sql"


#: The serving database's oldest supported version: the KPI projection writes with MERGE (15+).
MIN_SERVING_VERSION = 150000


def check_serving_version(conn: psycopg.Connection) -> None:
    """One clear line when the serving PostgreSQL is too old for cdcflow."""
    version = conn.info.server_version
    if version < MIN_SERVING_VERSION:
        raise ConfigError(
            f"serving PostgreSQL is version {version // 10000}: cdcflow needs {MIN_SERVING_VERSION // 10000} or newer "
            "(its projections write with MERGE); point SERVING_DSN at a newer server"
        )


def run_scripts(conn: psycopg.Connection, folder: str) -> None:
    """Run the numbered scripts of ``sql/<folder>`` unless this exact set already ran.

    Every start bootstraps; skipping scripts already applied means a restart takes no DDL
    locks, so it never waits behind a running instance's open transaction.
    """
    scripts = sqlfiles.scripts(folder)
    digest = hashlib.sha256("\0".join(f"{n}\0{t}" for n, t in scripts).encode()).hexdigest()
    conn.execute(sqlfiles.query(QUERIES, "create_schema_version"))
    row = conn.execute(sqlfiles.query(QUERIES, "schema_digest"), {"folder": folder}).fetchone()
    if row is not None and row[0] == digest:
        return
    for name, text in scripts:
        log.info("running %s/%s", folder, name)
        conn.execute(text)  # type: ignore[arg-type]  # our own packaged scripts
    conn.execute(sqlfiles.query(QUERIES, "set_schema_digest"), {"folder": folder, "digest": digest})


def ensure_staging(conn: psycopg.Connection, spec: TableSpec) -> None:
    """Create ``stg_cdc_<table>`` if missing (an existing one is left as it is: see reconcile)."""
    table = sql.Identifier(spec.staging_table)
    exists = conn.execute("SELECT to_regclass(quote_ident(%s)) IS NOT NULL", (spec.staging_table,)).fetchone()
    if exists and exists[0]:
        return
    if not spec.key_columns:
        raise SourceConfigError(
            f"captured table {spec.qualified} has no primary key or replica identity index: add a primary key "
            "(cdcflow keeps the latest state of each row by key), or remove it from CAPTURE_TABLES"
        )
    columns = sql.SQL(",\n    ").join(
        sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.type_sql)) for c in spec.columns
    )
    conn.execute(
        sqlfiles.query(
            QUERIES, "create_staging", table=table, columns=columns, pk=sql.Identifier(spec.staging_table + "_pkey")
        )
    )
    conn.execute(
        sqlfiles.query(
            QUERIES,
            "create_staging_key_index",
            index=sql.Identifier(spec.staging_table + "_key_idx"),
            table=table,
            keys=sql.SQL(", ").join(sql.Identifier(k) for k in spec.key_columns),
        )
    )


def drop_indexes_if_empty(conn: psycopg.Connection, spec: TableSpec) -> bool:
    """Inside the caller's transaction: when ``spec``'s staging table is empty, drop its
    primary key and key index, so that a bulk load costs about what the raw COPY does
    instead of two B-tree insertions per row; :func:`ensure_indexes` builds them again, in
    one sorted pass each. Only while nothing else writes the table: the ingestion's retry
    path needs the primary key. Returns whether they were dropped."""
    table = sql.Identifier(spec.staging_table)
    empty = conn.execute(sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM {})").format(table)).fetchone()
    if not (empty and empty[0]):
        return False
    pk, index = _index_names(spec)
    conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(table, pk))
    conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(index))
    return True


def ensure_indexes(conn: psycopg.Connection, spec: TableSpec) -> None:
    """Inside the caller's transaction: the staging table's primary key and key index, built
    if a bulk load dropped them (and a crash kept it from building them again). When both
    exist it takes no lock on the table: a build's SHARE lock would wait for ingestion's
    batches, which may themselves wait for a lock the caller holds."""
    table = sql.Identifier(spec.staging_table)
    pk, index = _index_names(spec)
    has_pk = conn.execute(sqlfiles.query(QUERIES, "staging_has_primary_key"), {"table": spec.staging_table}).fetchone()
    if not (has_pk and has_pk[0]):
        # The sorts of the builds: in memory rather than in temporary files, up to this much
        # (PostgreSQL's default of 64MB sorts a 10-million-row snapshot on disk).
        conn.execute(sqlfiles.query(QUERIES, "bulk_index_memory"))
        conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY (__lsn, __seqval, __op)").format(table, pk))
    has_index = conn.execute(
        "SELECT to_regclass(quote_ident(%s)) IS NOT NULL", (spec.staging_table + "_key_idx",)
    ).fetchone()
    if has_index and has_index[0]:
        return
    conn.execute(
        sqlfiles.query(
            QUERIES,
            "create_staging_key_index",
            index=index,
            table=table,
            keys=sql.SQL(", ").join(sql.Identifier(k) for k in spec.key_columns),
        )
    )


def keys_match(keys: Sequence[str], left: str, right: str) -> sql.Composed:
    """``left.k1 = right.k1 AND ...``: two aliases' rows are the same key."""
    return sql.SQL(" AND ").join(
        sql.SQL("{}.{} = {}.{}").format(
            sql.Identifier(left), sql.Identifier(k), sql.Identifier(right), sql.Identifier(k)
        )
        for k in keys
    )


def _index_names(spec: TableSpec) -> tuple[sql.Identifier, sql.Identifier]:
    return sql.Identifier(spec.staging_table + "_pkey"), sql.Identifier(spec.staging_table + "_key_idx")


def reconcile(conn: psycopg.Connection, spec: TableSpec) -> tuple[TableSpec, str | None]:
    """The spec cdcflow stages with: the staging table's columns, as the source has them now.

    A column the source added is left out (the decoder warns once). A staged column the
    source dropped or retyped is a problem that pauses the capture; the message says which.
    """
    have = conn.execute(sqlfiles.query(QUERIES, "staging_columns"), {"table": spec.staging_table}).fetchall()
    staged = [(n, t) for n, t in have if n not in META_COLUMNS and n != "__staged_at"]
    by_name = {c.name: c for c in spec.columns}
    columns = []
    problem = None if spec.key_columns else no_key_message(spec)
    for name, type_sql in staged:
        col = by_name.get(name)
        if col is None:
            problem = problem or dropped_column_message(spec, name)
            continue
        if col.type_sql != type_sql:
            problem = problem or retyped_column_message(spec, name, type_sql, col.type_sql)
        columns.append(col)
    return TableSpec(spec.schema, spec.name, tuple(columns)), problem


def ensure_control_rows(conn: psycopg.Connection, source_name: str, engine: str, specs: list[TableSpec]) -> None:
    for spec in specs:
        conn.execute(
            sqlfiles.query(QUERIES, "ensure_watermark"),
            {
                "source": source_name,
                "capture": spec.capture,
                "engine": engine,
                "source_table": spec.qualified,
                "staging_table": spec.staging_table,
            },
        )
