"""The data of the projection scaling benchmark (``projection_scaling``): one serving
database per size, its staged history, the deltas staged on it, and the cycles timed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import time
from collections.abc import Callable

import psycopg
import pyarrow as pa
from psycopg import sql

from cdcflow import projections, sqlfiles
from cdcflow.config import Settings
from cdcflow.projections import base, catalog
from cdcflow.projections.arrowio import read_arrow, write_arrow
from cdcflow.projections.incremental import SqlProjection
from cdcflow.serving import schema
from cdcflow.sources.base import Column, TableSpec

BLOCKS = sqlfiles.queries("bench/projection_scaling.sql")
DB = f"cdcflow_bench_projection_{os.getpid()}"  # one per run and size: runs never drop each other's database
DELTA = 10_000
RECENT = 50_000  # profile "recent": updates and deletes hit the newest 50,000 orders/payments (plus late ones)
PROFILES = ("recent", "uniform")
ANCHOR = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)  # history ends here; deltas follow it, 5 minutes apart

Progress = Callable[[str], None]

_TS = "timestamp with time zone"
SPECS = [
    TableSpec(
        "public",
        "customers",
        (
            Column("customer_id", "bigint", True),
            Column("segment", "text"),
            Column("is_active", "boolean"),
            Column("updated_at", _TS),
        ),
    ),
    TableSpec(
        "public",
        "orders",
        (
            Column("order_id", "bigint", True),
            Column("customer_id", "bigint"),
            Column("amount", "numeric(18,2)"),
            Column("status", "text"),
            Column("created_at", _TS),
            Column("updated_at", _TS),
        ),
    ),
    TableSpec(
        "public",
        "payments",
        (
            Column("payment_id", "bigint", True),
            Column("order_id", "bigint"),
            Column("paid_amount", "numeric(18,2)"),
            Column("paid_at", _TS),
        ),
    ),
]
BIGINT, LSN, MONEY, TEXT, TSTZ = (
    pa.int64(),
    pa.decimal128(25, 0),
    pa.decimal128(18, 2),
    pa.string(),
    pa.timestamp("us", tz="UTC"),
)
ALL_SCHEMAS = {
    "customers": pa.schema(
        [("__lsn", LSN), ("__seqval", LSN), ("__op", BIGINT), ("customer_id", BIGINT), ("segment", TEXT)]
    ),
    "orders": pa.schema(
        [
            ("__lsn", LSN),
            ("__seqval", LSN),
            ("__op", BIGINT),
            ("order_id", BIGINT),
            ("customer_id", BIGINT),
            ("amount", MONEY),
            ("created_at", TSTZ),
        ]
    ),
    "payments": pa.schema(
        [
            ("__lsn", LSN),
            ("__seqval", LSN),
            ("__op", BIGINT),
            ("payment_id", BIGINT),
            ("order_id", BIGINT),
            ("paid_amount", MONEY),
            ("paid_at", TSTZ),
        ]
    ),
}


def _dsn(base_dsn: str, dbname: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(base_dsn)
    params["dbname"] = dbname
    return make_conninfo(**params)


def _run_block(conn: psycopg.Connection, name: str, params: dict) -> None:
    for stmt in BLOCKS[name].split(";\n"):
        if stmt.strip():
            conn.execute(stmt, params)  # type: ignore[arg-type]  # our own benchmark SQL


#: The projections measured: the seed's KPI (built in) and users' queries shipped with the
#: benchmarks (cdcflow/bench/projections/), each kept by the SQL engine.
KPI = "proj_orders_kpi_by_minute_segment"
USER_QUERIES = {"revenue": "proj_revenue_by_segment_status", "activity": "proj_customer_activity"}


def bench_projections_dir() -> str:
    from importlib import resources

    return str(resources.files("cdcflow").joinpath("bench", "projections"))


class Scenario:
    """One serving database holding ``size`` staged rows of history."""

    def __init__(
        self,
        admin_dsn: str,
        size: int,
        progress: Progress,
        profile: str = PROFILES[0],
        parallel_reads: bool = True,
        measured: tuple[str, ...] = (KPI,),
    ) -> None:
        self.size = size
        self.profile = profile
        self.progress = progress
        self.measured = measured
        self.admin_dsn, self.db = admin_dsn, f"{DB}_{size}"
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.db)))
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.db)))
        self.dsn = _dsn(admin_dsn, self.db)
        self.settings = Settings(
            serving_dsn=self.dsn,
            source_dsn=self.dsn,
            projection_self_check_seconds=0,
            projection_parallel_reads=parallel_reads,
            enable_proj_orders_kpi=KPI in measured,
            projections_dir=bench_projections_dir(),
        )
        self.customers = max(100, size // 100)
        self.orders = size * 40 // 100
        self.order_updates = size * 20 // 100
        self.payments = size - self.customers - self.orders - self.order_updates
        self.lsn = 0
        self.next_order = self.orders + 1_000_000_000
        self.next_payment = self.payments + 1_000_000_000
        self.deltas = 0
        self.projections: dict[str, base.Projection] = {}
        self.touched: dict[str, dict[str, int]] = {}  # projection -> what its last cycle read and wrote

    def load_history(self) -> dict[str, float]:
        t0 = time.monotonic()
        with psycopg.connect(self.dsn) as conn:
            schema.run_scripts(conn, "serving")
            for spec in SPECS:
                schema.ensure_staging(conn, spec)
            schema.ensure_control_rows(conn, self.settings.source_name, "postgres", SPECS)
            _run_block(conn, "history_customers", {"n": self.customers, "t": ANCHOR})
            _run_block(
                conn,
                "history_orders",
                {
                    "n": self.orders,
                    "upd": self.order_updates,
                    "base": self.customers,
                    "customers": self.customers,
                    "t": ANCHOR,
                },
            )
            base_p = self.customers + self.orders + self.order_updates
            _run_block(
                conn, "history_payments", {"n": self.payments, "base": base_p, "orders": self.orders, "t": ANCHOR}
            )
            self.lsn = base_p + self.payments
            _run_block(conn, "advance", {"lsn": self.lsn})
            conn.commit()
        loaded = time.monotonic() - t0
        self.progress(f"  {self.size:.0e}: history of {self.lsn:,} staged rows in {loaded:.1f}s; rebuilding state")
        out = {"load_s": round(loaded, 2)}
        for name in self.measured:
            t1 = time.monotonic()
            duck = base.open_duckdb()
            with base.open_connection(self.dsn) as conn:
                projection = self.build(name, conn)
                base.rebuild(conn, duck, projection, self.settings)
                conn.commit()
            duck.close()
            out[f"rebuild_s_{name}"] = round(time.monotonic() - t1, 2)
            self.progress(f"  {self.size:.0e}: rebuild of {name} {out[f'rebuild_s_{name}']:.1f}s")
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
        return out

    def build(self, name: str, conn: psycopg.Connection) -> base.Projection:
        projection = projections.resolve(self.settings, conn, [name])[0]
        if isinstance(projection, SqlProjection):
            projection.on_applied = lambda touched: self.touched.__setitem__(name, touched)
        self.projections[name] = projection
        return projection

    def prepare(self) -> None:
        """Right before the measured cycles: warm each projection's tables, flush the set-up's writes."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            warm_tables(conn)
            # The set-up's writes are flushed now, not during the measured cycles; from here
            # each cycle pays the full-page images its first touch of a page after a
            # checkpoint costs, as on a running server.
            conn.execute("CHECKPOINT")

    def drop(self) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.db)))

    def stage_delta(self, seed: float) -> None:
        recent = self.profile == "recent"
        self.deltas += 1
        now = ANCHOR + dt.timedelta(minutes=5 * self.deltas)
        params = {
            "seed": seed,
            "base": self.lsn,
            "customers": self.customers,
            "t": ANCHOR,
            "now": now,
            "orders": self.orders,
            "payments": self.payments,
            "span_o": min(self.orders, RECENT) if recent else self.orders,
            "span_p": min(self.payments, RECENT) if recent else self.payments,
            "next_order": self.next_order,
            "next_payment": self.next_payment,
        }
        with psycopg.connect(self.dsn) as conn:
            _run_block(conn, "delta", params)
            _run_block(conn, "advance", {"lsn": self.lsn + DELTA})
            conn.commit()
        self.lsn += DELTA
        self.next_order += 200_000
        self.next_payment += 10_000

    def incremental_cycle(self, name: str) -> tuple[float, float, dict[str, int]]:
        """Seconds one cycle of ``name`` takes, the MB of WAL it wrote, and the rows it touched by kind."""
        duck = base.open_duckdb()
        parallel = self.settings.projection_parallel_reads
        dsn = self.dsn
        projection = self.projections[name]
        with (
            base.open_connection(dsn) as conn,
            base.snapshot_connection(dsn) if parallel else contextlib.nullcontext() as reader,
        ):
            wal0 = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]  # type: ignore[index]
            conn.commit()
            t0 = time.monotonic()
            result = base.run_cycle(conn, duck, projection, self.settings, reader=reader)
            conn.commit()
            took = time.monotonic() - t0
            wal = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s)", (wal0,)).fetchone()[0]  # type: ignore[index]
            conn.commit()
        duck.close()
        assert result.applied and result.cutoff == self.lsn, f"the cycle of {name} did not apply the delta"
        return took, float(wal) / 1e6, self.touched.pop(name, {})

    def full_recompute(self, name: str) -> float:
        """The same result recomputed from all staged rows, in PostgreSQL (rolled back)."""
        from cdcflow.projections.definition import Definition
        from cdcflow.projections.full import FullProjection

        projection = self.projections[name]
        definition: Definition = projection.definition  # type: ignore[attr-defined]
        full = Definition(definition.name, definition.path, definition.text, definition.query, None, "full", "")
        with base.open_connection(self.dsn) as conn:
            recompute = FullProjection(full, catalog.read(conn, self.settings.source_name), [])
            ctx = base.Context(conn, base.open_duckdb(), self.settings, {}, {}, self.lsn)
            conn.execute(
                sql.SQL("CREATE TEMP TABLE {} AS SELECT * FROM {} WITH NO DATA").format(
                    sql.Identifier(full.name), sql.Identifier(full.name)
                )
            )
            t0 = time.monotonic()
            recompute.apply(ctx)
            took = time.monotonic() - t0
            conn.rollback()
        return took

    def seed_recompute(self) -> float:
        """The seed's way for the KPI: load everything staged into DuckDB, recompute, rewrite (rolled back)."""
        duck = base.open_duckdb()
        with base.open_connection(self.dsn) as conn:
            t0 = time.monotonic()
            for name, schema_ in ALL_SCHEMAS.items():
                cols = sql.SQL(", ").join(sql.Identifier(c) for c in schema_.names)
                query = sql.SQL("SELECT {} FROM {} WHERE __lsn <= %(upto)s AND __op <> 3").format(
                    cols, sql.Identifier(f"stg_cdc_{name}")
                )
                duck.register(f"all_{name}", read_arrow(conn, query, schema_, {"upto": self.lsn}))
            rows = duck.sql(BLOCKS["full_recompute"]).to_arrow_table()
            conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(KPI)))
            write_arrow(conn, KPI, rows)
            took = time.monotonic() - t0
            conn.rollback()
        duck.close()
        return took


def warm_tables(conn: psycopg.Connection) -> None:
    """Read the projections' tables and each of their indexes once (an index-only scan of
    the whole index), so the measured cycles see the cache of a server that has been
    running cycles: the set-up's bulk writes pushed the state out, and pg_prewarm is not
    part of the embedded build."""
    rows = conn.execute(
        "SELECT c.relname, a.attname FROM pg_class c JOIN pg_index i ON i.indrelid = c.oid "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0] "
        "WHERE c.relnamespace = current_schema()::regnamespace AND (c.relname LIKE 'pst%%' OR c.relname LIKE 'proj%%')"
    ).fetchall()
    for table in sorted({t for t, _ in rows}):
        conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
    conn.execute("SET enable_seqscan = off")
    conn.execute("SET enable_bitmapscan = off")
    for table, column in rows:
        conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE {} IS NOT NULL").format(
                sql.Identifier(table), sql.Identifier(column)
            )
        )
    conn.execute("RESET enable_seqscan")
    conn.execute("RESET enable_bitmapscan")
