"""Console cost benchmark (see cdcflow.bench.console): ``python benchmarks/console_cpu.py --rate 10000``."""

from cdcflow.bench.console import main

if __name__ == "__main__":
    raise SystemExit(main())
