"""Sustained load: the load generator at a fixed rate while the pipeline runs, sampled.

Source, serving, load generator (a separate process) and pipeline share one machine, as
in the targets. Measured:

- ingestion lag, per staged batch: wall-clock time of the serving commit minus the source
  commit time of the batch's *oldest* change (the worst change in the batch), counted once
  per change of the batch;
- projection freshness, sampled every ``sample_seconds``: now minus the source commit
  time of the projection's ``as_of`` position (``ctl_projection_metadata.as_of_time``).

Targets: 20,000 changes/s for 3 minutes with ingestion lag p95 <= 0.5 s and projection
freshness p95 <= 1 s for the seed's two projections; 10,000 changes/s with two users'
projections (``cdcflow/bench/projections/``) enabled beside them, freshness p95 <= 1 s
for each of the four (``user_projections``, the default).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

from cdcflow.bench import percentiles, results_dir
from cdcflow.config import Settings
from cdcflow.worker import Observer, Worker

LAG_TARGET_P95 = 0.5
FRESHNESS_TARGET_P95 = 1.0


def run(
    out: Path,
    *,
    changes_per_second: float = 20_000,
    duration: float = 180,
    warmup: float = 5.0,
    sample_seconds: float = 0.25,
    data_dir: Path = Path(".cdcflow/bench-sustained-pg"),
    progress: Callable[[str], None] = print,
    stamp: str | None = None,
    user_projections: bool = True,
) -> dict:
    from cdcflow.embedded import EmbeddedPostgres

    where = results_dir(out, "sustained", stamp)
    progress(f"sustained: {changes_per_second:,.0f} changes/s for {duration:g}s (+{warmup:g}s warm-up) -> {where}")
    # Stopped when the run ends, however it ends (left running if it ran before: release()).
    with EmbeddedPostgres(data_dir) as pg:
        return _measure(pg, where, changes_per_second, duration, warmup, sample_seconds, progress, user_projections)


def _measure(
    pg,
    where: Path,
    changes_per_second: float,
    duration: float,
    warmup: float,
    sample_seconds: float,
    progress: Callable[[str], None],
    user_projections: bool,
) -> dict:
    from cdcflow import loadgen
    from cdcflow.bench.projection_scenario import bench_projections_dir
    from cdcflow.bootstrap import bootstrap
    from cdcflow.runtime import Runtime

    source_dsn = pg.create_database("bench_source", drop=True)
    serving_dsn = pg.create_database("bench_serving", drop=True)
    settings = Settings(
        source_dsn=source_dsn,
        serving_dsn=serving_dsn,
        slot_name="cdcflow_bench",
        publication_name="cdcflow_bench",
        enable_proj_orders_kpi=True,
        enable_proj_orders_latest=True,
        poll_interval_seconds=0.5,
        projection_interval_seconds=1.0,
        metrics_port=0,
        log_level="warning",
        projections_dir=bench_projections_dir() if user_projections else None,
    )
    with psycopg.connect(pg.dsn(), autocommit=True) as admin:
        admin.execute(
            "SELECT pg_drop_replication_slot('cdcflow_bench') FROM pg_replication_slots "
            "WHERE slot_name = 'cdcflow_bench'"
        )
    bootstrap(settings, demo=True).source.close()
    profile = loadgen.get_profile("heavy_10k")
    orders_rate = changes_per_second / profile.changes_per_order
    runtime = Runtime(settings)
    lags: list[tuple[float, float, int]] = []  # (t, lag seconds, rows)
    started = time.monotonic()

    class Lags(Observer):
        def batch_staged(self, worker: Worker, result, seconds: float) -> None:
            if result.rows and result.first_commit_time is not None:
                lag = (dt.datetime.now(dt.UTC) - result.first_commit_time).total_seconds()
                lags.append((time.monotonic() - started, lag, result.rows))

    runtime.workers[0].observe(Lags())  # the ingest worker
    fresh: list[tuple[float, str, float]] = []
    stop_sampling = threading.Event()

    def sample() -> None:
        with psycopg.connect(serving_dsn, autocommit=True) as conn:
            while not stop_sampling.wait(sample_seconds):
                now = dt.datetime.now(dt.UTC)
                for name, as_of_time in conn.execute(
                    "SELECT projection_name, as_of_time FROM ctl_projection_metadata"
                ).fetchall():
                    if as_of_time is not None:
                        fresh.append((time.monotonic() - started, name, (now - as_of_time).total_seconds()))

    sampler = threading.Thread(target=sample, name="bench-sampler", daemon=True)
    runtime.start()
    sampler.start()
    load = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cdcflow",
            "loadgen",
            "--dsn",
            source_dsn,
            "--profile",
            "heavy_10k",
            "--rate",
            f"{orders_rate:.3f}",
            "--duration",
            f"{duration + warmup:.1f}",
            "--json",
            "--progress-interval",
            "5",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        while load.poll() is None:
            time.sleep(5)
            t = time.monotonic() - started
            recent = [lag for (ts, lag, _) in lags if ts > t - 5]
            staged = sum(rows for (ts, _, rows) in lags if ts > t - 5) / 5
            fr = [f for (ts, _, f) in fresh if ts > t - 5]
            progress(
                f"  {t:5.0f}s  staged {staged:9,.0f} changes/s  lag max {max(recent, default=0):.2f}s  "
                f"freshness max {max(fr, default=0):.2f}s"
            )
        load_out = load.stdout.read() if load.stdout else ""
    finally:
        if load.poll() is None:
            load.terminate()
        load.wait(30)
    load_stats = json.loads(load_out.strip().splitlines()[-1]) if load_out.strip() else {}
    # Drain: let the last changes reach staging and the projections, then stop.
    time.sleep(2)
    stop_sampling.set()
    sampler.join(10)
    runtime.stop.set()
    runtime.join()

    measured_lag: list[float] = []
    for ts, lag, rows in lags:
        if warmup <= ts <= warmup + duration:
            measured_lag.extend([lag] * rows)
    rows_measured = sum(rows for ts, _, rows in lags if warmup <= ts <= warmup + duration)
    summary: dict = {
        "target_changes_per_second": changes_per_second,
        "duration_seconds": duration,
        "warmup_seconds": warmup,
        "load": load_stats,
        "user_projections": user_projections,
        "staged_changes_per_second": rows_measured / duration if duration else 0,
        "staged_rows_per_minute": rows_measured / duration * 60 if duration else 0,
        "ingestion_lag_seconds": percentiles(measured_lag),
        "projection_freshness_seconds": {},
    }
    ok = (
        summary["ingestion_lag_seconds"]["p95"] is not None
        and summary["ingestion_lag_seconds"]["p95"] <= LAG_TARGET_P95
    )
    for name in sorted({n for _, n, _ in fresh}):
        vals = [f for ts, n, f in fresh if n == name and warmup <= ts <= warmup + duration]
        summary["projection_freshness_seconds"][name] = percentiles(vals)
        p95 = summary["projection_freshness_seconds"][name]["p95"]
        ok = ok and p95 is not None and p95 <= FRESHNESS_TARGET_P95
    achieved = float(load_stats.get("changes_per_second", 0) or 0)
    summary["load_reached_target"] = achieved >= 0.95 * changes_per_second
    summary["pass"] = bool(ok and summary["load_reached_target"])
    with open(where / "samples.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_seconds", "kind", "name", "value_seconds", "rows"])
        for ts, lag, rows in lags:
            w.writerow([f"{ts:.3f}", "ingestion_lag", "batch", f"{lag:.4f}", rows])
        for ts, name, value in fresh:
            w.writerow([f"{ts:.3f}", "projection_freshness", name, f"{value:.4f}", ""])
    (where / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    lag = summary["ingestion_lag_seconds"]
    progress(
        f"sustained: load {achieved:,.0f} changes/s (target {changes_per_second:,.0f}), staged "
        f"{summary['staged_changes_per_second']:,.0f}/s; ingestion lag p50 {_f(lag['p50'])} p95 {_f(lag['p95'])} "
        f"max {_f(lag['max'])}"
    )
    for name, p in summary["projection_freshness_seconds"].items():
        progress(f"  {name}: freshness p50 {_f(p['p50'])} p95 {_f(p['p95'])} max {_f(p['max'])}")
    progress(
        f"sustained: {'PASS' if summary['pass'] else 'FAIL'} against lag p95 <= {LAG_TARGET_P95}s, "
        f"freshness p95 <= {FRESHNESS_TARGET_P95}s, load >= 95% of target"
    )
    return summary


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}s"
