"""Atomicity under SIGKILL: ``cdcflow run`` is killed at random moments while a workload
keeps writing. After every kill each projection is exactly what staging says at its
``as_of_lsn`` (never a mix of old and new), and ``as_of_lsn`` equals every checkpoint.
At the end, restarted, both projections equal the oracle on the source tables.
"""

from __future__ import annotations

import datetime as dt
import random
import signal
import subprocess
import sys
import threading
import time

import psycopg

from cdcflow.bootstrap import bootstrap
from tests.conftest import wait_until
from tests.integration.test_projections_oracle import Workload, compare, settle

# The projections recomputed from staging up to :lsn, written independently of the code under test.
LATEST_AT = """
WITH c AS (
    SELECT * FROM (SELECT DISTINCT ON (customer_id) customer_id, segment, __op FROM stg_cdc_customers
                   WHERE __lsn <= %(lsn)s AND __op <> 3 ORDER BY customer_id, __lsn DESC, __seqval DESC) x
    WHERE __op <> 1),
o AS (
    SELECT * FROM (SELECT DISTINCT ON (order_id) order_id, customer_id, amount, status, created_at, updated_at, __op
                   FROM stg_cdc_orders WHERE __lsn <= %(lsn)s AND __op <> 3
                   ORDER BY order_id, __lsn DESC, __seqval DESC) x
    WHERE __op <> 1)
SELECT o.order_id, o.customer_id, c.segment, o.amount, o.status, o.created_at, o.updated_at
FROM o LEFT JOIN c ON c.customer_id = o.customer_id ORDER BY o.order_id
"""
KPI_AT = """
WITH c AS (
    SELECT * FROM (SELECT DISTINCT ON (customer_id) customer_id, segment, __op FROM stg_cdc_customers
                   WHERE __lsn <= %(lsn)s AND __op <> 3 ORDER BY customer_id, __lsn DESC, __seqval DESC) x
    WHERE __op <> 1),
o AS (
    SELECT * FROM (SELECT DISTINCT ON (order_id) order_id, customer_id, amount, created_at, __op FROM stg_cdc_orders
                   WHERE __lsn <= %(lsn)s AND __op <> 3 ORDER BY order_id, __lsn DESC, __seqval DESC) x
    WHERE __op <> 1),
p AS (
    SELECT * FROM (SELECT DISTINCT ON (payment_id) payment_id, order_id, paid_amount, paid_at, __op
                   FROM stg_cdc_payments WHERE __lsn <= %(lsn)s AND __op <> 3
                   ORDER BY payment_id, __lsn DESC, __seqval DESC) x
    WHERE __op <> 1),
oc AS (
    SELECT o.order_id, date_trunc('minute', o.created_at) AS m, coalesce(c.segment, 'UNKNOWN') AS seg, o.amount
    FROM o LEFT JOIN c ON c.customer_id = o.customer_id),
u AS (
    SELECT m, seg, 1 AS n, coalesce(amount, 0) AS amount, 0 AS paid FROM oc
    UNION ALL
    SELECT date_trunc('minute', p.paid_at), oc.seg, 0, 0, coalesce(p.paid_amount, 0) FROM p JOIN oc USING (order_id))
SELECT m, seg, sum(n)::bigint, sum(amount)::numeric(18,2), sum(paid)::numeric(18,2)
FROM u GROUP BY m, seg ORDER BY m, seg
"""
KILLS = 5
PROJ = {
    "proj_orders_kpi_by_minute_segment": (
        "SELECT minute_bucket, segment, orders_count, orders_amount_sum, paid_amount_sum "
        "FROM proj_orders_kpi_by_minute_segment ORDER BY 1, 2",
        KPI_AT,
    ),
    "proj_orders_latest": (
        "SELECT order_id, customer_id, segment, amount, status, created_at, updated_at "
        "FROM proj_orders_latest ORDER BY order_id",
        LATEST_AT,
    ),
}


def assert_consistent(serving_dsn: str) -> int:
    """Each projection equals staging at its as_of_lsn, and its checkpoints equal as_of_lsn."""
    checked = 0
    with psycopg.connect(serving_dsn) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # one snapshot for all reads
        for name, (proj_sql, oracle_sql) in PROJ.items():
            as_of = conn.execute(
                "SELECT as_of_lsn FROM ctl_projection_metadata WHERE projection_name = %s", (name,)
            ).fetchone()[0]
            cps = {
                r[0]
                for r in conn.execute(
                    "SELECT last_lsn FROM ctl_projection_checkpoints WHERE projection_name = %s", (name,)
                )
            }
            if as_of is None:
                assert cps == {0}, f"{name}: checkpoints {cps} moved without metadata"
                continue
            assert cps == {as_of}, f"{name}: checkpoints {cps} differ from as_of_lsn {as_of}"
            got, want = conn.execute(proj_sql).fetchall(), conn.execute(oracle_sql, {"lsn": as_of}).fetchall()
            assert got == want, (
                f"{name}: missing {sorted(set(want) - set(got))[:3]}, extra {sorted(set(got) - set(want))[:3]}"
            )
            checked += 1
    return checked


def _last_build(serving_dsn: str) -> dt.datetime:
    with psycopg.connect(serving_dsn, autocommit=True) as conn:
        value = conn.execute("SELECT max(built_at) FROM ctl_projection_metadata").fetchone()[0]
    return value or dt.datetime.min.replace(tzinfo=dt.UTC)


def test_sigkill_leaves_old_or_new_state_never_a_mix(edbs, tmp_path):
    dbs = edbs  # one server: the oracle tests cover both
    settings = dbs.settings.replace(enable_proj_orders_latest=True, projection_interval_seconds=0.2)
    bootstrap(settings, demo=True).source.close()
    env = dbs.env(ENABLE_PROJ_ORDERS_LATEST="true", PROJECTION_INTERVAL_SECONDS="0.2", LOG_LEVEL="info")
    stop = threading.Event()
    errors: list[BaseException] = []

    def load() -> None:
        try:
            with psycopg.connect(settings.source_dsn, autocommit=True) as src:
                wl = Workload(src, 7)
                while not stop.is_set():
                    wl.run(wl.changes + 20, max_ops=4)
                    stop.wait(0.002)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    loader = threading.Thread(target=load)
    loader.start()
    rng = random.Random(3)
    checked = 0
    with open(tmp_path / "run.log", "wb") as log:
        try:
            for _ in range(KILLS):
                seen = _last_build(settings.serving_dsn)
                proc = subprocess.Popen(
                    [sys.executable, "-m", "cdcflow", "run"], env=env, stdout=log, stderr=subprocess.STDOUT
                )
                # Kill while it works: once a projection has committed again, at a random moment.
                wait_until(lambda s=seen: _last_build(settings.serving_dsn) > s, timeout=60, what="a projection commit")
                time.sleep(rng.uniform(0, 1.0))
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                checked += assert_consistent(settings.serving_dsn)
        finally:
            stop.set()
            loader.join(30)
        assert not errors, errors
        assert checked >= KILLS, "the projections never committed between kills"
        proc = subprocess.Popen([sys.executable, "-m", "cdcflow", "run"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            settle(settings, timeout=90)
            compare(settings.source_dsn, settings.serving_dsn)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    assert assert_consistent(settings.serving_dsn) == 2
