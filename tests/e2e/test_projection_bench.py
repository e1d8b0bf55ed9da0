"""The projection-scaling benchmark end to end, small: every cycle applies its whole delta
(the benchmark asserts it), and the results say how the server was configured."""

from __future__ import annotations

import json

import pytest

from cdcflow.bench import projection_scaling


def test_projection_bench_records_cycles_and_server_settings(embedded_server, tmp_path):
    result = projection_scaling.run(tmp_path, [3000, 30000], lambda m: None, embedded_server.admin_dsn, ("recent",))
    saved = json.loads((tmp_path / "projection_scaling.json").read_text())
    assert saved["growth_largest_vs_smallest"]["recent"] == result["growth_largest_vs_smallest"]["recent"] > 0
    for size in result["sizes"]:
        assert len(size["recent"]["cycle_s"]) == projection_scaling.DELTAS - 1  # the warm-up is not counted
        assert size["full_recompute_s"] > 0
        rows = size["recent"]["rows_touched"]
        assert set(rows) == {"delta", "state_orders", "state_payments", "state_customers", "buckets"}
        assert 0 < rows["delta"] <= projection_scaling.DELTA  # the latest version per key of 10,000 changes
        assert rows["buckets"] > 0 and rows["state_orders"] > 0  # the delta updates stored orders
    # The larger history holds more distinct buckets and customers for the same delta to touch.
    small, large = (s["recent"]["rows_touched_median"] for s in result["sizes"])
    assert large > small > 0
    growth = result["rows_touched_growth_largest_vs_smallest"]["recent"]
    assert growth == round(large / small, 2)
    per_row = result["per_touched_row_growth_largest_vs_smallest"]["recent"]
    assert per_row == round(result["growth_largest_vs_smallest"]["recent"] / growth, 2)
    settings = result["server_settings"]
    assert {"shared_buffers", "max_wal_size", "huge_pages"} <= set(settings)
    assert settings.get("huge_pages_status", "off") in ("on", "off")  # PostgreSQL 17+ reports it
    # A server at --dsn is used as it is: sizing it is the embedded server's business.
    with pytest.raises(ValueError, match="configure the one at --dsn"):
        projection_scaling.run(tmp_path, [3000], lambda m: None, embedded_server.admin_dsn, huge_pages="off")
