"""The load generator against the embedded PostgreSQL: what it reports is what the source saw."""

from __future__ import annotations

import threading
import time

import pytest

from cdcflow import loadgen
from cdcflow.errors import ConfigError
from tests.conftest import Databases, wait_until

STATS_SQL = """
SELECT relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables
WHERE relname IN ('customers', 'orders', 'payments')"""


def _table_counts(dbs: Databases) -> dict[str, int]:
    with dbs.source() as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in loadgen.TABLES}  # noqa: S608


def _stat_counts(dbs: Databases) -> dict[str, tuple[int, int, int]]:
    with dbs.source() as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        return {r[0]: (r[1], r[2], r[3]) for r in conn.execute(STATS_SQL).fetchall()}


def _settled_stats(dbs: Databases, expect) -> dict[str, tuple[int, int, int]]:
    """Cumulative statistics reach the server asynchronously: wait until they match ``expect``."""
    seen: list[dict] = []

    def ok() -> bool:
        seen[:] = [_stat_counts(dbs)]
        return expect(seen[0])

    try:
        wait_until(ok, timeout=10, interval=0.2, what="pg_stat_user_tables to settle")
    except AssertionError:
        pass  # the assertion below shows the difference
    return seen[0]


def test_reported_changes_equal_what_the_source_saw(demo_source: Databases) -> None:
    dbs = demo_source
    before_rows = _table_counts(dbs)
    before = _settled_stats(dbs, lambda s: all(s[t][0] == before_rows[t] for t in loadgen.TABLES))
    profile = loadgen.get_profile("smoke").replace(rate=300, duration=2.5, connections=2)
    lines: list[loadgen.LoadStats] = []
    stats = loadgen.run_load(dbs.source_dsn, profile, progress=lines.append, progress_interval=0.5)

    assert stats.stopped_by == "duration"
    assert 2.5 <= stats.elapsed < 8
    # Every kind of change happened, on every table the profile touches.
    assert stats.inserts["customers"] > 0 and stats.updates["customers"] > 0
    assert stats.inserts["orders"] > 0 and stats.updates["orders"] > 0 and stats.deletes["orders"] > 0
    assert stats.inserts["payments"] > 0
    # The rate: 300 orders/s for 2.5 s (the last tick may still be due).
    assert 0.8 * 750 <= stats.orders <= 750
    assert len(lines) >= 3 and lines[-1].changes <= stats.changes

    after_rows = _table_counts(dbs)
    for t in loadgen.TABLES:
        assert after_rows[t] - before_rows[t] == stats.inserts[t] - stats.deletes[t], t

    def matches(s) -> bool:
        return all(
            (s[t][0] - before[t][0], s[t][1] - before[t][1], s[t][2] - before[t][2])
            == (stats.inserts[t], stats.updates[t], stats.deletes[t])
            for t in loadgen.TABLES
        )

    after = _settled_stats(dbs, matches)
    got = {t: (after[t][0] - before[t][0], after[t][1] - before[t][1], after[t][2] - before[t][2]) for t in after}
    want = {t: (stats.inserts[t], stats.updates[t], stats.deletes[t]) for t in loadgen.TABLES}
    assert got == want


def test_max_changes_is_exact_and_stop_ends_the_run(demo_source: Databases) -> None:
    dbs = demo_source
    before = _table_counts(dbs)
    stats = loadgen.run_load(dbs.source_dsn, "flat_out", max_changes=12_345)
    assert stats.stopped_by == "max_changes"
    assert stats.changes == 12_345
    after = _table_counts(dbs)
    assert sum(after.values()) - sum(before.values()) == sum(stats.inserts.values()) - sum(stats.deletes.values())

    stop = threading.Event()
    timer = threading.Timer(0.5, stop.set)
    timer.start()
    started = time.monotonic()
    stats = loadgen.run_load(dbs.source_dsn, loadgen.get_profile("moderate").replace(duration=60), stop)
    timer.join()
    assert stats.stopped_by == "stop"
    assert time.monotonic() - started < 3
    assert stats.changes > 0


def test_missing_demo_schema_is_one_clear_error(edbs: Databases) -> None:
    with pytest.raises(ConfigError, match="bootstrap --demo"):
        loadgen.run_load(edbs.source_dsn, "smoke")


def test_bad_profile_values() -> None:
    with pytest.raises(ConfigError, match="expected one of smoke"):
        loadgen.get_profile("nope")
    with pytest.raises(ConfigError, match="update_ratio"):
        loadgen.get_profile("smoke").replace(update_ratio=-1).validate()


def test_bursts_raise_the_due_count() -> None:
    p = loadgen.Profile("b", rate=100, duration=10, burst_every=10, burst_seconds=2, burst_multiplier=3)
    assert p.orders_due(1) == 300  # inside the burst
    assert p.orders_due(2) == 600
    assert p.orders_due(5) == 900  # 600 + 3 s at the base rate
    assert p.orders_due(12) == 600 + 800 + 600
