"""``cdcflow demo``: the pipeline on an embedded PostgreSQL, with sample changes."""

from __future__ import annotations

import argparse
import logging
import random
import threading
from pathlib import Path

import psycopg

from cdcflow.config import Settings

log = logging.getLogger(__name__)


def _sample_changes(dsn: str, stop: threading.Event, rate_per_s: float = 20.0) -> int:
    """A few orders, updates and payments per second until stopped. Returns changes made."""
    rng = random.Random(7)
    made = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not stop.is_set():
            with conn.transaction():
                cust = conn.execute("SELECT customer_id FROM customers ORDER BY random() LIMIT 1").fetchone()
                order_id = conn.execute(
                    "INSERT INTO orders (customer_id, amount, status) VALUES (%s, %s, 'NEW') RETURNING order_id",
                    (cust[0] if cust else None, round(rng.uniform(5, 500), 2)),
                ).fetchone()[0]
                made += 1
                if rng.random() < 0.5:
                    conn.execute("UPDATE orders SET status = 'PAID', updated_at = now() WHERE order_id = %s", (order_id,))
                    conn.execute(
                        "INSERT INTO payments (order_id, paid_amount) SELECT order_id, amount FROM orders WHERE order_id = %s",
                        (order_id,),
                    )
                    made += 2
            stop.wait(1.0 / rate_per_s)
    return made


def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    from cdcflow import status
    from cdcflow.bootstrap import bootstrap
    from cdcflow.embedded import EmbeddedPostgres
    from cdcflow.runtime import Runtime, stop_on_signals

    data_dir = Path(args.data_dir) / "pg"
    if args.reset:
        print(f"wiping {data_dir}")
        EmbeddedPostgres.wipe(data_dir)
    print(f"starting embedded PostgreSQL in {data_dir} ...", flush=True)
    pg = EmbeddedPostgres(data_dir)
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
    print("bootstrapping the demo schema, publication, slot and initial snapshot ...", flush=True)
    bootstrap(settings, demo=True).source.close()
    runtime = Runtime(settings)
    made = [0]
    loader_stop = threading.Event()
    loader = threading.Thread(
        target=lambda: made.__setitem__(0, _sample_changes(source_dsn, loader_stop)), daemon=True
    )
    print(f"running the pipeline with sample changes for {args.duration:g}s (Ctrl-C stops) ...", flush=True)
    with stop_on_signals(runtime.stop):
        runtime.start()
        loader.start()
        interrupted = runtime.stop.wait(args.duration)
        loader_stop.set()
        loader.join(10)
        if not interrupted:
            caught_up = status.wait_caught_up(settings, timeout=30, stop=runtime.stop)
            print("ingestion caught up with the source" if caught_up else "ingestion did not catch up in 30s")
        runtime.stop.set()
        runtime.join()
    st = status.collect(settings)
    print()
    print(status.render_text(st))
    print()
    print(f"made {made[0]} sample changes. Query the results:")
    print(f"  {pg.bin_path / 'psql'} \"{serving_dsn}\" -c 'SELECT * FROM proj_orders_kpi_by_minute_segment'")
    return 0 if st.healthy else 3
