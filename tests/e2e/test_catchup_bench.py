"""The catch-up benchmark end to end, small: every stage reads the same backlog and cdcflow
stages exactly what was generated (the benchmark itself checks the count and raises)."""

from __future__ import annotations

import json

from cdcflow.bench import catchup
from tests.conftest import ROOT, _system


def test_catchup_bench_with_serving_on_a_server_of_its_own(embedded_server, tmp_path):
    """Source on the embedded PostgreSQL 18, serving on the system PostgreSQL 15 (the CI
    machine's service): another major version, so the stream is in text mode, and a CPU
    sampler that watches both servers."""
    serving = _system()  # skips where CDCFLOW_TEST_PG_DSN is not set
    result = catchup.run(
        tmp_path,
        3000,
        progress=lambda m: None,
        data_dir=ROOT / ".cdcflow" / "test-pg",  # the running test server (embedded_server)
        unit=20,
        stages=("raw", "cdcflow"),
        serving_dsn=serving.admin_dsn,
    )
    generated = result["generated"]["changes"]
    assert generated >= 3000
    assert result["stages"]["cdcflow"]["rows_staged"] == generated
    assert result["transfer"].startswith("text")  # PostgreSQL 18 -> 15: no binary COPY across major versions
    assert result["serving_server"]["version"].startswith("15")
    # The serving backend's CPU was read on the other server.
    assert "serving client backend" in result["stages"]["cdcflow"]["cpu_seconds"]
    assert json.loads((tmp_path / "catchup.json").read_text())["ratio_cdcflow_to_raw"] > 0
    # Nothing of the run is left on either server.
    with serving.admin() as conn:
        assert not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (catchup.SRV_DB,)).fetchone()
    with embedded_server.admin() as conn:
        assert not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (catchup.SRC_DB,)).fetchone()
        assert not conn.execute(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name LIKE %s", (catchup.SLOT_PREFIX + "%",)
        ).fetchone()
