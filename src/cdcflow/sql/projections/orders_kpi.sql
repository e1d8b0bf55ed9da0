-- proj_orders_kpi_by_minute_segment: serving-side reads and writes (PostgreSQL).
-- {table} is a staging table; deltas are the latest version per key in (after, upto],
-- read by a range scan on the staging primary key (__lsn, ...), update-befores skipped.

-- name: delta_customers
-- Latest change per customer in the range.
SELECT DISTINCT ON (customer_id) customer_id, __op = 1 AS deleted, segment
FROM {table}
WHERE __lsn > %(after)s AND __lsn <= %(upto)s AND __op <> 3
ORDER BY customer_id, __lsn DESC, __seqval DESC;

-- name: delta_orders
-- Latest change per order in the range.
SELECT DISTINCT ON (order_id) order_id, __op = 1 AS deleted, customer_id, amount, created_at
FROM {table}
WHERE __lsn > %(after)s AND __lsn <= %(upto)s AND __op <> 3
ORDER BY order_id, __lsn DESC, __seqval DESC;

-- name: delta_payments
-- Latest change per payment in the range.
SELECT DISTINCT ON (payment_id) payment_id, __op = 1 AS deleted, order_id, paid_amount, paid_at
FROM {table}
WHERE __lsn > %(after)s AND __lsn <= %(upto)s AND __op <> 3
ORDER BY payment_id, __lsn DESC, __seqval DESC;

-- name: state_orders_touched
-- Stored orders that changed, or whose customer changed (primary key and customer index).
SELECT order_id, customer_id, amount, created_minute FROM pst_kpi_orders
WHERE order_id = ANY(%(orders)s::bigint[]) OR customer_id = ANY(%(customers)s::bigint[]);

-- name: state_payments_touched
-- Stored payments that changed, or whose order is touched (primary key and order index).
SELECT payment_id, order_id, paid_amount, paid_minute FROM pst_kpi_payments
WHERE payment_id = ANY(%(payments)s::bigint[]) OR order_id = ANY(%(orders)s::bigint[]);

-- name: state_orders_by_id
-- Stored orders by key (the orders of touched payments).
SELECT order_id, customer_id, amount, created_minute FROM pst_kpi_orders
WHERE order_id = ANY(%(orders)s::bigint[]);

-- name: state_customers_by_id
-- Stored customers by key.
SELECT customer_id, segment FROM pst_kpi_customers WHERE customer_id = ANY(%(customers)s::bigint[]);

-- name: create_temp
-- Per-cycle scratch tables (dropped at commit or rollback).
CREATE TEMP TABLE tmp_kpi_orders (LIKE pst_kpi_orders) ON COMMIT DROP;
CREATE TEMP TABLE tmp_kpi_payments (LIKE pst_kpi_payments) ON COMMIT DROP;
CREATE TEMP TABLE tmp_kpi_customers (LIKE pst_kpi_customers) ON COMMIT DROP;
CREATE TEMP TABLE tmp_kpi_diff (LIKE proj_orders_kpi_by_minute_segment INCLUDING DEFAULTS) ON COMMIT DROP;

-- name: delete_state
-- Deleted keys leave the state (primary-key lookups).
WITH o AS (DELETE FROM pst_kpi_orders WHERE order_id = ANY(%(orders)s::bigint[])),
     p AS (DELETE FROM pst_kpi_payments WHERE payment_id = ANY(%(payments)s::bigint[]))
DELETE FROM pst_kpi_customers WHERE customer_id = ANY(%(customers)s::bigint[]);

-- name: upsert_state
-- Changed live keys take their new version (in place: HOT when no indexed column
-- changed). A primary-key lookup per row (the cycle's index_plans are on); MERGE writes
-- one WAL record per updated row where INSERT .. ON CONFLICT DO UPDATE wrote two.
MERGE INTO pst_kpi_orders AS s USING tmp_kpi_orders AS t ON s.order_id = t.order_id
WHEN MATCHED THEN UPDATE SET customer_id = t.customer_id, amount = t.amount, created_minute = t.created_minute
WHEN NOT MATCHED THEN INSERT (order_id, customer_id, amount, created_minute)
    VALUES (t.order_id, t.customer_id, t.amount, t.created_minute);
MERGE INTO pst_kpi_payments AS s USING tmp_kpi_payments AS t ON s.payment_id = t.payment_id
WHEN MATCHED THEN UPDATE SET order_id = t.order_id, paid_amount = t.paid_amount, paid_minute = t.paid_minute
WHEN NOT MATCHED THEN INSERT (payment_id, order_id, paid_amount, paid_minute)
    VALUES (t.payment_id, t.order_id, t.paid_amount, t.paid_minute);
MERGE INTO pst_kpi_customers AS s USING tmp_kpi_customers AS t ON s.customer_id = t.customer_id
WHEN MATCHED THEN UPDATE SET segment = t.segment
WHEN NOT MATCHED THEN INSERT (customer_id, segment) VALUES (t.customer_id, t.segment);

-- name: insert_state
-- A rebuild: the state is empty, plain inserts.
INSERT INTO pst_kpi_orders SELECT * FROM tmp_kpi_orders;
INSERT INTO pst_kpi_payments SELECT * FROM tmp_kpi_payments;
INSERT INTO pst_kpi_customers SELECT * FROM tmp_kpi_customers;

-- name: apply_diff
-- Add the bucket differences to the projection's rows, in one pass over the touched
-- buckets (a primary-key lookup each: the cycle's index_plans are on): a bucket nothing
-- contributes to any more is deleted, a new bucket starts from the difference. (MERGE
-- writes one WAL record per bucket where INSERT .. ON CONFLICT DO UPDATE wrote two, a
-- row lock and the update, and needed a second pass to find the emptied buckets.)
MERGE INTO proj_orders_kpi_by_minute_segment AS p
USING tmp_kpi_diff AS d ON p.minute_bucket = d.minute_bucket AND p.segment = d.segment
WHEN MATCHED AND p.orders_count + d.orders_count = 0 AND p.payments_count + d.payments_count = 0 THEN DELETE
WHEN MATCHED THEN UPDATE
    SET orders_count = p.orders_count + d.orders_count,
        orders_amount_sum = p.orders_amount_sum + d.orders_amount_sum,
        paid_amount_sum = p.paid_amount_sum + d.paid_amount_sum,
        payments_count = p.payments_count + d.payments_count,
        updated_at = now()
WHEN NOT MATCHED THEN
    INSERT (minute_bucket, segment, orders_count, orders_amount_sum, paid_amount_sum, payments_count)
    VALUES (d.minute_bucket, d.segment, d.orders_count, d.orders_amount_sum, d.paid_amount_sum, d.payments_count);

-- name: insert_diff
-- A rebuild: the projection is empty, every bucket is new.
INSERT INTO proj_orders_kpi_by_minute_segment
    (minute_bucket, segment, orders_count, orders_amount_sum, paid_amount_sum, payments_count)
SELECT minute_bucket, segment, orders_count, orders_amount_sum, paid_amount_sum, payments_count
FROM tmp_kpi_diff;

-- name: clear
-- A rebuild starts empty (DELETE, not TRUNCATE: readers keep the old rows until commit).
DELETE FROM proj_orders_kpi_by_minute_segment;
DELETE FROM pst_kpi_orders;
DELETE FROM pst_kpi_payments;
DELETE FROM pst_kpi_customers;

-- name: window_start
-- Self-check: the first minute of the recompute window.
SELECT date_trunc('minute', now()) - make_interval(mins => %(minutes)s);

-- name: create_restate
-- Self-check: scratch table for corrected buckets (may exist from this cycle's delta).
CREATE TEMP TABLE IF NOT EXISTS tmp_kpi_diff (LIKE proj_orders_kpi_by_minute_segment INCLUDING DEFAULTS) ON COMMIT DROP;
TRUNCATE tmp_kpi_diff;

-- name: window_orders
-- Self-check: stored orders created in [since, until) (minute index).
SELECT order_id, customer_id, amount, created_minute FROM pst_kpi_orders
WHERE created_minute >= %(since)s AND created_minute < %(until)s;

-- name: window_payments
-- Self-check: stored payments made in [since, until) (minute index).
SELECT payment_id, order_id, paid_amount, paid_minute FROM pst_kpi_payments
WHERE paid_minute >= %(since)s AND paid_minute < %(until)s;

-- name: window_buckets
-- Self-check: what the projection holds for [since, until).
SELECT minute_bucket, segment, orders_count, orders_amount_sum, paid_amount_sum, payments_count
FROM proj_orders_kpi_by_minute_segment WHERE minute_bucket >= %(since)s AND minute_bucket < %(until)s;

-- name: minutes_orders
-- Self-check of given minutes (the ones the snapshot check found different): their orders.
SELECT order_id, customer_id, amount, created_minute FROM pst_kpi_orders
WHERE created_minute = ANY(%(minutes)s::timestamptz[]);

-- name: minutes_payments
-- Self-check of given minutes: their payments.
SELECT payment_id, order_id, paid_amount, paid_minute FROM pst_kpi_payments
WHERE paid_minute = ANY(%(minutes)s::timestamptz[]);

-- name: minutes_buckets
-- Self-check of given minutes: what the projection holds for them.
SELECT minute_bucket, segment, orders_count, orders_amount_sum, paid_amount_sum, payments_count
FROM proj_orders_kpi_by_minute_segment WHERE minute_bucket = ANY(%(minutes)s::timestamptz[]);

-- name: restate
-- Self-check: the corrected buckets replace what was there (tmp_kpi_diff holds them
-- with payments_count -1 for a bucket that must disappear).
DELETE FROM proj_orders_kpi_by_minute_segment p USING tmp_kpi_diff d
WHERE p.minute_bucket = d.minute_bucket AND p.segment = d.segment;
INSERT INTO proj_orders_kpi_by_minute_segment
    (minute_bucket, segment, orders_count, orders_amount_sum, paid_amount_sum, payments_count)
SELECT minute_bucket, segment, orders_count, orders_amount_sum, paid_amount_sum, payments_count
FROM tmp_kpi_diff WHERE payments_count >= 0;
