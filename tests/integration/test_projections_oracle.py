"""Oracle: with the pipeline live, a seeded random workload covering every hard case;
at quiescence both projections equal the same query run directly on the source tables.

The expected values come from SQL written here, on the source tables, never from the
code under test. A rebuild from staging must then give the same rows again.
"""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal

import psycopg
import pytest

from cdcflow import projections
from cdcflow.bootstrap import bootstrap
from tests.conftest import wait_caught_up, wait_until
from tests.oracle import KPI_PROJECTION as PROJ_KPI
from tests.oracle import LATEST_ORACLE as ORACLE_LATEST
from tests.oracle import LATEST_PROJECTION as PROJ_LATEST

SEGMENTS = ("ENTERPRISE", "SMB", "CONSUMER", "MIDMARKET")
FUTURE_BASE = 5_000_000  # order ids that payments reference before the order exists

ORACLE_KPI = """
WITH o AS (
    SELECT o.order_id, date_trunc('minute', o.created_at) AS m, coalesce(c.segment, 'UNKNOWN') AS seg,
           coalesce(o.amount, 0) AS amount
    FROM orders o LEFT JOIN customers c ON c.customer_id = o.customer_id),
u AS (
    SELECT m, seg, 1 AS n, amount, 0 AS paid, 0 AS pays FROM o
    UNION ALL
    SELECT date_trunc('minute', p.paid_at), o.seg, 0, 0, coalesce(p.paid_amount, 0), 1
    FROM payments p JOIN o ON o.order_id = p.order_id)
SELECT m, seg, sum(n)::bigint, sum(amount)::numeric(18,2), sum(paid)::numeric(18,2), sum(pays)::bigint
FROM u GROUP BY m, seg ORDER BY m, seg
"""
# Everything incremental maintenance keeps (updated_at aside), compared before and after a rebuild.
REBUILT = (
    "SELECT minute_bucket, segment, orders_count, orders_amount_sum, paid_amount_sum, payments_count "
    "FROM proj_orders_kpi_by_minute_segment ORDER BY 1, 2",
    "SELECT * FROM pst_orders_kpi_by_minute_segment__public_orders ORDER BY 1",
    "SELECT * FROM pst_orders_kpi_by_minute_segment__public_payments ORDER BY 1",
    "SELECT * FROM pst_orders_kpi_by_minute_segment__public_customers ORDER BY 1",
    "SELECT * FROM proj_orders_latest ORDER BY 1",
)
# __source_lsn: the commit LSN of the order's latest staged change (read from staging).
SOURCE_LSN_MISMATCH = """
SELECT count(*) FROM proj_orders_latest p
WHERE p.__source_lsn <> (SELECT max(s.__lsn) FROM stg_cdc_orders s WHERE s.order_id = p.order_id AND s.__op <> 3)
"""


class Workload:
    """Random changes on the demo tables; counts the row changes it makes."""

    def __init__(self, conn: psycopg.Connection, seed: int) -> None:
        self.conn = conn
        self.rng = random.Random(seed)
        self.changes = 0
        self.now = conn.execute("SELECT now()").fetchone()[0]
        self.customers = [r[0] for r in conn.execute("SELECT customer_id FROM customers")]
        self.orders = [r[0] for r in conn.execute("SELECT order_id FROM orders")]
        self.old_orders: list[int] = []
        self.payments = [r[0] for r in conn.execute("SELECT payment_id FROM payments")]
        self.future: list[int] = []
        self.next_future = FUTURE_BASE + seed * 10_000

    def _x(self, query: str, params: tuple = ()) -> psycopg.Cursor:
        cur = self.conn.execute(query, params)  # type: ignore[arg-type]
        self.changes += max(cur.rowcount, 0)
        return cur

    def _amount(self) -> Decimal | None:
        return None if self.rng.random() < 0.1 else Decimal(self.rng.randint(0, 100_000)) / 100

    def _when(self) -> dt.datetime:
        r = self.rng.random()
        if r < 0.6:
            back = dt.timedelta(seconds=self.rng.randint(0, 600))
        elif r < 0.85:
            back = dt.timedelta(days=1, seconds=self.rng.randint(0, 3600))  # yesterday
        else:
            back = dt.timedelta(days=self.rng.randint(2, 30), seconds=self.rng.randint(0, 86400))
        return self.now - back

    def _pick(self, items: list[int]) -> int | None:
        return self.rng.choice(items) if items else None

    def op(self) -> None:
        r, rng = self.rng.random(), self.rng
        if r < 0.08 or not self.customers:
            cid = self._x(
                "INSERT INTO customers (segment) VALUES (%s) RETURNING customer_id", (rng.choice(SEGMENTS),)
            ).fetchone()[0]
            self.customers.append(cid)
        elif r < 0.15:
            self._x(
                "UPDATE customers SET segment = %s, updated_at = now() WHERE customer_id = %s",
                (rng.choice(SEGMENTS), self._pick(self.customers)),
            )
        elif r < 0.18:
            cid = self._pick(self.customers)
            self.customers.remove(cid)
            self._x("DELETE FROM customers WHERE customer_id = %s", (cid,))
        elif r < 0.36:
            created = self._when()
            customer = self._pick(self.customers) if rng.random() < 0.9 else rng.choice([None, 987654321])
            oid = self._x(
                "INSERT INTO orders (customer_id, amount, created_at, updated_at) VALUES (%s, %s, %s, now())"
                " RETURNING order_id",
                (customer, self._amount(), created),
            ).fetchone()[0]
            self.orders.append(oid)
            if created < self.now - dt.timedelta(hours=1):
                self.old_orders.append(oid)
        elif r < 0.44:
            self._x(
                "UPDATE orders SET amount = %s, updated_at = now() WHERE order_id = %s",
                (self._amount(), self._pick(self.orders)),
            )
        elif r < 0.50:  # moved to another customer
            self._x(
                "UPDATE orders SET customer_id = %s, updated_at = now() WHERE order_id = %s",
                (self._pick(self.customers), self._pick(self.orders)),
            )
        elif r < 0.56 and self.old_orders:  # late update of an order created yesterday or before
            self._x(
                "UPDATE orders SET amount = %s, status = %s, updated_at = now() WHERE order_id = %s",
                (self._amount(), rng.choice(["PAID", "SHIPPED", "NEW"]), rng.choice(self.old_orders)),
            )
        elif r < 0.58:
            self._x("UPDATE orders SET created_at = %s WHERE order_id = %s", (self._when(), self._pick(self.orders)))
        elif r < 0.63 and self.orders:  # an order deleted together with its payments
            oid = rng.choice(self.orders)
            self.orders.remove(oid)
            if oid in self.old_orders:
                self.old_orders.remove(oid)
            self._x("DELETE FROM payments WHERE order_id = %s", (oid,))
            self._x("DELETE FROM orders WHERE order_id = %s", (oid,))
        elif r < 0.78 and self.orders:
            pid = self._x(
                "INSERT INTO payments (order_id, paid_amount, paid_at) VALUES (%s, %s, %s) RETURNING payment_id",
                (rng.choice(self.orders), self._amount(), self._when()),
            ).fetchone()[0]
            self.payments.append(pid)
        elif r < 0.82:  # a payment whose order does not exist yet
            self.next_future += 1
            self.future.append(self.next_future)
            pid = self._x(
                "INSERT INTO payments (order_id, paid_amount, paid_at) VALUES (%s, %s, %s) RETURNING payment_id",
                (self.next_future, self._amount(), self._when()),
            ).fetchone()[0]
            self.payments.append(pid)
        elif r < 0.86 and self.future:  # ... and the order arrives later
            oid = self.future.pop(rng.randrange(len(self.future)))
            self._x(
                "INSERT INTO orders (order_id, customer_id, amount, created_at) VALUES (%s, %s, %s, %s)",
                (oid, self._pick(self.customers), self._amount(), self._when()),
            )
            self.orders.append(oid)
        elif r < 0.93 and self.payments:
            self._x(
                "UPDATE payments SET paid_amount = %s, paid_at = %s, order_id = coalesce(%s, order_id)"
                " WHERE payment_id = %s",
                (
                    self._amount(),
                    self._when(),
                    self._pick(self.orders) if rng.random() < 0.3 else None,
                    rng.choice(self.payments),
                ),
            )
        elif r < 0.96 and self.payments:
            pid = rng.choice(self.payments)
            self.payments.remove(pid)
            self._x("DELETE FROM payments WHERE payment_id = %s", (pid,))
        else:  # a whole segment renamed: many orders change bucket at once
            a, b = rng.sample(SEGMENTS, 2)
            self._x("UPDATE customers SET segment = %s WHERE segment = %s", (b, a))

    def run(self, changes: int, max_ops: int = 12) -> None:
        while self.changes < changes:
            with self.conn.transaction():
                for _ in range(self.rng.randint(1, max_ops)):
                    self.op()


def settle(settings, timeout: float = 60) -> None:
    """Ingestion caught up, and every enabled projection as of the lowest watermark."""
    wait_caught_up(settings, timeout)
    with psycopg.connect(settings.serving_dsn, autocommit=True) as conn:
        target = conn.execute(
            "SELECT min(last_lsn) FROM ctl_ingestion_watermarks WHERE source_name = %s", (settings.source_name,)
        ).fetchone()[0]

        def done() -> bool:
            rows = conn.execute("SELECT status, as_of_lsn FROM ctl_projection_metadata").fetchall()
            return bool(rows) and all(s == "OK" and a is not None and a >= target for s, a in rows)

        wait_until(done, timeout, what="projections as of the ingestion watermark")


def compare(source_dsn: str, serving_dsn: str) -> None:
    with psycopg.connect(source_dsn, autocommit=True) as src, psycopg.connect(serving_dsn, autocommit=True) as srv:
        for c in (src, srv):
            c.execute("SET TimeZone = 'UTC'")
        want_kpi, got_kpi = src.execute(ORACLE_KPI).fetchall(), srv.execute(PROJ_KPI).fetchall()
        assert len(want_kpi) > 50
        assert got_kpi == want_kpi, _first_difference(want_kpi, got_kpi)
        want, got = src.execute(ORACLE_LATEST).fetchall(), srv.execute(PROJ_LATEST).fetchall()
        assert got == want, _first_difference(want, got)
        assert srv.execute(SOURCE_LSN_MISMATCH).fetchone()[0] == 0


def _first_difference(want: list, got: list) -> str:
    w, g = set(want), set(got)
    return f"{len(want)} expected rows, {len(got)} rows; missing {sorted(w - g)[:3]}, unexpected {sorted(g - w)[:3]}"


@pytest.mark.parametrize("seed", [11, 22, 33])
def test_projections_equal_oracle_with_pipeline_live(dbs, pipeline, seed):
    settings = dbs.settings.replace(enable_proj_orders_latest=True, projection_self_check_seconds=1.0)
    bootstrap(settings, demo=True).source.close()
    with pipeline(settings):
        with psycopg.connect(settings.source_dsn, autocommit=True) as src:
            wl = Workload(src, seed)
            wl.run(5_000)
        assert wl.changes >= 5_000
        settle(settings)
        compare(settings.source_dsn, settings.serving_dsn)
    with dbs.serving() as srv:
        # The self-check ran during the workload and found nothing to restate.
        assert srv.execute("SELECT sum(restated_buckets) FROM ctl_projection_metadata").fetchone()[0] == 0
        before = {q: srv.execute(q).fetchall() for q in REBUILT}
    # Rebuild from staging gives what incremental maintenance gave.
    projections.rebuild(settings)
    compare(settings.source_dsn, settings.serving_dsn)
    with dbs.serving() as srv:
        for q, rows in before.items():
            assert srv.execute(q).fetchall() == rows, q
