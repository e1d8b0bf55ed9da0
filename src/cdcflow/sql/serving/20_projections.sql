-- Serving-side state the projections maintain (idempotent). Each projection owns its
-- state tables (prefix pst_<projection>_): they advance with that projection's
-- checkpoints, in the same transaction as its rows, so a rebuild of one projection
-- never disturbs another.

-- proj_orders_kpi_by_minute_segment: the live rows each contribution depends on.
CREATE TABLE IF NOT EXISTS pst_kpi_customers (
    customer_id  bigint PRIMARY KEY,
    segment      text
);

CREATE TABLE IF NOT EXISTS pst_kpi_orders (
    order_id        bigint PRIMARY KEY,
    customer_id     bigint,
    amount          numeric(18,2),
    created_minute  timestamptz NOT NULL
) WITH (fillfactor = 90);
CREATE INDEX IF NOT EXISTS pst_kpi_orders_customer_idx ON pst_kpi_orders (customer_id);
CREATE INDEX IF NOT EXISTS pst_kpi_orders_minute_idx ON pst_kpi_orders (created_minute);

-- Every live payment, also one whose order does not exist (yet): it starts to count
-- when the order arrives.
CREATE TABLE IF NOT EXISTS pst_kpi_payments (
    payment_id   bigint PRIMARY KEY,
    order_id     bigint,
    paid_amount  numeric(18,2),
    paid_minute  timestamptz NOT NULL
) WITH (fillfactor = 90);
CREATE INDEX IF NOT EXISTS pst_kpi_payments_order_idx ON pst_kpi_payments (order_id);
CREATE INDEX IF NOT EXISTS pst_kpi_payments_minute_idx ON pst_kpi_payments (paid_minute);

-- The KPI buckets themselves are the projection's rows (with their payments_count:
-- 30_kpi_payments_count.sql). Room on each page for in-place (HOT) counter updates.
ALTER TABLE proj_orders_kpi_by_minute_segment SET (fillfactor = 80);

-- proj_orders_latest: its own rows are its order state; it adds the customers.
CREATE TABLE IF NOT EXISTS pst_latest_customers (
    customer_id  bigint PRIMARY KEY,
    segment      text
);
CREATE INDEX IF NOT EXISTS proj_orders_latest_customer_idx ON proj_orders_latest (customer_id);
