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

from cdcflow import __version__, logs
from cdcflow.config import Settings
from cdcflow.errors import CdcflowError, ConfigError
from cdcflow.redact import REDACTOR

log = logging.getLogger("cdcflow")

EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_UNHEALTHY = 3


def _settings(env: Mapping[str, str]) -> Settings:
    settings = Settings.from_env(env)
    REDACTOR.add_dsn(settings.source_dsn)
    REDACTOR.add_dsn(settings.serving_dsn)
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
    from cdcflow.bootstrap import bootstrap, wait_for_databases
    from cdcflow.runtime import Runtime

    wait_for_databases(settings)
    bootstrap(settings, demo=False).source.close()
    runtime = Runtime(settings, fault_point=os.environ.get("CDCFLOW_FAULT_POINT") or None)
    runtime.run_until_stopped(args.duration)
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from cdcflow import status

    st = status.collect(settings)
    print(status.render_json(st) if args.json else status.render_text(st))
    return 0 if st.healthy else EXIT_UNHEALTHY


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from cdcflow.demo import run_demo

    return run_demo(args, settings)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cdcflow",
        description="Change data capture from PostgreSQL into a serving PostgreSQL, with DuckDB projections. "
        "Configured by environment variables (SOURCE_DSN, SERVING_DSN, ...): see docs/configuration.md.",
    )
    p.add_argument("--version", action="version", version=f"cdcflow {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser("bootstrap", help="create publication, slot, staging/control/projection tables; initial snapshot")
    b.add_argument("--demo", action="store_true", help="also create and seed the demo tables in the source")
    b.set_defaults(func=cmd_bootstrap)

    r = sub.add_parser("run", help="bootstrap if needed, then stream changes and maintain projections")
    r.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: run until signalled)")
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("status", help="per capture and projection: position, lag, state (exit 3 if unhealthy)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_status)

    d = sub.add_parser("demo", help="run the pipeline on an embedded PostgreSQL with sample changes")
    d.add_argument("--data-dir", default=".cdcflow", help="where the embedded server keeps its data (default .cdcflow)")
    d.add_argument("--reset", action="store_true", help="wipe the embedded server's data first")
    d.add_argument("--duration", type=float, default=20.0, help="seconds to run (default 20)")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
