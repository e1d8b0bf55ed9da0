"""Nothing lost at the edges: snapshot under concurrent writes, gaps and resync, schema drift."""

from __future__ import annotations

import logging
import threading

import pytest

from cdcflow import admin, sqlfiles, status
from cdcflow.bootstrap import bootstrap
from tests.conftest import RunningPipeline, wait_caught_up, wait_until
from tests.oracle import assert_latest_state_equals_source
from tests.workload import Workload


def _states(dbs) -> dict[str, tuple[str, str | None]]:
    with dbs.serving() as c:
        return {
            r[0]: (r[1], r[2])
            for r in c.execute("SELECT capture_instance, state, last_error FROM ctl_ingestion_watermarks").fetchall()
        }


def _create_demo_tables(dbs) -> None:
    scripts = dict(sqlfiles.scripts("source"))
    with dbs.source() as src:
        src.execute(scripts["10_schema.sql"])
        src.execute(scripts["20_seed.sql"])


def test_snapshot_under_concurrent_writes_neither_loses_nor_doubles(dbs):
    _create_demo_tables(dbs)
    with dbs.source() as src:
        src.execute("INSERT INTO customers (segment) SELECT 'SMB' FROM generate_series(1, 3000)")
        src.execute("INSERT INTO orders (customer_id, amount) SELECT g % 3000 + 1, g FROM generate_series(1, 20000) g")
    stop = threading.Event()
    errors: list[BaseException] = []

    def load() -> None:
        try:
            with dbs.source() as c:
                wl = Workload(c, 11)
                while not stop.is_set():
                    wl.transaction()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=load)
    t.start()
    try:
        bootstrap(dbs.settings).source.close()  # the snapshot is taken while the load writes
        with RunningPipeline(dbs.settings):
            stop.wait(1.0)
            stop.set()
            t.join(30)
            wait_caught_up(dbs.settings)
    finally:
        stop.set()
        t.join(30)
    assert not errors, errors
    with dbs.source() as src, dbs.serving() as serving:
        assert_latest_state_equals_source(src, serving)
        # Each snapshot key once.
        dup = serving.execute(
            "SELECT count(*) FROM (SELECT order_id FROM stg_cdc_orders WHERE __op = 5 GROUP BY 1 HAVING count(*) > 1) d"
        ).fetchone()[0]
        assert dup == 0


def test_recreated_slot_is_a_gap_and_resync_repairs_it(dbs):
    bootstrap(dbs.settings, demo=True).source.close()
    with dbs.source() as src:
        wl = Workload(src, 3)
        with RunningPipeline(dbs.settings):
            for _ in range(50):
                wl.transaction()
            wait_caught_up(dbs.settings)
        # Behind the pipeline's back: the slot is dropped and created again, and changes
        # (deletes included) happen in between, never to be streamed.
        src.execute("SELECT pg_drop_replication_slot(%s)", (dbs.settings.slot,))
        src.execute("DELETE FROM payments WHERE payment_id IN (SELECT payment_id FROM payments LIMIT 3)")
        src.execute(
            "DELETE FROM orders WHERE order_id NOT IN (SELECT order_id FROM payments WHERE order_id IS NOT NULL)"
            " AND order_id IN (SELECT order_id FROM orders LIMIT 5)"
        )
        src.execute("UPDATE customers SET segment = 'GAP' WHERE customer_id = 1")
        src.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (dbs.settings.slot,))
        src.execute("INSERT INTO customers (segment) VALUES ('AFTER')")
        with RunningPipeline(dbs.settings):
            wait_until(lambda: {s for s, _ in _states(dbs).values()} == {"GAP"}, timeout=30, what="GAP state")
            st = status.collect(dbs.settings)
            assert not st.healthy
            orders = next(c for c in st.captures if c.capture == "public_orders")
            assert orders.state == "GAP" and orders.gap and ".." in orders.gap and "-" not in orders.gap.split("..")[1]
            assert "cannot send the changes in between" in orders.last_error and "cdcflow resync" in orders.last_error
            assert "GAP" in status.render_text(st)
            # Repair while the pipeline runs.
            admin.resync(dbs.settings, ["public_orders"])
            for _ in range(20):
                wl.transaction()
            wait_until(lambda: {s for s, _ in _states(dbs).values()} == {"OK"}, timeout=30, what="OK after resync")
            wait_caught_up(dbs.settings)
    with dbs.source() as src, dbs.serving() as serving:
        assert_latest_state_equals_source(src, serving)
        deletes = serving.execute(
            "SELECT count(*) FROM stg_cdc_orders WHERE __op = 1 AND __seqval > 0 "
            "AND __lsn = (SELECT max(__lsn) FROM stg_cdc_orders WHERE __op = 5)"
        ).fetchone()[0]
        assert deletes >= 1


def test_invalidated_slot_is_reported_as_gap(edbs):
    """max_slot_wal_keep_size exceeded: the slot loses its WAL (wal_status 'lost') -> GAP."""
    bootstrap(edbs.settings, demo=True).source.close()
    with edbs.server.admin() as admin_conn:
        admin_conn.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        admin_conn.execute("SELECT pg_reload_conf()")
        try:
            with edbs.source() as src:
                src.execute("CREATE TABLE churn (v text)")
                for _ in range(6):
                    src.execute("INSERT INTO churn SELECT repeat('x', 200) FROM generate_series(1, 60000)")
                    src.execute("SELECT pg_switch_wal()")
                    src.execute("CHECKPOINT")
                wal_status = src.execute(
                    "SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s", (edbs.settings.slot,)
                ).fetchone()[0]
            assert wal_status == "lost"
        finally:
            admin_conn.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
            admin_conn.execute("SELECT pg_reload_conf()")
    with RunningPipeline(edbs.settings):
        wait_until(lambda: {s for s, _ in _states(edbs).values()} == {"GAP"}, timeout=30, what="GAP state")
    assert "wal_status=lost" in _states(edbs)["public_orders"][1]


def test_schema_drift_pauses_only_the_changed_capture(dbs, caplog):
    bootstrap(dbs.settings, demo=True).source.close()
    caplog.set_level(logging.WARNING)
    with dbs.source() as src, RunningPipeline(dbs.settings):
        # A new column: ignored with one warning, rows keep flowing.
        src.execute("ALTER TABLE customers ADD COLUMN tier text")
        src.execute("INSERT INTO customers (segment, tier) VALUES ('SMB', 'gold'), ('SMB', 'silver')")
        # A dropped captured column pauses orders; a retyped one pauses payments.
        src.execute("ALTER TABLE orders DROP COLUMN status")
        src.execute("UPDATE orders SET amount = amount + 1 WHERE order_id = 1")
        src.execute("ALTER TABLE payments ALTER COLUMN paid_amount TYPE double precision")
        src.execute("INSERT INTO payments (order_id, paid_amount) VALUES (1, 5)")
        wait_until(
            lambda: _states(dbs)["public_orders"][0] == "PAUSED" and _states(dbs)["public_payments"][0] == "PAUSED",
            timeout=30,
            what="orders and payments to pause",
        )
        src.execute("INSERT INTO customers (segment) VALUES ('LATER')")
        wait_until(
            lambda: _count(dbs, "stg_cdc_customers", "segment = 'LATER'") == 1,
            timeout=30,
            what="customers to keep flowing",
        )
    states = _states(dbs)
    assert states["public_customers"][0] == "OK"
    assert "orders.status was dropped or renamed" in states["public_orders"][1]
    assert "payments.paid_amount changed type" in states["public_payments"][1]
    assert _count(dbs, "stg_cdc_customers", "segment = 'SMB' AND __op = 2") == 2
    warnings = [r.getMessage() for r in caplog.records if "tier" in r.getMessage()]
    assert len(warnings) == 1 and "not captured" in warnings[0]
    # Nothing already staged was lost.
    assert _count(dbs, "stg_cdc_orders", "__op = 5") == 5


def test_table_losing_its_key_pauses_capture(edbs):
    bootstrap(edbs.settings, demo=True).source.close()
    with edbs.source() as src, RunningPipeline(edbs.settings):
        src.execute("ALTER TABLE payments DROP CONSTRAINT payments_pkey")
        src.execute("INSERT INTO payments (order_id, paid_amount) VALUES (1, 5)")
        wait_until(lambda: _states(edbs)["public_payments"][0] == "PAUSED", timeout=30, what="payments to pause")
    assert "no primary key or replica identity" in _states(edbs)["public_payments"][1]


def _count(dbs, table: str, where: str) -> int:
    with dbs.serving() as c:
        return c.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchone()[0]


@pytest.mark.parametrize("confirm", ["--yes"])
def test_reset_clears_and_next_run_snapshots_again(edbs, confirm):
    bootstrap(edbs.settings, demo=True).source.close()
    with edbs.source() as src, RunningPipeline(edbs.settings):
        src.execute("INSERT INTO orders (customer_id, amount) VALUES (1, 1)")
        wait_caught_up(edbs.settings)
    admin.reset(edbs.settings)
    assert _count(edbs, "stg_cdc_orders", "true") == 0
    assert {s for s, _ in _states(edbs).values()} == {"INIT"}
    bootstrap(edbs.settings).source.close()
    assert _count(edbs, "stg_cdc_orders", "__op = 5") == 6


def test_serving_server_older_than_supported_is_one_clear_line(edbs, monkeypatch):
    """The serving database must be PostgreSQL 15+ (the KPI projection writes with MERGE).
    No older server runs here, so the minimum is raised above the real server's version:
    bootstrap stops with one line naming both versions, before it creates anything."""
    from cdcflow.errors import ConfigError
    from cdcflow.serving import schema

    with edbs.serving() as c:
        major = c.info.server_version // 10000
    monkeypatch.setattr(schema, "MIN_SERVING_VERSION", (major + 1) * 10000)
    with pytest.raises(ConfigError) as err:
        bootstrap(edbs.settings, demo=True)
    message = str(err.value)
    assert f"serving PostgreSQL is version {major}: cdcflow needs {major + 1} or newer" in message
    assert "\n" not in message
    with edbs.serving() as c:
        assert c.execute("SELECT to_regclass('ctl_ingestion_watermarks')").fetchone()[0] is None
    with edbs.source() as c:
        assert c.execute("SELECT to_regclass('public.orders')").fetchone()[0] is None


def test_bootstrap_on_a_serving_connection_lost_mid_way_fails_transiently(dbs, monkeypatch):
    """The serving connection dies while bootstrap creates its tables (a restart, a network
    cut): the error must be the transient one that 'cdcflow run' retries, not the driver's
    error from rolling back on a dead connection, which ended the process (exit 1)."""
    from cdcflow import projections
    from cdcflow.bootstrap import bootstrap
    from cdcflow.errors import TransientError

    def dies(serving, settings):
        serving.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    monkeypatch.setattr(projections, "bootstrap", dies)
    with pytest.raises(TransientError, match="bootstrapping the serving database"):
        bootstrap(dbs.settings, demo=True, snapshot_now=False)
