"""Projection scaling benchmark (see cdcflow.bench.projection_scaling):
``python benchmarks/projection_scaling.py --sizes 1e5,1e6,1e7``."""

from cdcflow.bench.projection_scaling import main

if __name__ == "__main__":
    raise SystemExit(main())
