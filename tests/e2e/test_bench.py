"""``cdcflow bench --quick`` as a user runs it: a short sustained run writes its results."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

from tests.conftest import ROOT


def _bench(tmp_path, which: str) -> subprocess.CompletedProcess:
    """``cdcflow bench WHICH --quick`` in a clean environment; it must succeed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOURCE_", "SERVING_", "CDC_", "ENABLE_PROJ"))}
    proc = subprocess.run(
        [sys.executable, "-m", "cdcflow", "bench", which, "--quick", "--out", str(tmp_path)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_quick_sustained_bench_writes_samples_and_summary(tmp_path):
    proc = _bench(tmp_path, "sustained")
    assert "staged" in proc.stdout and "sustained:" in proc.stdout  # progress while it runs
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    summary = json.loads((run_dir / "sustained" / "summary.json").read_text())
    lag = summary["ingestion_lag_seconds"]
    assert lag["n"] > 0 and 0 < lag["p50"] <= lag["p95"] <= lag["max"]
    for name in ("proj_orders_kpi_by_minute_segment", "proj_orders_latest"):
        assert summary["projection_freshness_seconds"][name]["n"] > 0
    assert summary["staged_changes_per_second"] > 0 and "pass" in summary
    with open(run_dir / "sustained" / "samples.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["kind"] for r in rows} == {"ingestion_lag", "projection_freshness"}


def test_quick_snapshot_bench_measures_cdcflow_against_the_raw_pipe(tmp_path):
    proc = _bench(tmp_path, "snapshot")
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    summary = json.loads((run_dir / "snapshot" / "snapshot.json").read_text())
    # Both stages moved every row of the table, in every round.
    assert {(r["stage"], r["rows"]) for r in summary["rounds"]} == {("raw", 100_000), ("cdcflow", 100_000)}
    assert len(summary["ratios"]) == 2 and all(r > 0 for r in summary["ratios"])
    assert summary["peak_rss_mb"] > 0 and "cdcflow / raw pipe" in proc.stdout
