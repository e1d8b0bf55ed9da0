"""Run the fault suite from the command line and print what it did and checked.

    python -m tests.faults.run            # short variant (~1 min)
    python -m tests.faults.run --long     # long variant (>= 20 SIGKILLs, >= 3 restarts of each server)
    python -m tests.faults.run --duration 120 --kills 10 --seed 3

Exit status 0 when every check passed. The pipeline's log and report.json go to
``.cdcflow/faults-runs/<time>/``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from tests.faults.harness import LONG, SHORT, FaultRun
from tests.faults.servers import DATA, start_servers


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.faults.run", description=__doc__.splitlines()[0])
    p.add_argument("--long", action="store_true", help="the long variant (documented in docs/operations.md)")
    p.add_argument("--duration", type=float, help="seconds of load under faults")
    p.add_argument("--kills", type=int, help="pipeline SIGKILLs")
    p.add_argument("--restarts", type=int, help="restarts of each server")
    p.add_argument("--cuts", type=int, help="proxy cuts per database")
    p.add_argument("--immediate-every", type=int, help="every n-th server restart is '-m immediate' (0: none)")
    p.add_argument("--rate", type=float, help="load transactions per second")
    p.add_argument("--seed", type=int, help="random seed (schedule and load)")
    p.add_argument(
        "--servers",
        default="faults",
        help="data dirs .cdcflow/<SERVERS>-src and -srv (default faults; another name runs beside pytest)",
    )
    args = p.parse_args(argv)
    plan = LONG if args.long else SHORT
    for name, field in (("duration", "duration"), ("kills", "kills"), ("rate", "rate"), ("seed", "seed")):
        if getattr(args, name) is not None:
            plan = plan.with_(**{field: getattr(args, name)})
    if args.immediate_every is not None:
        plan = plan.with_(immediate_every=args.immediate_every)
    if args.restarts is not None:
        plan = plan.with_(serving_restarts=args.restarts, source_restarts=args.restarts)
    if args.cuts is not None:
        plan = plan.with_(serving_cuts=args.cuts, source_cuts=args.cuts)
    logging.basicConfig(level=logging.WARNING)
    workdir = DATA / "faults-runs" / time.strftime("%Y%m%dT%H%M%S")
    source, serving = start_servers(args.servers)
    try:
        report = FaultRun(plan, source, serving, workdir, echo=lambda s: print(s, flush=True)).run()
    finally:
        source.stop()
        serving.stop()
    print(report.render(), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
