"""``cdcflow demo``: the whole pipeline on an embedded PostgreSQL, with a live view.

Starts the embedded server (data under ``--data-dir``, reused next time; ``--reset``
wipes it), creates ``source`` and ``serving`` databases, bootstraps the demo schema with
seed rows (initial snapshot included), runs ingestion and both projections with the load
generator at a moderate rate, and shows changes/s, lag, freshness, states and the newest
KPI rows. Ctrl-C stops everything cleanly; ``--no-live --duration S`` is for scripts.

The embedded server outlives the demo: its last lines are ``psql`` commands to query the
results on it, and how to stop it (``cdcflow demo --stop``). A demo that fails before it
gets there stops the server it started.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from cdcflow import sqlfiles
from cdcflow.config import Settings

log = logging.getLogger(__name__)
QUERIES = "demo.sql"
CLEAR = "\x1b[H\x1b[2J"


@dataclass
class Snapshot:
    at: float
    staged_total: int
    captures: list[tuple] = field(default_factory=list)
    projections: list[tuple] = field(default_factory=list)
    kpi: list[tuple] = field(default_factory=list)


def take(conn: psycopg.Connection, source_name: str) -> Snapshot:
    caps = conn.execute(sqlfiles.query(QUERIES, "capture_totals"), {"source": source_name}).fetchall()
    projs = conn.execute(sqlfiles.query(QUERIES, "projections")).fetchall()
    kpi = conn.execute(sqlfiles.query(QUERIES, "newest_kpi"), {"limit": 6}).fetchall()
    return Snapshot(time.monotonic(), sum(int(c[2]) for c in caps), caps, projs, kpi)


def _age(now: dt.datetime, t: dt.datetime | None) -> str:
    return "-" if t is None else f"{max(0.0, (now - t).total_seconds()):.2f}s"


def render(
    snap: Snapshot, prev: Snapshot | None, load_rate: float, elapsed: float, where: str, console: str = ""
) -> str:
    now = dt.datetime.now(dt.UTC)
    rate = 0.0
    if prev is not None and snap.at > prev.at:
        rate = (snap.staged_total - prev.staged_total) / (snap.at - prev.at)
    lines = [
        f"cdcflow demo - embedded PostgreSQL in {where} - {elapsed:.0f}s (Ctrl-C stops)",
        console,
        f"load generator: {load_rate:,.0f} changes/s    staged: {rate:,.0f} changes/s    "
        f"total staged: {snap.staged_total:,}",
        "",
        f"{'CAPTURE':<18} {'STATE':<7} {'ROWS_STAGED':>12} {'LAG':>8}",
    ]
    for capture, state, rows, last_commit, _updated in snap.captures:
        lines.append(f"{capture:<18} {state:<7} {rows:>12,} {_age(now, last_commit) if rate else '0.00s':>8}")
    lines += ["", f"{'PROJECTION':<36} {'STATUS':<7} {'FRESHNESS':>9}"]
    for name, status, as_of_time, last_error in snap.projections:
        lines.append(f"{name:<36} {status:<7} {_age(now, as_of_time):>9}" + (f"  {last_error}" if last_error else ""))
    lines += [
        "",
        "newest KPI rows (proj_orders_kpi_by_minute_segment):",
        f"{'MINUTE':<17} {'SEGMENT':<11} {'ORDERS':>7} {'AMOUNT':>13} {'PAID':>13}",
    ]
    for minute, segment, count, amount, paid in snap.kpi:
        lines.append(f"{minute:%Y-%m-%d %H:%M} {segment:<11} {count:>7,} {amount:>13,.2f} {paid:>13,.2f}")
    return "\n".join(lines)


def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    from cdcflow import console
    from cdcflow.embedded import EmbeddedPostgres, postmaster_pid

    data_dir = Path(args.data_dir) / "pg"
    if args.stop:
        stopped = EmbeddedPostgres.stop_data_dir(data_dir)
        print(f"stopped the demo's PostgreSQL in {data_dir}" if stopped else f"no PostgreSQL runs in {data_dir}")
        return 0
    console.require_token_if_exposed(settings)  # before anything starts
    _interrupt_on_ctrl_c()
    if args.reset:
        print(f"wiping {data_dir}", flush=True)
        EmbeddedPostgres.wipe(data_dir)
    print(f"starting embedded PostgreSQL in {data_dir} ...", flush=True)
    was_running = postmaster_pid(data_dir) is not None
    try:
        pg = EmbeddedPostgres(data_dir)
    except KeyboardInterrupt:
        if not was_running:
            EmbeddedPostgres.stop_data_dir(data_dir)  # interrupted while starting it: not left behind
        raise
    try:
        return _run(args, settings, pg, data_dir)
    except BaseException:
        pg.release()  # no queries to run on it: stopped if this demo started it
        raise


def _interrupt_on_ctrl_c() -> None:
    """Until the pipeline runs (it installs its own graceful stop), Ctrl-C stops the demo at
    once, not after the server start and the bootstrap: nothing the demo starts needs more
    than what a crash gets (bootstrap and the initial snapshot resume on the next start)."""
    import signal

    import cdcflow

    if signal.SIGINT in cdcflow.EARLY_SIGNALS:  # pressed while the modules were loading
        raise KeyboardInterrupt
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _run(args: argparse.Namespace, settings: Settings, pg, data_dir: Path) -> int:
    from cdcflow import loadgen, status
    from cdcflow.bootstrap import bootstrap
    from cdcflow.runtime import Runtime, stop_on_signals

    live = not args.no_live and sys.stdout.isatty()
    duration = args.duration if args.duration is not None else (None if live else 20.0)
    source_dsn = pg.create_database("source")
    serving_dsn = pg.create_database("serving")
    settings = settings.replace(
        source_dsn=source_dsn,
        serving_dsn=serving_dsn,
        enable_proj_orders_kpi=True,
        enable_proj_orders_latest=True,
        poll_interval_seconds=min(settings.poll_interval_seconds, 1.0),
        projection_interval_seconds=min(settings.projection_interval_seconds, 1.0),
    )
    print("bootstrapping: demo schema and seed rows, publication, slot, initial snapshot ...", flush=True)
    bootstrap(settings, demo=True).source.close()
    runtime = Runtime(settings)
    load_stop = threading.Event()
    profile = loadgen.get_profile("moderate").replace(rate=args.rate, duration=86400.0)
    load_stats: list[loadgen.LoadStats] = []
    load_rate = [0.0]

    def on_progress(st: loadgen.LoadStats) -> None:
        load_rate[0] = st.changes_per_second

    def load() -> None:
        try:
            load_stats.append(loadgen.run_load(source_dsn, profile, load_stop, on_progress, progress_interval=1.0))
        except Exception as exc:  # shown, then the demo goes on without load
            log.error("load generator stopped: %s", exc)

    loader = threading.Thread(target=load, name="loadgen", daemon=True)
    how_long = f"for {duration:g}s" if duration else "until Ctrl-C"
    print(f"running the pipeline with the load generator ({profile.rate:g} orders/s) {how_long} ...", flush=True)
    started = time.monotonic()
    with stop_on_signals(runtime.stop):
        if live:
            logging.getLogger().setLevel(logging.WARNING)  # the view replaces the log
        runtime.start()
        loader.start()
        console_at = runtime.telemetry.console_line()
        print(console_at, flush=True)
        _watch(runtime, settings, serving_dsn, live, duration, started, load_rate, str(data_dir), console_at)
        interrupted = runtime.stop.is_set()
        load_stop.set()
        loader.join(15)
        if interrupted:
            print("\nstopping: finishing the current batches ...", flush=True)
        else:
            caught_up = status.wait_caught_up(settings, timeout=30, stop=runtime.stop)
            print("ingestion caught up with the source" if caught_up else "ingestion did not catch up in 30s")
            runtime.stop.wait(2 * settings.projection_interval_seconds)  # one more projection cycle
        runtime.stop.set()
        runtime.join()
    st = status.collect(settings)
    print()
    print(status.render_text(st))
    _print_queries(args, pg, data_dir, serving_dsn, load_stats[0].changes if load_stats else 0)
    return 0 if st.healthy else 3


def _watch(runtime, settings, serving_dsn, live, duration, started, load_rate, where, console_at) -> None:
    """Until stopped or ``duration`` is over: the live view redrawn every second, or (not
    ``live``) one progress line every 5 s."""
    prev: Snapshot | None = None
    with psycopg.connect(serving_dsn, autocommit=True) as conn:
        while not runtime.stop.is_set():
            elapsed = time.monotonic() - started
            if duration is not None and elapsed >= duration:
                return
            snap = take(conn, settings.source_name)
            if live:
                view = render(snap, prev, load_rate[0], elapsed, where, console_at)
                sys.stdout.write(CLEAR + view + "\n")
                sys.stdout.flush()
            elif prev is None or int(elapsed) // 5 != int(prev.at - started) // 5:
                print(render(snap, prev, load_rate[0], elapsed, where).splitlines()[2], flush=True)
            prev = snap if prev is None or snap.at - prev.at >= 0.9 else prev
            runtime.stop.wait(1.0)


def _print_queries(args: argparse.Namespace, pg, data_dir: Path, serving_dsn: str, made: int) -> None:
    """The psql commands that show the projections, and how to stop the server they need."""
    psql = pg.bin_path / "psql"
    print()
    print(f"the load generator made {made:,} changes. Query the results:")
    kpi = "minute_bucket, segment, orders_count, orders_amount_sum, paid_amount_sum, payments_count"
    print(
        f'  {psql} "{serving_dsn}" -c "SELECT {kpi} FROM proj_orders_kpi_by_minute_segment ORDER BY 1 DESC LIMIT 20"'  # noqa: S608
    )
    print(f'  {psql} "{serving_dsn}" -c "SELECT * FROM proj_orders_latest ORDER BY order_id DESC LIMIT 20"')  # noqa: S608
    print("  (columns named __... hold each projection's own state: docs/projections.md)")
    again = "" if Path(args.data_dir) == Path(".cdcflow") else f" --data-dir {args.data_dir}"
    print(f"PostgreSQL keeps running in {data_dir} for these queries; stop it with: cdcflow demo --stop{again}")
