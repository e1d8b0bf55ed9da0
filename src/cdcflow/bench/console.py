"""What the web console costs: ``cdcflow run``'s CPU with and without one viewer, same run.

``python benchmarks/console_cpu.py --rate 10000 --windows 4 --window-seconds 30``

Starts an embedded PostgreSQL, ``cdcflow run`` as a process of its own (the demo's two
projections, its listener on a free port) and the load generator at ``--rate`` changes/s.
After a warm-up it alternates windows without a viewer and with one (a client reading
``/events`` as the page does), and reads the run process's CPU time from /proc over each
window. Prints the mean CPU, in % of one core, of each kind of window and the difference.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psycopg

from cdcflow.config import Settings


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Viewer:
    """One console viewer: reads the event stream until closed."""

    def __init__(self, url: str) -> None:
        self.bytes = 0
        self.ticks = 0
        self._resp = urllib.request.urlopen(url, timeout=10)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for line in self._resp:
                self.bytes += len(line)
                self.ticks += line.startswith(b"event: tick")
        except Exception:  # noqa: S110 (closed by close(), from another thread: http.client raises anything)
            pass

    def close(self) -> None:
        self._resp.close()
        self._thread.join(5)


def measure(args: argparse.Namespace) -> dict:
    from cdcflow import loadgen
    from cdcflow.bootstrap import bootstrap
    from cdcflow.embedded import EmbeddedPostgres

    pg = EmbeddedPostgres(Path(args.data_dir))
    slot = "cdcflow_console_bench"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SOURCE_", "SERVING_", "ENABLE_PROJ", "CONSOLE_"))},
        "SOURCE_DSN": pg.create_database("console_source", drop=True),
        "SERVING_DSN": pg.create_database("console_serving", drop=True),
        "SOURCE_SLOT_NAME": slot,
        "SOURCE_PUBLICATION": slot,
        "ENABLE_PROJ_ORDERS_KPI": "true",
        "ENABLE_PROJ_ORDERS_LATEST": "true",
        "POLL_INTERVAL_SECONDS": "0.5",
        "PROJECTION_INTERVAL_SECONDS": "1",
        "METRICS_PORT": str(free_port()),
        "LOG_LEVEL": "info",  # the console's threads log their own CPU time when they stop
        # Work that comes and goes on its own schedule would swamp the comparison's noise.
        "PROJECTION_SELF_CHECK_SECONDS": "0",
        "COMPACTION_INTERVAL_SECONDS": "0",
    }
    with psycopg.connect(pg.dsn(), autocommit=True) as admin:
        drop = "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s"
        admin.execute(drop, (slot,))
    bootstrap(Settings.from_env(env), demo=True).source.close()
    source_dsn, port = env["SOURCE_DSN"], env["METRICS_PORT"]
    log_path = Path(args.data_dir).parent / "bench-console-run.log"
    log_file = open(log_path, "w")  # noqa: SIM115 (closed below)
    run = subprocess.Popen([sys.executable, "-m", "cdcflow", "run"], env=env, stderr=log_file)
    profile = loadgen.get_profile("heavy_10k")
    total = args.warmup + 2 * args.windows * args.window_seconds + 5
    load = subprocess.Popen(
        [sys.executable, "-m", "cdcflow", "loadgen", "--dsn", source_dsn, "--profile", "heavy_10k", "--rate",
         f"{args.rate / profile.changes_per_order:.3f}", "--duration", f"{total:.0f}", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    windows: dict[str, list[float]] = {"without": [], "with": []}
    viewer_bytes = 0
    try:
        time.sleep(args.warmup)
        for i in range(2 * args.windows):
            kind = "with" if i % 2 else "without"
            viewer = Viewer(f"http://127.0.0.1:{port}/events") if kind == "with" else None
            c0, t0 = cpu_seconds(run.pid), time.monotonic()
            time.sleep(args.window_seconds)
            c1, t1 = cpu_seconds(run.pid), time.monotonic()
            if viewer is not None:
                viewer.close()
                viewer_bytes += viewer.bytes
                if not viewer.ticks:
                    raise RuntimeError("the viewer received no tick: is the console served?")
            windows[kind].append(100 * (c1 - c0) / (t1 - t0))
            print(f"  window {i + 1}: {kind} a viewer: {windows[kind][-1]:.1f}% of one core", flush=True)
        load_out = load.communicate(timeout=total + 60)[0]
    finally:
        for p in (load, run):
            if p.poll() is None:
                p.terminate()
            p.wait(60)
        log_file.close()
        pg.release()  # stopped, unless it ran before this benchmark
    logged = log_path.read_text().splitlines()
    feed = [line for line in logged if "console-feed stopped" in line]
    http = [line for line in logged if "] stopped:" in line and "cdcflow.health" in line]
    stats = json.loads(load_out.strip().splitlines()[-1]) if load_out.strip() else {}
    without, with_ = statistics.mean(windows["without"]), statistics.mean(windows["with"])
    return {
        "load_changes_per_second": stats.get("changes_per_second"),
        "cpu_percent_without_viewer": windows["without"],
        "cpu_percent_with_viewer": windows["with"],
        "mean_without": without,
        "mean_with": with_,
        "console_adds_percent_of_one_core": with_ - without,
        "stream_bytes_per_second": viewer_bytes / (args.windows * args.window_seconds),
        "feed_thread": feed[-1].split(": ", 1)[-1] if feed else None,
        "http_thread": http[-1].split(": ", 1)[-1] if http else None,
        "viewer_seconds": args.windows * args.window_seconds,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=10_000, help="changes/s the load generator makes")
    p.add_argument("--windows", type=int, default=4, help="pairs of windows (without, with a viewer)")
    p.add_argument("--window-seconds", type=float, default=30)
    p.add_argument("--warmup", type=float, default=20)
    p.add_argument("--data-dir", default=".cdcflow/bench-console-pg")
    args = p.parse_args(argv)
    out = measure(args)
    print(json.dumps(out, indent=2))
    print(
        f"console: {out['console_adds_percent_of_one_core']:+.2f}% of one core with one viewer "
        f"({out['mean_with']:.1f}% against {out['mean_without']:.1f}%) at "
        f"{out['load_changes_per_second'] or 0:,.0f} changes/s; the feed thread: {out['feed_thread']} "
        f"over {out['viewer_seconds']:g}s with a viewer; the HTTP thread: {out['http_thread']} over the whole run"
    )
    return 0
