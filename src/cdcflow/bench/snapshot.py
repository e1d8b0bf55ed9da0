"""Snapshot benchmark: how fast cdcflow's initial snapshot stages a big table, against the raw
pipe between the same two databases.

A source table shaped like the demo's ``orders`` gets ``rows`` rows. Then, in alternating
rounds, each on a fresh serving database:

- ``raw``: ``COPY (SELECT <columns> FROM orders) TO STDOUT`` piped block by block into
  ``COPY orders FROM STDIN`` of a table made like the source's (its primary key included),
  in one transaction, in the format cdcflow uses (binary between servers of the same major
  version): no cdcflow code;
- ``cdcflow``: ``cdcflow bootstrap``'s initial snapshot of that table: the slot created with
  an exported snapshot, the rows staged as op 5 with their position columns into
  ``stg_cdc_orders`` in chunks that each commit (``--workers`` connections side by side),
  its primary key and key index built after, the capture complete.

The figure is cdcflow rows/s and its ratio to ``raw`` in the same round (target >= 0.7),
and the peak RSS of this process (it ran both). Results: ``snapshot.json`` in the output
folder.

    cdcflow bench snapshot --rows 10000000
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg import sql

from cdcflow.bench.catchup_server import ROOT, Server, _code_version, _dsn

SRC_DB, SRV_DB = "cdcflow_bench_snapshot_source", "cdcflow_bench_snapshot_serving"
SLOT = "cdcflow_bench_snapshot"
COLUMNS = "order_id, customer_id, amount, status, created_at, updated_at"
TABLE_DDL = """
CREATE TABLE orders (
    order_id     bigint PRIMARY KEY,
    customer_id  bigint,
    amount       numeric(18,2),
    status       text        NOT NULL,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL
)"""

Progress = Callable[[str], None]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _fresh_serving(server: Server) -> None:
    with server.admin() as conn:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", (SLOT,)
        )
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(SRV_DB)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(SRV_DB)))


def _raw(source_dsn: str, serving_dsn: str, binary: bool) -> int:
    fmt = sql.SQL(" (FORMAT binary)" if binary else "")
    cols = sql.SQL(COLUMNS)
    rows = 0
    with psycopg.connect(source_dsn) as src, psycopg.connect(serving_dsn) as dst:
        dst.execute(TABLE_DDL)
        with (
            src.cursor() as rc,
            rc.copy(sql.SQL("COPY (SELECT {} FROM orders) TO STDOUT{}").format(cols, fmt)) as out,
            dst.cursor() as wc,
            wc.copy(sql.SQL("COPY orders ({}) FROM STDIN{}").format(cols, fmt)) as into,
        ):
            for block in out:
                into.write(block)
                rows += 1
        dst.commit()
    return rows - 1 if binary else rows


def _cdcflow(settings) -> tuple[int, float]:
    """The initial snapshot (slot, copy, commit), timed without the bootstrap before it."""
    from cdcflow import snapshot
    from cdcflow.bootstrap import bootstrap

    boot = bootstrap(settings, snapshot_now=False)
    try:
        with psycopg.connect(settings.serving_dsn) as serving:
            started = time.monotonic()
            snapshot.initial_snapshot(boot.source, serving, settings)
            seconds = time.monotonic() - started
            staged = serving.execute("SELECT count(*) FROM stg_cdc_orders").fetchone()[0]  # type: ignore[index]
    finally:
        boot.source.close()
    return int(staged), seconds


def run(
    out_dir: Path | str,
    rows: int = 10_000_000,
    progress: Progress = print,
    *,
    rounds: int = 2,
    workers: int = 1,
    dsn: str | None = None,
    data_dir: Path | str = ROOT / ".cdcflow" / "bench-pg",
) -> dict:
    """Run the snapshot benchmark; write ``snapshot.json`` into ``out_dir``; return the results."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    server = Server(dsn, Path(data_dir), None)
    try:
        return _measure(server, out, rows, progress, rounds, workers)
    finally:
        server.close()  # stopped if this run started it


def _measure(server: Server, out: Path, rows: int, progress: Progress, rounds: int, workers: int) -> dict:
    from cdcflow.config import Settings

    progress(
        f"snapshot benchmark: a table of {rows:,d} rows, {rounds} rounds of raw pipe and cdcflow "
        f"({workers} copy connection{'s' if workers > 1 else ''})"
    )
    with server.admin() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(SRC_DB)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(SRC_DB)))
    source_dsn, serving_dsn = _dsn(server.admin_dsn, SRC_DB), _dsn(server.admin_dsn, SRV_DB)
    t0 = time.monotonic()
    with psycopg.connect(source_dsn, autocommit=True) as src:
        src.execute(TABLE_DDL)
        src.execute(
            "INSERT INTO orders SELECT g, g %% 100000, (g %% 100000) / 100.0, "
            "(ARRAY['NEW','PAID','SHIPPED','CANCELLED'])[g %% 4 + 1], "
            "timestamptz '2026-01-01' + g * interval '1 second', timestamptz '2026-01-01' + g * interval '2 second' "
            "FROM generate_series(1, %s) g",
            (rows,),
        )
        src.execute("VACUUM ANALYZE orders")
        size = src.execute("SELECT pg_size_pretty(pg_table_size('orders'))").fetchone()[0]  # type: ignore[index]
    progress(f"  source table: {rows:,d} rows, {size}, made in {time.monotonic() - t0:.0f} s")
    settings = Settings(
        source_dsn=source_dsn,
        serving_dsn=serving_dsn,
        capture_tables=("public.orders",),
        slot_name=SLOT,
        publication_name=SLOT,
        enable_proj_orders_kpi=False,
        enable_proj_orders_latest=False,
        metrics_port=0,
        snapshot_workers=workers,
    )
    from cdcflow.sources.postgres import PostgresSource

    probe = PostgresSource(source_dsn, settings.capture_tables, SLOT, SLOT)
    try:
        with server.admin() as conn:
            probe.serving_version = conn.info.server_version
        binary, why = probe.binary_transfer()  # the format cdcflow's copy will use; the raw pipe uses it too
    finally:
        probe.close()
    progress(f"  format: {why}")
    results: list[dict] = []
    try:
        for r in range(rounds):
            for stage in ("raw", "cdcflow") if r % 2 == 0 else ("cdcflow", "raw"):
                _fresh_serving(server)
                if stage == "raw":
                    started = time.monotonic()
                    n = _raw(source_dsn, serving_dsn, binary)
                    seconds = time.monotonic() - started
                else:
                    n, seconds = _cdcflow(settings)
                results.append(
                    {"round": r + 1, "stage": stage, "rows": n, "seconds": seconds, "rows_per_s": n / seconds}
                )
                progress(f"  round {r + 1} {stage:7s}: {n:,d} rows in {seconds:.1f} s = {n / seconds:,.0f} rows/s")
    finally:
        _fresh_serving(server)
        with server.admin() as conn:
            for name in (SRC_DB, SRV_DB):
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    ratios = []
    for r in range(1, rounds + 1):
        by = {x["stage"]: x for x in results if x["round"] == r}
        ratios.append(by["cdcflow"]["rows_per_s"] / by["raw"]["rows_per_s"])
    summary = {
        "rows": rows,
        "workers": workers,
        "format": "binary" if binary else "text",
        "rounds": results,
        "ratios": ratios,
        "ratio_median": sorted(ratios)[len(ratios) // 2],
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "server": server.describe(),
        "code": _code_version(),
        "target_ratio": 0.7,
    }
    (out / "snapshot.json").write_text(json.dumps(summary, indent=2, default=str))
    progress(
        f"snapshot: cdcflow / raw pipe {', '.join(f'{x:.2f}' for x in ratios)} ({summary['format']} COPY), "
        f"peak RSS {summary['peak_rss_mb']:.0f} MB; target >= 0.7"
    )
    return summary
