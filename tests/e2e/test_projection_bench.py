"""The projection-scaling benchmark end to end, small: every cycle applies its whole delta
(the benchmark asserts it), for the seed's KPI and a user's query, and the results say how
the server was configured and how each compares with a full recompute."""

from __future__ import annotations

import json

import pytest

from cdcflow.bench import projection_scaling as ps


def test_projection_bench_records_cycles_and_server_settings(embedded_server, tmp_path):
    measured = (ps.KPI, ps.USER_QUERIES["revenue"])
    result = ps.run(tmp_path, [3000, 30000], lambda m: None, embedded_server.admin_dsn, ("recent",), measured=measured)
    saved = json.loads((tmp_path / "projection_scaling.json").read_text())
    assert saved["growth_largest_vs_smallest"] == result["growth_largest_vs_smallest"]
    for name in measured:
        assert result["growth_largest_vs_smallest"]["recent"][name] > 0
    for size in result["sizes"]:
        for name in measured:
            cell = size["recent"][name]
            assert len(cell["cycle_s"]) == ps.DELTAS - 1  # the warm-up is not counted
            assert size["full_recompute_s"][name] > 0 and cell["speedup"] > 0
            rows = cell["rows_touched"]
            assert set(rows) == {"delta", "state_rows", "written"}
            assert 0 < rows["delta"] <= ps.DELTA  # the latest version per key of 10,000 changes
            assert rows["state_rows"] > 0 and rows["written"] > 0  # the delta reaches stored rows
        assert size["seed_recompute_s"] > 0 and size["recent"][ps.KPI]["speedup_vs_seed"] > 0
    # The larger history holds more distinct buckets and customers for the same delta to touch.
    small, large = (s["recent"][ps.KPI]["rows_touched_median"] for s in result["sizes"])
    assert large > small > 0
    growth = result["rows_touched_growth_largest_vs_smallest"]["recent"][ps.KPI]
    assert growth == round(large / small, 2)
    settings = result["server_settings"]
    assert {"shared_buffers", "max_wal_size", "huge_pages"} <= set(settings)
    assert settings.get("huge_pages_status", "off") in ("on", "off")  # PostgreSQL 17+ reports it
    # A server at --dsn is used as it is: sizing it is the embedded server's business.
    with pytest.raises(ValueError, match="configure the one at --dsn"):
        ps.run(tmp_path, [3000], lambda m: None, embedded_server.admin_dsn, huge_pages="off")
    with pytest.raises(ValueError, match="unknown projection 'nope'"):
        ps.measured_names("kpi,nope")
