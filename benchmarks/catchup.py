"""Catch-up benchmark (see cdcflow.bench.catchup): ``python benchmarks/catchup.py --changes 1000000``."""

from cdcflow.bench.catchup import main

if __name__ == "__main__":
    raise SystemExit(main())
