"""Projection scaling benchmark: cycle time for a fixed delta as staged history grows.

For each size (staged rows before the delta: 1e5, 1e6, 1e7 by default) a fresh serving
database gets staging and control tables, a set-based history written straight into
staging (``sql/bench/projection_scaling.sql``: 1% customers, 40% orders made 10 a minute, so
history spans size/25 minutes, 20% order updates, 39% payments, each 30 s after its
order), and one rebuild of each measured projection (the seed's KPI; users' queries from
``cdcflow/bench/projections/``) to build its state. Then several deltas of exactly 10,000
changes (segment changes, new orders, late updates of old orders, deletes, new payments,
payments of orders that do not exist yet, payment updates and deletes) are staged one
after the other; each is applied by one incremental cycle of each projection
(``run_cycle`` + commit, exactly what the worker does), timed; the first is a warm-up.
All sizes are set up first and then take turns, delta by delta, so that the sizes
compared ran under the same load of a shared machine. Profile ``recent`` (default)
sends 80% of updates and deletes to the newest 50,000 orders/payments and 20% anywhere in
history (late updates); ``uniform`` sends all of them anywhere (the worst case for
caches). For the same data, a full recompute is timed too: the query over the latest
staged version of every row, in PostgreSQL (``mode: full``), and for the KPI the seed's
way (every staged row loaded into DuckDB, latest state per key by ``row_number()``, all
buckets aggregated); both rolled back, so the incremental state stays in place.

Targets: the cycle at 1e7 takes at most 1.5x the cycle at 1e5, and at least 20x less
than the full recompute.

The embedded server is sized like a serving database for its working set:
``shared_buffers`` = ``--shared-buffers`` (default ``SHARED_BUFFERS``, enough to hold the
state of two projections at 1e7, about 1.2 GB each) and ``max_wal_size`` = ``--max-wal-size`` (default
``MAX_WAL_SIZE``: with PostgreSQL's 1GB a 1e7 cycle's WAL forces a checkpoint every few
cycles, and the server logs that checkpoints occur too frequently). ``--shared-buffers
128MB --max-wal-size 1GB`` are PostgreSQL's stock values. ``huge_pages`` stays ``try``
(PostgreSQL's default: huge pages when the OS has enough reserved, ``vm.nr_hugepages``);
``--huge-pages off`` is the A/B. The settings in force, ``huge_pages_status`` included, are
recorded in the results, also for ``--dsn`` (whose server is used as it is configured).

    python benchmarks/projection_scaling.py --sizes 1e5,1e6,1e7 [--profiles recent,uniform] [--projections kpi,revenue]
        [--shared-buffers 2GB] [--max-wal-size 8GB] [--huge-pages try|off] [--parallel-reads on|off]
        [--data-dir .cdcflow/bench-pg-projections] [--dsn ...]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

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

ROOT = Path.cwd()  # the project folder when run from a checkout: data dir, results
BLOCKS = sqlfiles.queries("bench/projection_scaling.sql")
DB = f"cdcflow_bench_projection_{os.getpid()}"  # one per run and size: runs never drop each other's database
DELTA = 10_000
DELTAS = 5  # the first is a warm-up
RECENT = 50_000  # profile "recent": updates and deletes hit the newest 50,000 orders/payments (plus late ones)
PROFILES = ("recent", "uniform")
# Its own embedded server: the sizing below persists in the data dir (ALTER SYSTEM), so it
# must not change the server other benchmarks (catch-up: .cdcflow/bench-pg) measure on.
DATA_DIR = ROOT / ".cdcflow" / "bench-pg-projections"
SHARED_BUFFERS = "4GB"  # embedded server: holds the state of the KPI and a user's query at 1e7 (~1.2 GB each)
MAX_WAL_SIZE = "8GB"  # embedded server: at 1e7 a cycle writes 50-250 MB of WAL; 1GB checkpoints every few cycles
SERVER_SETTINGS = (
    "shared_buffers",
    "effective_cache_size",
    "work_mem",
    "max_wal_size",
    "fsync",
    "wal_compression",
    "huge_pages",
    "huge_pages_status",  # PostgreSQL 17+: whether the shared memory got huge pages
)
HUGE_PAGES = ("try", "off")  # --huge-pages; "try" (PostgreSQL's default) uses them when the OS has them reserved
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


def _measure(scenarios: list[Scenario], profile: str, first_seed: float, progress: Progress) -> list[dict]:
    """Stage DELTAS deltas of one profile, one cycle of each measured projection each; the
    first is a warm-up.

    The sizes take turns, delta by delta, and the projections take turns within a delta
    (their order alternating), so that what is compared (sizes, projections) ran under the
    same load of the (shared) machine.
    """
    out: list[dict] = []
    samples: list[dict[str, list[tuple[float, float, dict[str, int]]]]] = [
        {name: [] for name in sc.measured} for sc in scenarios
    ]
    for i in range(DELTAS):
        for n, sc in enumerate(scenarios):
            sc.profile = profile
            sc.stage_delta(first_seed + i / 100)
            order = list(sc.measured) if i % 2 == 0 else list(reversed(sc.measured))
            for name in order:
                cycle, wal_mb, rows = sc.incremental_cycle(name)
                progress(
                    f"  {sc.size:.0e} {profile} {name}: delta {i}: cycle {cycle * 1000:.0f} ms, WAL {wal_mb:.1f} MB, "
                    f"touched {', '.join(f'{k} {v:,}' for k, v in rows.items())}" + (" (warm-up)" if i == 0 else "")
                )
                if i:
                    samples[n][name].append((cycle, wal_mb, rows))
    for per_name in samples:
        entry = {}
        for name, runs in per_name.items():
            cs = [c for c, _, _ in runs]
            touched = [r for _, _, r in runs]
            entry[name] = {
                "cycle_s": [round(c, 3) for c in cs],
                "wal_mb": [round(w, 1) for _, w, _ in runs],
                "cycle_median_s": round(statistics.median(cs), 3),
                "cycle_min_s": round(min(cs), 3),
                # State rows read, rows written: what a cycle's cost follows.
                "rows_touched": {k: int(statistics.median(r.get(k, 0) for r in touched)) for k in touched[0]},
                "rows_touched_median": int(statistics.median(_touched(r) for r in touched)),
            }
        out.append(entry)
    return out


def _touched(rows: dict[str, int]) -> int:
    """Rows read from the state and written (the delta itself is the same at every size)."""
    return sum(v for k, v in rows.items() if k != "delta")


def run(
    out_dir: Path,
    sizes: list[int],
    progress: Progress = print,
    dsn: str | None = None,
    profiles: tuple[str, ...] = PROFILES,
    data_dir: Path | str | None = None,
    shared_buffers: str | None = None,
    max_wal_size: str | None = None,
    huge_pages: str | None = None,
    parallel_reads: bool = True,
    measured: tuple[str, ...] = (KPI,),
) -> dict:
    """Run the benchmark for each size and delta profile; write ``projection_scaling.json`` into ``out_dir``.

    ``measured``: the projections (:data:`KPI` and the values of :data:`USER_QUERIES`).
    Without ``dsn`` an embedded server on ``data_dir`` (default
    :data:`DATA_DIR`) runs with ``shared_buffers``, ``max_wal_size`` and ``huge_pages``
    (defaults :data:`SHARED_BUFFERS`, :data:`MAX_WAL_SIZE`, ``try``); a server given by
    ``dsn`` is used as it is configured (all three must then be None).
    """
    bad = [p for p in profiles if p not in PROFILES]
    if bad:
        raise ValueError(f"unknown delta profile {bad[0]!r}: expected one of {', '.join(PROFILES)}")
    if huge_pages is not None and huge_pages not in HUGE_PAGES:
        raise ValueError(f"huge_pages {huge_pages!r}: expected one of {', '.join(HUGE_PAGES)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    server, dsn = _server(dsn, data_dir, shared_buffers, max_wal_size, huge_pages)
    results: dict = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "delta_changes": DELTA,
        "profiles": list(profiles),
        "projections": list(measured),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "server": "embedded" if server else "dsn",
        "parallel_reads": parallel_reads,
        "sizes": [],
    }
    _describe_server(dsn, results, huge_pages, progress)
    scenarios: list[Scenario] = []
    try:
        for size in sizes:
            progress(f"size {size:.0e}: generating history")
            sc = Scenario(dsn, size, progress, parallel_reads=parallel_reads, measured=measured)
            scenarios.append(sc)
            results["sizes"].append({"staged_rows": size, **sc.load_history()})
        for sc in scenarios:
            sc.prepare()
        results["load_average_before"] = [round(x, 2) for x in os.getloadavg()]  # 1, 5, 15 minutes
        for n, profile in enumerate(profiles):
            measured_runs = _measure(scenarios, profile, 0.1 + n / 10, progress)
            for entry, one in zip(results["sizes"], measured_runs, strict=True):
                entry[profile] = one
        results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        for entry, sc in zip(results["sizes"], scenarios, strict=True):
            _recompute(entry, sc, profiles, measured, progress)
            (out_dir / "projection_scaling.json").write_text(json.dumps(results, indent=2))
    finally:
        for sc in scenarios:
            sc.drop()
    _growth(results, profiles, measured, progress)
    (out_dir / "projection_scaling.json").write_text(json.dumps(results, indent=2))
    return results


def _server(
    dsn: str | None,
    data_dir: Path | str | None,
    shared_buffers: str | None,
    max_wal_size: str | None,
    huge_pages: str | None,
) -> tuple[object | None, str]:
    """The embedded server (None with ``dsn``) and the DSN to use (see :func:`run`)."""
    if dsn is not None:
        if shared_buffers is not None or max_wal_size is not None or huge_pages is not None:
            raise ValueError(
                "shared_buffers, max_wal_size and huge_pages apply to the embedded server: configure the one at --dsn"
            )
        return None, dsn
    from cdcflow.embedded import EmbeddedPostgres

    sizing = {
        "shared_buffers": shared_buffers or SHARED_BUFFERS,
        "max_wal_size": max_wal_size or MAX_WAL_SIZE,
        "huge_pages": huge_pages or "try",
    }
    server = EmbeddedPostgres(Path(data_dir or DATA_DIR), sizing)
    return server, server.dsn("postgres")


def _describe_server(dsn: str, results: dict, huge_pages: str | None, progress: Progress) -> None:
    """The server's version and the settings that matter here, into ``results``."""
    with psycopg.connect(dsn) as conn:
        results["server_version"] = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        results["server_settings"] = dict(
            conn.execute(  # type: ignore[arg-type]
                "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s) ORDER BY name",
                (list(SERVER_SETTINGS),),
            ).fetchall()
        )
    progress(
        f"server {results['server_version']}: " + ", ".join(f"{k}={v}" for k, v in results["server_settings"].items())
    )
    if results["server_settings"].get("huge_pages_status") == "off" and huge_pages != "off":
        progress(
            "  note: the server's shared memory has no huge pages (the OS reserves none: vm.nr_hugepages); "
            "at 1e7 cycles took 10-15% longer without them (docs/benchmarks.md)"
        )


def _recompute(
    entry: dict, sc: Scenario, profiles: tuple[str, ...], measured: tuple[str, ...], progress: Progress
) -> None:
    """One size's full recomputes (and the KPI's seed recompute), and the cycles' speed-up over them."""
    for name in measured:
        full = entry.setdefault("full_recompute_s", {})[name] = round(sc.full_recompute(name), 3)
        for profile in profiles:
            cell = entry[profile][name]
            cell["speedup"] = round(full / cell["cycle_median_s"], 1)
            progress(
                f"  {sc.size:.0e} {profile} {name}: cycle {cell['cycle_median_s'] * 1000:.0f} ms (median), "
                f"full recompute in PostgreSQL {full:.2f} s ({cell['speedup']}x)"
            )
    if KPI in measured:
        seed = entry["seed_recompute_s"] = round(sc.seed_recompute(), 3)
        for profile in profiles:
            cell = entry[profile][KPI]
            cell["speedup_vs_seed"] = round(seed / cell["cycle_median_s"], 1)


def _growth(results: dict, profiles: tuple[str, ...], measured: tuple[str, ...], progress: Progress) -> None:
    """How cycle time and rows touched grow from the smallest size to the largest (into ``results``)."""
    first, last = results["sizes"][0], results["sizes"][-1]
    for key in (
        "growth_largest_vs_smallest",
        "rows_touched_growth_largest_vs_smallest",
        "per_touched_row_growth_largest_vs_smallest",
    ):
        results[key] = {}
    for profile in profiles:
        for name in measured:
            a, b = first[profile][name], last[profile][name]
            growth = round(b["cycle_median_s"] / a["cycle_median_s"], 2)
            rows = round(b["rows_touched_median"] / max(a["rows_touched_median"], 1), 2)
            results["growth_largest_vs_smallest"].setdefault(profile, {})[name] = growth
            # The same delta touches more rows in a larger history (a small one makes it collide
            # with itself); the cost per touched row shows whether anything else grows with history.
            results["rows_touched_growth_largest_vs_smallest"].setdefault(profile, {})[name] = rows
            results["per_touched_row_growth_largest_vs_smallest"].setdefault(profile, {})[name] = round(
                growth / rows, 2
            )
            progress(
                f"growth from the smallest to the largest size, {profile} {name}: cycle {growth}x, rows touched "
                f"{rows}x, per touched row {round(growth / rows, 2)}x"
            )


def measured_names(text: str) -> tuple[str, ...]:
    """``kpi,revenue`` -> the projections' names; ValueError for an unknown one."""
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part == "kpi":
            out.append(KPI)
        elif part in USER_QUERIES:
            out.append(USER_QUERIES[part])
        else:
            raise ValueError(f"unknown projection {part!r}: expected kpi or one of {', '.join(USER_QUERIES)}")
    return tuple(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1e5,1e6,1e7", help="staged rows before the delta, comma-separated")
    p.add_argument("--dsn", default=None, help="admin DSN of the PostgreSQL to use (default: embedded server)")
    p.add_argument(
        "--profiles",
        default=",".join(PROFILES),
        help="delta profiles, comma-separated: recent (80%% of updates on recent rows), uniform (anywhere)",
    )
    p.add_argument(
        "--shared-buffers",
        default=None,
        help=f"embedded server's shared_buffers (default {SHARED_BUFFERS}: holds the state at 1e7; 128MB = stock)",
    )
    p.add_argument(
        "--max-wal-size",
        default=None,
        help=f"embedded server's max_wal_size (default {MAX_WAL_SIZE}; 1GB = stock)",
    )
    p.add_argument(
        "--huge-pages",
        choices=HUGE_PAGES,
        default=None,
        help="embedded server's huge_pages (default try: used when the OS has them reserved, vm.nr_hugepages)",
    )
    p.add_argument(
        "--parallel-reads",
        choices=("on", "off"),
        default="on",
        help="KPI state read on a second connection while the cycle writes (PROJECTION_PARALLEL_READS; default on)",
    )
    p.add_argument("--data-dir", default=None, help=f"embedded server's data dir (default {DATA_DIR})")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results/<timestamp>)")
    p.add_argument(
        "--projections",
        default="kpi",
        help="what to measure, comma-separated: kpi (the seed's), "
        + ", ".join(USER_QUERIES)
        + " (users' queries, cdcflow/bench/projections/)",
    )
    args = p.parse_args(argv)
    sizes = [int(float(s)) for s in args.sizes.split(",") if s.strip()]
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    profiles = tuple(p.strip() for p in args.profiles.split(",") if p.strip())
    res = run(
        out,
        sizes,
        lambda m: print(m, file=sys.stderr, flush=True),
        args.dsn,
        profiles,
        data_dir=args.data_dir,
        shared_buffers=args.shared_buffers,
        max_wal_size=args.max_wal_size,
        huge_pages=args.huge_pages,
        parallel_reads=args.parallel_reads == "on",
        measured=measured_names(args.projections),
    )
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
