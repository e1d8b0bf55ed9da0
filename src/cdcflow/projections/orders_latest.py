"""``proj_orders_latest``: one row per live order, maintained incrementally.

Columns: ``order_id`` (key), ``customer_id``, ``segment`` (the customer's current
segment; NULL when the customer is absent), ``amount``, ``status``, ``created_at``,
``updated_at`` and ``__source_lsn``: the commit LSN of the order's own latest change
(the version shown). A later change of the customer's segment updates ``segment``
but not ``__source_lsn``; the projection as a whole is as of
``ctl_projection_metadata.as_of_lsn``.

State: the projection table is its own order state (indexed by ``customer_id``), plus
``pst_latest_customers`` (customer -> segment). A cycle reads the latest version per key
in ``(checkpoint, cutoff]``, the stored customers of the changed orders, and in DuckDB
builds the new rows; then it replaces the customers' state, re-labels the orders of
changed customers (customer index) and replaces the changed orders. Work follows the
delta and the orders it touches.
"""

from __future__ import annotations

import logging

import psycopg
import pyarrow as pa
from psycopg import sql

from cdcflow import sqlfiles
from cdcflow.projections import base
from cdcflow.projections.arrowio import (
    BIGINT,
    BOOL,
    LSN,
    MONEY,
    TEXT,
    TSTZ,
    key_set,
    keys_literal,
    read_arrow,
    write_arrow,
)

log = logging.getLogger(__name__)
PG = "projections/orders_latest.sql"
DUCK = "projections/orders_latest_transform.sql"

CUSTOMERS = "public_customers"
ORDERS = "public_orders"

D_ORDERS = pa.schema(
    [
        ("order_id", BIGINT),
        ("deleted", BOOL),
        ("customer_id", BIGINT),
        ("amount", MONEY),
        ("status", TEXT),
        ("created_at", TSTZ),
        ("updated_at", TSTZ),
        ("__lsn", LSN),
    ]
)
D_CUSTOMERS = pa.schema([("customer_id", BIGINT), ("deleted", BOOL), ("segment", TEXT)])
S_CUSTOMERS = pa.schema([("customer_id", BIGINT), ("segment", TEXT)])


def _q(name: str, **identifiers: sql.Composable) -> sql.Composed:
    return sqlfiles.query(PG, name, **identifiers)


def transform(name: str) -> str:
    """A DuckDB transform by name (from ``orders_latest_transform.sql``)."""
    return sqlfiles.queries(DUCK)[name]


class OrdersLatest(base.Projection):
    name = "proj_orders_latest"
    captures = (CUSTOMERS, ORDERS)

    def apply(self, ctx: base.Context) -> int:
        conn = ctx.conn
        d_o = read_arrow(
            conn,
            _q("delta_orders", table=sql.Identifier(ctx.staging[ORDERS])),
            D_ORDERS,
            {"after": ctx.after(ORDERS), "upto": ctx.cutoff},
        )
        d_c = read_arrow(
            conn,
            _q("delta_customers", table=sql.Identifier(ctx.staging[CUSTOMERS])),
            D_CUSTOMERS,
            {"after": ctx.after(CUSTOMERS), "upto": ctx.cutoff},
        )
        if ctx.fresh:
            s_c = S_CUSTOMERS.empty_table()
        else:
            ids = key_set(d_o.column("customer_id"), d_c.column("customer_id"))
            s_c = read_arrow(conn, _q("state_customers_by_id"), S_CUSTOMERS, {"customers": keys_literal(ids)})
        inputs = {"d_orders": d_o, "d_customers": d_c, "s_customers": s_c}
        for name, table in inputs.items():
            ctx.duck.register(name, table)
        try:
            rows = ctx.duck.sql(transform("rows")).to_arrow_table()
            deleted = ctx.duck.sql(transform("deleted_orders")).fetchall()[0][0]
            customers = ctx.duck.sql(transform("customers")).to_arrow_table()
        finally:
            for name in inputs:
                ctx.duck.unregister(name)
        conn.execute(_q("create_temp"))
        write_arrow(conn, "tmp_latest_customers", customers)
        write_arrow(conn, "tmp_latest_rows", rows)
        if not ctx.fresh:
            base.index_plans(conn)
        conn.execute(_q("write_customers"))
        changed = 0
        if not ctx.fresh:
            changed += max(conn.execute(_q("update_segments")).rowcount, 0)
            changed += max(conn.execute(_q("delete_orders"), {"orders": deleted}).rowcount, 0)
        changed += max(conn.execute(_q("upsert_orders")).rowcount, 0)
        if not ctx.fresh:
            base.index_plans(conn, on=False)
        log.debug("%s: delta %d orders, %d customers", self.name, d_o.num_rows, d_c.num_rows)
        return changed

    def clear(self, conn: psycopg.Connection) -> None:
        conn.execute(_q("clear"))
