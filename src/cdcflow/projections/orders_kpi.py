"""``proj_orders_kpi_by_minute_segment``, maintained exactly and incrementally.

One row per ``(minute_bucket, segment)``: ``orders_count`` and ``orders_amount_sum`` over
live orders by ``date_trunc('minute', created_at)`` and the current segment of the
order's customer (``'UNKNOWN'`` when the customer is absent); ``paid_amount_sum`` over
live payments of live orders by ``date_trunc('minute', paid_at)``, attributed to the
segment of the order's customer. NULL amounts count as 0.

How a cycle stays proportional to its delta (never to staged history or the window):
the projection keeps serving-side state (``sql/serving/20_projections.sql``): the live
customers, orders (indexed by customer) and payments (indexed by order, including
payments whose order does not exist yet); the projection's rows carry a payments count
beside the sums, so a bucket disappears exactly when nothing contributes to it. Per cycle:

1. read the delta: the latest version per key in ``(checkpoint, cutoff]`` of each
   staging table (range scan on ``__lsn``);
2. read the state rows the delta touches, by index: changed orders and the orders of
   changed customers; changed payments and the payments of those orders; the orders
   of those payments; the customers of all of them. The loaded set is closed: every
   row's order and customer are loaded too. With ``PROJECTION_PARALLEL_READS`` (the
   default) the worker reads them on a second connection, in a thread, while the
   cycle's own connection already writes the new state rows (step 4): the reader sees
   the state as committed before the cycle, and the cycle's halves use two cores;
3. in DuckDB: the new state rows (from the delta alone), and the contributions of the
   loaded rows after the delta minus before it, per bucket (unaffected rows cancel out);
4. in the cycle's transaction: replace the changed state rows, add the bucket
   differences to exactly the touched projection rows and delete the buckets that
   became empty (one ``MERGE``, a primary-key lookup per bucket).

A rebuild is the same path from empty state with the whole of staging as the delta.
The self-check recomputes the last ``PROJECTION_RECOMPUTE_WINDOW_MINUTES`` minutes from
the row state and restates any bucket that differs (it should find none).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from concurrent.futures import Future

import duckdb
import psycopg
import pyarrow as pa
from psycopg import sql

from cdcflow import sqlfiles
from cdcflow.config import Settings
from cdcflow.projections import base
from cdcflow.projections.arrowio import (
    BIGINT,
    BOOL,
    MONEY,
    TEXT,
    TSTZ,
    column_list,
    key_difference,
    key_set,
    keys_literal,
    read_arrow,
    rows_with_keys,
    write_arrow,
)

log = logging.getLogger(__name__)
PG = "projections/orders_kpi.sql"
DUCK = "projections/orders_kpi_transform.sql"

#: The snapshot check covers its window this much at a time, pausing in between.
CHECK_SLICE = dt.timedelta(minutes=1)
FOREVER = dt.datetime.max.replace(tzinfo=dt.UTC)  # upper bound of the window's last slice

CUSTOMERS = "public_customers"
ORDERS = "public_orders"
PAYMENTS = "public_payments"

D_CUSTOMERS = pa.schema([("customer_id", BIGINT), ("deleted", BOOL), ("segment", TEXT)])
D_ORDERS = pa.schema(
    [("order_id", BIGINT), ("deleted", BOOL), ("customer_id", BIGINT), ("amount", MONEY), ("created_at", TSTZ)]
)
D_PAYMENTS = pa.schema(
    [("payment_id", BIGINT), ("deleted", BOOL), ("order_id", BIGINT), ("paid_amount", MONEY), ("paid_at", TSTZ)]
)
S_CUSTOMERS = pa.schema([("customer_id", BIGINT), ("segment", TEXT)])
S_ORDERS = pa.schema([("order_id", BIGINT), ("customer_id", BIGINT), ("amount", MONEY), ("created_minute", TSTZ)])
S_PAYMENTS = pa.schema([("payment_id", BIGINT), ("order_id", BIGINT), ("paid_amount", MONEY), ("paid_minute", TSTZ)])
HELD = pa.schema(
    [
        ("minute_bucket", TSTZ),
        ("segment", TEXT),
        ("orders_count", BIGINT),
        ("orders_amount_sum", MONEY),
        ("paid_amount_sum", MONEY),
        ("payments_count", BIGINT),
    ]
)


def _q(name: str, **identifiers: sql.Composable) -> sql.Composed:
    return sqlfiles.query(PG, name, **identifiers)


@contextlib.contextmanager
def _registered(duck: duckdb.DuckDBPyConnection, tables: Mapping[str, pa.Table]) -> Iterator[None]:
    """Arrow tables visible to DuckDB by name for the block."""
    for name, table in tables.items():
        duck.register(name, table)
    try:
        yield
    finally:
        for name in tables:
            duck.unregister(name)


def transform(name: str) -> str:
    """A DuckDB transform by name (from ``orders_kpi_transform.sql``)."""
    return sqlfiles.queries(DUCK)[name]


class OrdersKpi(base.Projection):
    name = "proj_orders_kpi_by_minute_segment"
    captures = (CUSTOMERS, ORDERS, PAYMENTS)
    has_self_check = True
    uses_reader = True

    def __init__(self) -> None:
        #: Rows the last :meth:`apply` touched, by kind: what its cost follows (the
        #: projection-scaling benchmark reports them beside the cycle times).
        self.last_touched: dict[str, int] = {}

    def _delta(self, ctx: base.Context, capture: str, query: str, schema: pa.Schema) -> pa.Table:
        return read_arrow(
            ctx.conn,
            _q(query, table=sql.Identifier(ctx.staging[capture])),
            schema,
            {"after": ctx.after(capture), "upto": ctx.cutoff},
        )

    @staticmethod
    def _orders_by_id(conn: psycopg.Connection, keys: pa.Array) -> pa.Table:
        """Stored orders by key (none read when there are no keys)."""
        if len(keys) == 0:
            return S_ORDERS.empty_table()
        return read_arrow(conn, _q("state_orders_by_id"), S_ORDERS, {"orders": keys_literal(keys)})

    def _state(self, conn: psycopg.Connection, d_c: pa.Table, d_o: pa.Table, d_p: pa.Table) -> dict[str, pa.Table]:
        """The stored rows the delta touches, closed under order/customer."""
        orders = key_set(d_o.column("order_id"))
        s_o = read_arrow(
            conn,
            _q("state_orders_touched"),
            S_ORDERS,
            {"orders": keys_literal(orders), "customers": keys_literal(key_set(d_c.column("customer_id")))},
        )
        s_p = read_arrow(
            conn,
            _q("state_payments_touched"),
            S_PAYMENTS,
            {
                "payments": keys_literal(key_set(d_p.column("payment_id"))),
                "orders": keys_literal(key_set(orders, s_o.column("order_id"))),
            },
        )
        pay_orders = key_difference(key_set(s_p.column("order_id"), d_p.column("order_id")), s_o.column("order_id"))
        s_o = pa.concat_tables([s_o, self._orders_by_id(conn, pay_orders)])
        customers = key_set(s_o.column("customer_id"), d_o.column("customer_id"), d_c.column("customer_id"))
        s_c = read_arrow(conn, _q("state_customers_by_id"), S_CUSTOMERS, {"customers": keys_literal(customers)})
        return {"s_customers": s_c, "s_orders": s_o, "s_payments": s_p}

    def _state_on_reader(
        self, reader: psycopg.Connection, d_c: pa.Table, d_o: pa.Table, d_p: pa.Table
    ) -> dict[str, pa.Table]:
        """:meth:`_state` in one snapshot of the reader connection (ended afterwards)."""
        try:
            return self._state(reader, d_c, d_o, d_p)
        finally:
            reader.rollback()

    def apply(self, ctx: base.Context) -> int:
        d_c = self._delta(ctx, CUSTOMERS, "delta_customers", D_CUSTOMERS)
        d_o = self._delta(ctx, ORDERS, "delta_orders", D_ORDERS)
        d_p = self._delta(ctx, PAYMENTS, "delta_payments", D_PAYMENTS)
        conn, duck = ctx.conn, ctx.duck
        state: dict[str, pa.Table] | None = None
        pending: Future[dict[str, pa.Table]] | None = None
        if ctx.fresh:
            state = {
                "s_customers": S_CUSTOMERS.empty_table(),
                "s_orders": S_ORDERS.empty_table(),
                "s_payments": S_PAYMENTS.empty_table(),
            }
        elif ctx.reader is not None:
            # The state's "before" rows are read on the reader connection while this one
            # writes the new state: the reader sees what was committed before this cycle.
            pending = base.in_thread(f"{self.name}:state", self._state_on_reader, ctx.reader, d_c, d_o, d_p)
        else:
            state = self._state(conn, d_c, d_o, d_p)  # before this connection writes any state
        try:
            deltas = {"d_customers": d_c, "d_orders": d_o, "d_payments": d_p}
            with _registered(duck, deltas):
                new_o = duck.sql(transform("state_orders")).to_arrow_table()
                new_p = duck.sql(transform("state_payments")).to_arrow_table()
                new_c = duck.sql(transform("state_customers")).to_arrow_table()
                deleted = None if ctx.fresh else duck.sql(transform("deleted_keys")).fetchall()[0]
            conn.execute(_q("create_temp"))
            # Each of these is read whole into its table (upserts keyed by the target's
            # primary key), never joined: no statistics needed.
            write_arrow(conn, "tmp_kpi_orders", new_o, analyze=False)
            write_arrow(conn, "tmp_kpi_payments", new_p, analyze=False)
            write_arrow(conn, "tmp_kpi_customers", new_c, analyze=False)
            if deleted is not None:
                base.index_plans(conn)
                conn.execute(_q("delete_state"), dict(zip(("orders", "payments", "customers"), deleted, strict=True)))
            conn.execute(_q("insert_state" if ctx.fresh else "upsert_state"))
            if pending is not None:
                state, pending = pending.result(), None
        finally:
            if pending is not None:  # this side failed: let the reads end before the reader is reused
                futures.wait([pending])
        assert state is not None
        with _registered(duck, {**deltas, **state}):
            diff = duck.sql(transform("bucket_diff")).to_arrow_table()
        self.last_touched = {
            "delta": d_c.num_rows + d_o.num_rows + d_p.num_rows,
            "state_orders": state["s_orders"].num_rows,
            "state_payments": state["s_payments"].num_rows,
            "state_customers": state["s_customers"].num_rows,
            "buckets": diff.num_rows,
        }
        write_arrow(conn, "tmp_kpi_diff", diff, analyze=False)
        conn.execute(_q("insert_diff" if ctx.fresh else "apply_diff"))
        if deleted is not None:
            base.index_plans(conn, on=False)
        log.debug("%s: rows touched %s", self.name, self.last_touched)
        return diff.num_rows

    def clear(self, conn: psycopg.Connection) -> None:
        conn.execute(_q("clear"))

    def _recompute(
        self,
        conn: psycopg.Connection,
        duck: duckdb.DuckDBPyConnection,
        scope: str,
        params: dict,
        known: pa.Table | None = None,
    ) -> tuple[pa.Table, pa.Table]:
        """Buckets recomputed from the stored rows of ``scope`` (``window``: minutes in
        ``[since, until)``; ``minutes``: the listed minutes) that differ from what the
        projection holds, with the values they should have (``payments_count`` -1: must not
        exist); and the scope's stored orders. ``known``: orders already read on the same
        snapshot (the previous slice's), not read again for the scope's payments."""
        w_o = read_arrow(conn, _q(f"{scope}_orders"), S_ORDERS, params)
        w_p = read_arrow(conn, _q(f"{scope}_payments"), S_PAYMENTS, params)
        # The payments' orders are mostly the scope's own orders (or the previous slice's),
        # already read; only the others are read by key. (Reading them all again by key was
        # most of a busy window's cost: millions of index lookups.)
        paid = key_set(w_p.column("order_id"))
        have = w_o if known is None else pa.concat_tables([w_o, rows_with_keys(known, "order_id", paid)])
        others = key_difference(paid, have.column("order_id"))
        w_po = pa.concat_tables([have, self._orders_by_id(conn, others)])
        ids = key_set(w_po.column("customer_id"))
        w_c = read_arrow(conn, _q("state_customers_by_id"), S_CUSTOMERS, {"customers": keys_literal(ids)})
        w_h = read_arrow(conn, _q(f"{scope}_buckets"), HELD, params)
        inputs = {"w_orders": w_o, "w_payments": w_p, "w_pay_orders": w_po, "w_customers": w_c, "w_held": w_h}
        with _registered(duck, inputs):
            return duck.sql(transform("window_recompute")).to_arrow_table(), w_o

    def window_suspects(
        self, conn: psycopg.Connection, settings: Settings, pause: Callable[[float], bool] | None = None
    ) -> list[dt.datetime]:
        """The whole window checked on one snapshot (``conn`` from ``base.snapshot_connection``),
        outside any cycle, so a busy window does not hold up the cycles: the minutes that
        differ. State and projection are committed together, so one snapshot sees them
        consistent. The window is checked a slice of :data:`CHECK_SLICE` at a time; between
        slices ``pause(seconds the slice took)`` lets the cycles have the machine (it returns
        False to stop: the minutes found so far are returned)."""
        window = settings.projection_recompute_window_minutes
        if window <= 0:
            return []
        duck = base.open_duckdb()
        suspects: set[dt.datetime] = set()
        known: pa.Table | None = None
        try:
            since = conn.execute(_q("window_start"), {"minutes": window}).fetchone()[0]  # type: ignore[index]
            lows = [since + i * CHECK_SLICE for i in range(math.ceil(dt.timedelta(minutes=window + 1) / CHECK_SLICE))]
            for i, low in enumerate(lows):
                started = time.monotonic()
                until = lows[i + 1] if i + 1 < len(lows) else FOREVER  # the last slice: everything after
                fixes, known = self._recompute(conn, duck, "window", {"since": low, "until": until}, known)
                suspects.update(column_list(fixes, "minute_bucket"))
                if pause is not None and i + 1 < len(lows) and not pause(time.monotonic() - started):
                    break
        finally:
            conn.rollback()
            duck.close()
        log.debug("%s: snapshot check of %d minutes: %d minutes differ", self.name, window, len(suspects))
        return sorted(suspects)

    def self_check(self, ctx: base.Context, minutes: list[dt.datetime] | None = None) -> int:
        window = ctx.settings.projection_recompute_window_minutes
        if window <= 0 or minutes == []:
            return 0
        conn = ctx.conn
        if minutes is None:
            since = conn.execute(_q("window_start"), {"minutes": window}).fetchone()[0]  # type: ignore[index]
            fixes, _ = self._recompute(conn, ctx.duck, "window", {"since": since, "until": FOREVER})
            what = f"the last {window} minutes"
        else:
            # Checked again here, under the cycle's lock: a difference the snapshot saw may
            # have been corrected since (a rebuild), so only what is still wrong is restated.
            fixes, _ = self._recompute(conn, ctx.duck, "minutes", {"minutes": minutes})
            what = f"{len(minutes)} minutes found by the snapshot check"
        if fixes.num_rows == 0:
            log.debug("%s: self-check of %s found no difference", self.name, what)
            return 0
        for row in fixes.slice(0, 20).to_pylist():
            log.warning(
                "%s: self-check restated bucket %s %s to %s",
                self.name,
                row["minute_bucket"],
                row["segment"],
                row,
                extra={"action": "restate", "projection": self.name},
            )
        conn.execute(_q("create_restate"))
        write_arrow(conn, "tmp_kpi_diff", fixes)
        conn.execute(_q("restate"))
        log.warning("%s: self-check restated %d buckets of %s", self.name, fixes.num_rows, what)
        return fixes.num_rows
