"""Staging compaction against the real PostgreSQL: bounded staging, exact rebuilds."""

from __future__ import annotations

import psycopg

from cdcflow.bootstrap import bootstrap
from cdcflow.compaction import Compactor
from tests.conftest import RunningPipeline, wait_until
from tests.e2e.test_cli import cdcflow
from tests.integration.test_projections_oracle import Workload, compare, settle
from tests.oracle import assert_latest_state_equals_source

STAGING = ("stg_cdc_customers", "stg_cdc_orders", "stg_cdc_payments")


def staged_rows(conn: psycopg.Connection) -> int:
    return sum(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in STAGING)  # noqa: S608


def hot_updates(src: psycopg.Connection, rounds: int) -> None:
    """The same few orders and customers, updated over and over (history without new keys)."""
    for i in range(rounds):
        with src.transaction():
            src.execute(
                "UPDATE orders SET amount = amount + 1, updated_at = now() "
                "WHERE order_id IN (SELECT order_id FROM orders ORDER BY order_id LIMIT 10)"
            )
            src.execute(
                "UPDATE customers SET segment = %s WHERE customer_id IN "
                "(SELECT customer_id FROM customers ORDER BY customer_id LIMIT 3)",
                (("SMB", "ENTERPRISE")[i % 2],),
            )


def test_staging_stays_bounded_under_a_long_run_and_rebuild_is_exact(edbs):
    settings = edbs.settings.replace(
        enable_proj_orders_latest=True,
        staging_retention=0.0,
        compaction_interval_seconds=0.3,
        compaction_batch_rows=200,
        metrics_port=0,
    )
    bootstrap(settings, demo=True).source.close()
    sizes = []
    with RunningPipeline(settings) as p, edbs.source() as src, edbs.serving() as srv:
        wl = Workload(src, seed=5)
        for round_ in range(12):  # a fixed amount of work, however fast the machine is
            wl.run(200 * (round_ + 1))
            hot_updates(src, 60)
            sizes.append(staged_rows(srv))
        settle(settings)
        worker = next(w for w in p.runtime.workers if w.name.startswith("compaction["))
        passes = worker.passes
        wait_until(lambda: worker.passes >= passes + 2, timeout=20, what="two more compaction passes")
        assert worker.last_error is None
        total = srv.execute("SELECT sum(rows_staged) FROM ctl_ingestion_watermarks").fetchone()[0]
        final = staged_rows(srv)
        # Every projection has read everything: one row per live key is left, nothing else.
        for table in ("customers", "orders", "payments"):
            live = src.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608
            assert srv.execute(f"SELECT count(*) FROM stg_cdc_{table}").fetchone()[0] == live, table  # noqa: S608
        assert srv.execute("SELECT count(*) FROM stg_cdc_orders WHERE __op IN (1, 3)").fetchone()[0] == 0
        compare(settings.source_dsn, settings.serving_dsn)  # incremental maintenance unaffected
    assert total > 5 * final, (total, final)
    # Bounded while it ran, not only at the end: without compaction the later samples
    # would reach the total.
    assert max(sizes[len(sizes) // 2 :]) < total / 2, (sizes, total)
    with edbs.source() as src, edbs.serving() as srv:
        assert_latest_state_equals_source(src, srv)
    rebuilt = cdcflow("rebuild", "--all", env=edbs.env(ENABLE_PROJ_ORDERS_LATEST="true", METRICS_PORT="0"))
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "rebuilt proj_orders_latest from staging" in rebuilt.stdout
    compare(settings.source_dsn, settings.serving_dsn)


def test_horizon_respects_checkpoints_and_retention(edbs):
    settings = edbs.settings.replace(enable_proj_orders_latest=True, metrics_port=0, compaction_interval_seconds=0)
    bootstrap(settings, demo=True).source.close()
    with RunningPipeline(settings), edbs.source() as src:
        hot_updates(src, 20)
        # A key deleted and inserted again, and a key deleted for good.
        src.execute("DELETE FROM payments WHERE order_id = 1")
        src.execute("DELETE FROM orders WHERE order_id = 1")
        src.execute("INSERT INTO orders (order_id, customer_id, amount) OVERRIDING SYSTEM VALUE VALUES (1, 2, 5)")
        src.execute("UPDATE orders SET customer_id = NULL WHERE customer_id = 5")
        src.execute("DELETE FROM customers WHERE customer_id = 5")
        settle(settings)
    with edbs.serving() as srv:
        before = staged_rows(srv)
        # Retention: nothing staged an hour ago, so nothing goes.
        assert Compactor(settings.replace(staging_retention=3600.0)).run_pass().deleted == 0
        # A projection that has not read orders yet holds that capture (and only that one).
        srv.execute(
            "UPDATE ctl_projection_checkpoints SET last_lsn = 0 "
            "WHERE projection_name = 'proj_orders_latest' AND capture_instance = 'public_orders'"
        )
        result = Compactor(settings.replace(staging_retention=0.0)).run_pass()
        by_capture = {c.capture: c.deleted for c in result.captures}
        assert "public_orders" not in by_capture  # horizon 0: skipped
        assert by_capture["public_customers"] > 0
        with edbs.source() as src:
            orders = src.execute("SELECT count(*) FROM orders").fetchone()[0]
        assert srv.execute("SELECT count(*) FROM stg_cdc_orders").fetchone()[0] >= orders * 21  # history kept
        assert staged_rows(srv) == before - result.deleted
        # With projections disabled, the ingestion watermark is the horizon.
        off = settings.replace(staging_retention=0.0, enable_proj_orders_kpi=False, enable_proj_orders_latest=False)
        assert Compactor(off).run_pass().deleted > 0
        assert srv.execute("SELECT __op FROM stg_cdc_orders WHERE order_id = 1").fetchall() == [(2,)]
        assert srv.execute("SELECT count(*) FROM stg_cdc_customers WHERE customer_id = 5").fetchone()[0] == 0
        with edbs.source() as src:
            assert_latest_state_equals_source(src, srv)
            for table in ("customers", "orders", "payments"):
                live = src.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608
                assert srv.execute(f"SELECT count(*) FROM stg_cdc_{table}").fetchone()[0] == live  # noqa: S608
