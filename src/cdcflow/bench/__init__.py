"""Benchmarks behind ``cdcflow bench``: sustained load, catch-up, projection scaling.

Each writes its results under ``<out>/<timestamp>/<name>/`` and prints progress while it
runs. Figures are reported as ratios against a baseline measured in the same run where
the benchmark has one (these machines are shared and noisy).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path


def results_dir(out: Path, name: str, stamp: str | None = None) -> Path:
    stamp = stamp or dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = Path(out) / stamp / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50/p95/p99/max by the nearest-rank method (None when there are no values)."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None, "n": 0}
    v = sorted(values)

    def rank(p: float) -> float:
        k = max(0, min(len(v) - 1, int(-(-p * len(v) // 100)) - 1))
        return v[k]

    return {"p50": rank(50), "p95": rank(95), "p99": rank(99), "max": v[-1], "n": len(v)}
