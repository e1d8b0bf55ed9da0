"""Command line: ``cdcflow run | bootstrap | status | demo``.

Environment variables are read here and nowhere else (see :mod:`cdcflow.config`). Every
failure ends as one line on stderr, ``cdcflow: error: ...``, and a non-zero exit.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from cdcflow import __version__, console, logs
from cdcflow.config import Settings
from cdcflow.errors import CdcflowError, ConfigError
from cdcflow.redact import REDACTOR

if TYPE_CHECKING:
    from cdcflow.runtime import Hooks

log = logging.getLogger("cdcflow")

EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_UNHEALTHY = 3


def _settings(env: Mapping[str, str]) -> Settings:
    settings = Settings.from_env(env)
    REDACTOR.add_dsn(settings.source_dsn)
    REDACTOR.add_dsn(settings.serving_dsn)
    if settings.console_token:
        REDACTOR.add_secret(settings.console_token)
    return settings


def cmd_bootstrap(args: argparse.Namespace, settings: Settings) -> int:
    from cdcflow.bootstrap import bootstrap, wait_for_databases

    wait_for_databases(settings)
    result = bootstrap(settings, demo=args.demo)
    print(
        f"bootstrapped source {settings.source_name}: capturing "
        + ", ".join(f"{s.qualified} -> {s.staging_table}" for s in result.specs)
        + f" (publication {settings.publication}, slot {settings.slot})"
    )
    result.source.close()
    return 0


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from cdcflow import db
    from cdcflow.bootstrap import bootstrap, wait_for_databases
    from cdcflow.runtime import Runtime, stop_on_signals

    console.require_token_if_exposed(settings)  # before waiting for any database
    runtime = Runtime(settings, hooks=args.hooks)
    with stop_on_signals(runtime.stop):  # a signal during start-up stops cleanly too
        wait_for_databases(settings, runtime.stop)
        if not runtime.stop.is_set():
            # A database that drops right after the wait is retried the same way.
            db.wait_for(
                "source or serving",
                lambda: bootstrap(settings, demo=False).source.close(),
                settings.startup_wait_seconds,
                runtime.stop,
            )
        if runtime.stop.is_set():
            return 0
        runtime.run_until_stopped(args.duration)
    return EXIT_ERROR if runtime.failed else 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from cdcflow import status

    st = status.collect(settings)
    print(status.render_json(st) if args.json else status.render_text(st))
    return 0 if st.healthy else EXIT_UNHEALTHY


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from cdcflow.demo import run_demo

    return run_demo(args, settings)


def cmd_resync(args: argparse.Namespace, settings: Settings) -> int:
    from cdcflow import admin
    from cdcflow.bootstrap import wait_for_databases
    from cdcflow.sources.engines import position_format

    wait_for_databases(settings)
    watermark = admin.resync(settings, args.captures or None)
    position = position_format(settings)(watermark)
    print(f"resynced source {settings.source_name}: fresh snapshot staged, streaming from {position}")
    return 0


def cmd_reset(args: argparse.Namespace, settings: Settings) -> int:
    from cdcflow import admin
    from cdcflow.bootstrap import wait_for_databases

    if not args.yes:
        if not sys.stdin.isatty():
            raise ConfigError("reset deletes all staged rows and projections: pass --yes to confirm")
        answer = input(
            f"This deletes every staged row and projection of source {settings.source_name} and drops slot "
            f"{settings.slot}. Type 'reset' to go on: "
        )
        if answer.strip() != "reset":
            print("nothing changed")
            return 1
    wait_for_databases(settings)
    admin.reset(settings)
    print(
        f"reset source {settings.source_name}: staging, projections, watermarks and checkpoints cleared; "
        "the next 'cdcflow run' takes a new initial snapshot"
    )
    return 0


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    import datetime as dt
    import json
    from pathlib import Path

    out = Path(args.out)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    if settings.log_level == "info":
        logging.getLogger().setLevel(logging.WARNING)  # the progress lines are the output
    which = ["sustained", "catchup", "projections", "snapshot"] if args.which == "all" else [args.which]
    ok = True

    def progress(msg: str) -> None:
        print(msg, flush=True)

    for name in which:
        if name == "sustained":
            from cdcflow.bench import sustained

            rate = args.rate or (1000 if args.quick else 20_000)
            duration = args.duration or (6 if args.quick else 180)
            summary = sustained.run(
                out,
                changes_per_second=rate,
                duration=duration,
                warmup=2 if args.quick else 5,
                progress=progress,
                stamp=stamp,
                user_projections=not args.seed_projections_only,
            )
            ok = ok and (summary["pass"] or args.quick)
        elif name == "catchup":
            from cdcflow.bench import catchup

            changes = args.changes or (20_000 if args.quick else 1_000_000)
            res = catchup.run(out / stamp / "catchup", changes, progress, dsn=args.dsn)
            progress(
                json.dumps({k: v for k, v in res.items() if k in ("ratio", "changes", "stages")}, default=str)[:2000]
            )
        elif name == "peers":
            from cdcflow.bench import peers

            lacking = peers.missing()
            if lacking:
                raise ConfigError(lacking)
            changes = args.changes or (20_000 if args.quick else 1_000_000)
            peers.run(out / stamp / "peers", changes, progress, dsn=args.dsn)
        elif name == "snapshot":
            from cdcflow.bench import snapshot

            snapshot.run(
                out / stamp / "snapshot",
                args.rows or (100_000 if args.quick else 10_000_000),
                progress,
                workers=args.workers,
                dsn=args.dsn,
            )
        else:
            import cdcflow.bench.projection_scaling as projection_scaling

            sizes = [int(float(x)) for x in (args.sizes or ("1e4,1e5" if args.quick else "1e5,1e6,1e7")).split(",")]
            try:
                measured = projection_scaling.measured_names(args.projections)
            except ValueError as exc:
                raise ConfigError(f"--projections={args.projections!r}: {exc}") from None
            projection_scaling.run(out / stamp / "projection_scaling", sizes, progress, measured=measured)
    print(f"results in {out / stamp}")
    return 0 if ok else EXIT_UNHEALTHY


# -- loadgen (self-contained block) -------------------------------------------------


def cmd_loadgen(args: argparse.Namespace, settings: Settings) -> int:
    import json
    import threading

    from cdcflow import loadgen
    from cdcflow.runtime import stop_on_signals

    dsn = args.dsn or settings.source_dsn
    if not dsn:
        raise ConfigError("loadgen needs a source: set SOURCE_DSN or pass --dsn (a PostgreSQL connection string)")
    REDACTOR.add_dsn(dsn)
    profile = loadgen.get_profile(args.profile).replace(
        rate=args.rate, duration=args.duration, connections=args.connections
    )
    stop = threading.Event()
    last: list[loadgen.LoadStats] = []

    def progress(st: loadgen.LoadStats) -> None:
        print(loadgen.format_progress(st, last[0] if last else None), file=sys.stderr, flush=True)
        last[:] = [st]

    with stop_on_signals(stop):
        stats = loadgen.run_load(
            dsn,
            profile,
            stop,
            progress,
            max_changes=args.max_changes,
            progress_interval=args.progress_interval,
            seed=args.seed,
        )
    print(json.dumps(stats.as_dict()) if args.json else loadgen.format_summary(stats), flush=True)
    return 0


def add_loadgen_parser(sub: argparse._SubParsersAction) -> None:
    from cdcflow.loadgen import PROFILES

    g = sub.add_parser("loadgen", help="write orders, updates and payments to the source's demo tables at a rate")
    g.add_argument("--profile", default="moderate", help=f"load shape: {', '.join(PROFILES)} (default moderate)")
    g.add_argument("--dsn", default=None, help="source database (default: SOURCE_DSN)")
    g.add_argument("--rate", type=float, default=None, help="orders per second, overriding the profile (0 = max)")
    g.add_argument("--duration", type=float, default=None, help="seconds, overriding the profile")
    g.add_argument("--max-changes", type=int, default=None, help="stop after this many row changes")
    g.add_argument("--connections", type=int, default=None, help="writer connections (threads)")
    g.add_argument("--progress-interval", type=float, default=2.0, help="seconds between progress lines on stderr")
    g.add_argument("--seed", type=int, default=1, help="random seed (same seed, same choices)")
    g.add_argument("--json", action="store_true", help="print the summary as JSON")
    g.set_defaults(func=cmd_loadgen)


# -- rebuild (projections) -----------------------------------------------------


def cmd_rebuild(args: argparse.Namespace, settings: Settings) -> int:
    from cdcflow import projections

    if args.all == bool(args.projection):
        names = ", ".join(projections.definitions(settings).names) or "none enabled"
        raise ConfigError(f"name one projection or pass --all (projections: {names})")
    for name, result in projections.rebuild(settings, None if args.all else [args.projection]):
        print(
            f"rebuilt {name} from staging: {result.rows_changed} rows, as of lsn {result.cutoff} "
            f"({result.seconds:.1f}s)"
        )
    return 0


def _add_rebuild(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("rebuild", help="recompute a projection (and its state) from staging in one transaction")
    r.add_argument("projection", nargs="?", help="projection name, e.g. proj_orders_kpi_by_minute_segment")
    r.add_argument("--all", action="store_true", help="rebuild every projection")
    r.set_defaults(func=cmd_rebuild)


# -- projections (definitions: list, check, explain, drop) --------------------------


def cmd_projections(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from cdcflow import db, projections
    from cdcflow.projections import explain

    if args.action == "drop":
        if not args.name:
            raise ConfigError("name the projection to drop: cdcflow projections drop NAME")
        tables = projections.drop(settings, args.name)
        print(f"dropped projection {args.name}: tables {', '.join(tables) or 'none'} and its control rows")
        return 0
    _, serving_dsn = settings.require_dsns()
    with db.connect(serving_dsn, "serving") as conn:
        built, problems = projections.load(settings, conn)
        conn.rollback()
        status: dict[str, str] = (
            dict(conn.execute("SELECT projection_name, status FROM ctl_projection_metadata").fetchall())
            if (
                conn.execute("SELECT to_regclass('ctl_projection_metadata') IS NOT NULL").fetchone()[0]  # type: ignore[index]
            )
            else {}
        )
    if args.action == "explain":
        if not args.name:
            raise ConfigError("name the projection to explain: cdcflow projections explain NAME")
        for p in built:
            if p.name in (args.name, f"proj_{args.name}"):
                print(explain.explain(p))
                return 0
        for name, message in problems:
            if name in (args.name, f"proj_{args.name}"):
                print(message)
                return EXIT_CONFIG
        raise ConfigError(f"no enabled projection named {args.name!r}")
    rows = [{**explain.summary(p), "status": status.get(p.name, "INIT")} for p in built]
    rows += [{"projection": n, "mode": "refused", "problem": m, "status": status.get(n, "ERROR")} for n, m in problems]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif args.action == "check":
        for r in rows:
            if r["mode"] == "refused":
                print(f"refused  {r['problem']}")
            else:
                print(
                    f"ok       {r['projection']}: {r['mode']} ({r.get('shape', 'recomputed in full')}), "
                    f"reads {', '.join(r['captures'])}"
                )
    else:
        for r in rows:
            detail = r.get("problem") or f"{r.get('shape', 'full recompute')}; reads {', '.join(r['captures'])}"
            print(f"{r['projection']:40} {r['mode']:12} {r['status']:8} {detail}")
    return EXIT_CONFIG if problems and args.action == "check" else 0


def _add_projections(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("projections", help="projection definitions: list, check, explain NAME, drop NAME")
    p.add_argument("action", nargs="?", default="list", choices=["list", "check", "explain", "drop"])
    p.add_argument("name", nargs="?", help="projection (explain, drop)")
    p.add_argument("--json", action="store_true", help="machine-readable output (list, check)")
    p.set_defaults(func=cmd_projections)


# -- compact (staging compaction, self-contained block) -------------------------------


def cmd_compact(args: argparse.Namespace, settings: Settings) -> int:
    from cdcflow.bootstrap import wait_for_databases
    from cdcflow.compaction import Compactor

    if args.retention is not None:
        from cdcflow.config import _duration

        try:
            settings = settings.replace(staging_retention=_duration(args.retention))
        except ValueError as exc:
            raise ConfigError(f"--retention={args.retention!r} is not valid: {exc}") from None
    wait_for_databases(settings)
    result = Compactor(settings).run_pass()
    for c in result.captures:
        print(f"compacted {c.capture}: {c.deleted} rows removed at or below lsn {c.horizon} ({c.batches} batches)")
    print(f"compaction of source {settings.source_name}: {result.deleted} rows removed in {result.seconds:.1f}s")
    return 0


def _add_compact(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("compact", help="reduce staged history every projection has read to the latest row per key")
    c.add_argument(
        "--retention",
        default=None,
        help="keep history younger than this (e.g. 0, 90, 30m, 24h, 7d; default STAGING_RETENTION)",
    )
    c.set_defaults(func=cmd_compact)


def _add_demo(sub) -> None:
    d = sub.add_parser("demo", help="run the pipeline on an embedded PostgreSQL with sample changes")
    d.add_argument("--data-dir", default=".cdcflow", help="where the embedded server keeps its data (default .cdcflow)")
    d.add_argument("--reset", action="store_true", help="wipe the embedded server's data first")
    d.add_argument(
        "--stop", action="store_true", help="stop the embedded server a demo left running (for its queries), and exit"
    )
    d.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds to run (default: until Ctrl-C with the live view, 20 with --no-live)",
    )
    d.add_argument("--no-live", action="store_true", help="progress lines instead of the live view (for scripts)")
    d.add_argument(
        "--rate", type=float, default=200.0, help="orders per second the load generator writes (default 200)"
    )
    d.set_defaults(func=cmd_demo)


def _add_bench(sub) -> None:
    bn = sub.add_parser("bench", help="benchmarks: sustained load, catch-up, projection scaling (results under --out)")
    bn.add_argument(
        "which",
        nargs="?",
        default="sustained",
        choices=["sustained", "catchup", "projections", "snapshot", "peers", "all"],
    )
    bn.add_argument("--quick", action="store_true", help="a short run that shows the tool works (about 10 s each)")
    bn.add_argument("--out", default="benchmarks/results", help="results folder (a timestamped folder is made in it)")
    bn.add_argument("--rate", type=float, default=None, help="sustained: changes per second (default 20000)")
    bn.add_argument("--duration", type=float, default=None, help="sustained: seconds of load (default 180)")
    bn.add_argument(
        "--seed-projections-only",
        action="store_true",
        help="sustained: only the seed's two projections (default: also two users' projections)",
    )
    bn.add_argument(
        "--changes", type=int, default=None, help="catchup, peers: changes to pre-generate (default 1000000)"
    )
    bn.add_argument("--rows", type=int, default=None, help="snapshot: rows in the table (default 10000000)")
    bn.add_argument(
        "--dsn",
        default=None,
        help="catchup, snapshot, peers: an existing PostgreSQL server (a superuser DSN; default: an embedded server)",
    )
    bn.add_argument(
        "--workers", type=int, default=1, help="snapshot: connections copying side by side (SNAPSHOT_WORKERS)"
    )
    bn.add_argument("--sizes", default=None, help="projections: staged rows before the delta (default 1e5,1e6,1e7)")
    bn.add_argument(
        "--projections",
        default="kpi,revenue",
        help="projections: what to measure (default kpi,revenue: the seed's KPI and a user's three-table join)",
    )
    bn.set_defaults(func=cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cdcflow",
        description="Change data capture from PostgreSQL into a serving PostgreSQL, with DuckDB projections. "
        "Configured by environment variables (SOURCE_DSN, SERVING_DSN, ...): see docs/configuration.md.",
    )
    p.add_argument("--version", action="version", version=f"cdcflow {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser(
        "bootstrap", help="create publication, slot, staging/control/projection tables; initial snapshot"
    )
    b.add_argument("--demo", action="store_true", help="also create and seed the demo tables in the source")
    b.set_defaults(func=cmd_bootstrap)

    r = sub.add_parser("run", help="bootstrap if needed, then stream changes and maintain projections")
    r.add_argument(
        "--duration", type=float, default=None, help="stop after this many seconds (default: run until signalled)"
    )
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("status", help="per capture and projection: position, lag, state (exit 3 if unhealthy)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_status)

    _add_demo(sub)

    rs = sub.add_parser(
        "resync", help="repair a GAP: fresh snapshot, deletes for rows that vanished, capture back to OK"
    )
    rs.add_argument("captures", nargs="*", metavar="CAPTURE", help="capture(s) to repair (default: all of the source)")
    rs.set_defaults(func=cmd_resync)

    _add_bench(sub)

    rt = sub.add_parser("reset", help="clear staging and projections, reset watermarks and checkpoints, drop the slot")
    rt.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    rt.set_defaults(func=cmd_reset)
    add_loadgen_parser(sub)
    _add_rebuild(sub)
    _add_compact(sub)
    _add_projections(sub)
    return p


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None, *, hooks: Hooks | None = None) -> int:
    """``hooks``: installed in the workers of ``cdcflow run`` (see :class:`cdcflow.runtime.Hooks`)."""
    if argv is None:
        import cdcflow

        cdcflow.catch_early_signals()
    args = build_parser().parse_args(argv, argparse.Namespace(hooks=hooks))
    env = os.environ if env is None else env
    try:
        settings = _settings(env)
    except ConfigError as exc:
        print(f"cdcflow: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logs.configure(settings.log_level, settings.log_format)
    try:
        return int(args.func(args, settings))
    except ConfigError as exc:
        print(f"cdcflow: error: {REDACTOR(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG
    except CdcflowError as exc:
        print(f"cdcflow: error: {REDACTOR(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("cdcflow: interrupted", file=sys.stderr)
        return 130
