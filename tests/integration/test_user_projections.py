"""Users' own projections, each against its oracle (the same query run on the source) with
the pipeline live under a random workload that makes every hard case: payments before
their orders, orders moved between customers, deletes of orders with their payments,
customers deleted and renamed, NULL amounts and customers, late changes to old rows.

Then targeted sequences for what a random workload hits only by chance: the current
minimum deleted, a LEFT JOIN's right side arriving late, changing key and being deleted.
The expected rows come only from PostgreSQL running each definition on the source.
"""

from __future__ import annotations

import psycopg
import pytest

from cdcflow.bootstrap import bootstrap
from tests.integration.test_projections_oracle import Workload, settle
from tests.oracle import assert_projection_matches

DEFINITIONS = {
    # A replica of a table.
    "orders_replica": "SELECT * FROM orders",
    # A three-table join with GROUP BY and HAVING.
    "segment_status": (
        "SELECT c.segment, o.status, count(*) AS payments, sum(p.paid_amount) AS paid, avg(p.paid_amount) AS avg_paid "
        "FROM payments p JOIN orders o ON o.order_id = p.order_id JOIN customers c ON c.customer_id = o.customer_id "
        "GROUP BY c.segment, o.status HAVING count(*) > 2"
    ),
    # MIN / MAX / COUNT(DISTINCT), NULLs among the values.
    "order_extremes": (
        "SELECT o.customer_id, min(o.amount) AS lo, max(o.amount) AS hi, count(DISTINCT o.status) AS statuses, "
        "min(o.created_at) AS first_at, count(o.amount) AS priced FROM orders o GROUP BY o.customer_id"
    ),
    # A LEFT JOIN whose right side arrives late, changes key and is deleted.
    "payments_with_orders": (
        "SELECT p.payment_id, p.paid_amount, o.order_id, o.amount, o.status "
        "FROM payments p LEFT JOIN orders o ON o.order_id = p.order_id"
    ),
    # A FULL JOIN (customers without orders, orders without a customer).
    "customers_orders": (
        "-- key: customer_id, order_id\n"
        "SELECT c.customer_id, o.order_id, c.segment, o.amount "
        "FROM customers c FULL JOIN orders o ON o.customer_id = c.customer_id"
    ),
    # UNION ALL under GROUP BY.
    "activity_by_day": (
        "SELECT day, kind, count(*) AS n, sum(amount) AS amount FROM ("
        " SELECT date_trunc('day', o.created_at) AS day, 'order' AS kind, o.amount FROM orders o"
        " UNION ALL"
        " SELECT date_trunc('day', p.paid_at), 'payment', p.paid_amount FROM payments p) AS a "
        "GROUP BY day, kind"
    ),
    # NULLs everywhere: customers without orders, sums and averages of nothing, bool_or of NULLs.
    "customer_activity": (
        "SELECT c.customer_id, c.segment, count(o.order_id) AS orders, sum(o.amount) AS total, "
        "avg(o.amount) AS avg_amount, bool_or(o.amount > 500) AS big, coalesce(max(o.status), '-') AS top_status "
        "FROM customers c LEFT JOIN orders o ON o.customer_id = c.customer_id GROUP BY c.customer_id, c.segment"
    ),
    # A global aggregate: one row, whatever the tables hold.
    "totals": (
        "SELECT count(*) AS orders, sum(o.amount) AS amount, count(DISTINCT o.customer_id) AS buyers FROM orders o"
    ),
    # Grouped by an expression that is not an output, filtered before and after grouping.
    "big_orders_per_hour": (
        "SELECT count(*) AS n, max(o.amount) AS top FROM orders o WHERE o.amount >= 100 "
        "GROUP BY date_trunc('hour', o.created_at) HAVING max(o.amount) > 200"
    ),
}


def _query(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("--"))


def _folder(tmp_path):
    folder = tmp_path / "projections"
    folder.mkdir()
    for name, text in DEFINITIONS.items():
        (folder / f"{name}.sql").write_text(text + "\n")
    return folder


def _compare_all(settings) -> dict[str, int]:
    counts = {}
    with (
        psycopg.connect(settings.source_dsn, autocommit=True) as src,
        psycopg.connect(settings.serving_dsn, autocommit=True) as srv,
    ):
        for name, text in DEFINITIONS.items():
            counts[name] = assert_projection_matches(src, srv, f"proj_{name}", _query(text))
        restated = srv.execute("SELECT coalesce(sum(restated_buckets), 0) FROM ctl_projection_metadata").fetchone()[0]
    assert restated == 0, "the self-check found differences"
    return counts


@pytest.mark.parametrize("seed", [5, 6])
def test_user_projections_equal_their_queries_with_the_pipeline_live(dbs, pipeline, tmp_path, seed):
    settings = dbs.settings.replace(projections_dir=str(_folder(tmp_path)), projection_self_check_seconds=1.0)
    bootstrap(settings, demo=True).source.close()
    with pipeline(settings), psycopg.connect(settings.source_dsn, autocommit=True) as src:
        Workload(src, seed).run(2_500)
        settle(settings)
        counts = _compare_all(settings)
    # Every projection held something to compare (the HAVING ones at least a group).
    assert all(n > 0 for n in counts.values()), counts


def test_deleting_the_minimum_and_a_late_changing_right_side(edbs, pipeline, tmp_path):
    settings = edbs.settings.replace(projections_dir=str(_folder(tmp_path)))
    bootstrap(settings, demo=True).source.close()
    with pipeline(settings), psycopg.connect(settings.source_dsn, autocommit=True) as src:
        steps = [
            # Customer 1's orders: the minimum is deleted, then the next one, then a new minimum comes.
            "INSERT INTO orders (order_id, customer_id, amount, status) VALUES (9001, 1, 1.00, 'A'), "
            "(9002, 1, 2.00, 'B'), (9003, 1, 3.00, 'B')",
            "DELETE FROM orders WHERE order_id = 9001",
            "UPDATE orders SET amount = 50 WHERE order_id = 9002",
            "INSERT INTO orders (order_id, customer_id, amount, status) VALUES (9004, 1, 0.50, 'C')",
            "UPDATE orders SET amount = NULL WHERE order_id = 9004",
            # A payment for an order that does not exist yet; the order arrives; the payment moves
            # to another order; that order is deleted; the first one too.
            "INSERT INTO payments (payment_id, order_id, paid_amount) VALUES (8001, 9100, 10.00)",
            "INSERT INTO orders (order_id, customer_id, amount, status) VALUES (9100, 2, 99.00, 'NEW')",
            "INSERT INTO orders (order_id, customer_id, amount, status) VALUES (9101, 3, 77.00, 'NEW')",
            "UPDATE payments SET order_id = 9101 WHERE payment_id = 8001",
            "DELETE FROM orders WHERE order_id = 9101",
            "DELETE FROM orders WHERE order_id = 9100",
            # A customer deleted while it has orders, then re-created with another segment.
            "DELETE FROM customers WHERE customer_id = 1",
            "INSERT INTO customers (customer_id, segment) VALUES (1, 'RETURNED')",
        ]
        for step in steps:
            src.execute(step)
            settle(settings)
            _compare_all(settings)
