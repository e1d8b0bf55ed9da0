-- proj_orders_kpi_by_minute_segment: DuckDB transforms over Arrow tables.
--
-- Inputs registered by orders_kpi.py:
--   d_customers(customer_id, deleted, segment)            latest change per key in the delta
--   d_orders(order_id, deleted, customer_id, amount, created_at)
--   d_payments(payment_id, deleted, order_id, paid_amount, paid_at)
--   s_customers(customer_id, segment)                      stored state, only the keys
--   s_orders(order_id, customer_id, amount, created_minute)    the delta touches (closed:
--   s_payments(payment_id, order_id, paid_amount, paid_minute) every loaded row's order
--                                                              and customer are loaded)
-- Contribution of a live order: (minute of created_at, segment of its customer or
-- UNKNOWN) +1 order, +amount (NULL counts 0). Of a live payment of a live order:
-- (minute of paid_at, segment of the order's customer) +paid_amount, +1 payment.

-- name: state_orders
-- New state rows of the changed live orders.
SELECT order_id, customer_id, amount, date_trunc('minute', created_at) AS created_minute
FROM d_orders WHERE NOT deleted ORDER BY order_id;

-- name: state_payments
-- New state rows of the changed live payments.
SELECT payment_id, order_id, paid_amount, date_trunc('minute', paid_at) AS paid_minute
FROM d_payments WHERE NOT deleted ORDER BY payment_id;

-- name: state_customers
-- New state rows of the changed live customers.
SELECT customer_id, segment FROM d_customers WHERE NOT deleted;

-- name: deleted_keys
-- Keys whose latest change is a delete, as PostgreSQL array literals.
SELECT (SELECT '{' || coalesce(string_agg(order_id::VARCHAR, ','), '') || '}' FROM d_orders WHERE deleted),
       (SELECT '{' || coalesce(string_agg(payment_id::VARCHAR, ','), '') || '}' FROM d_payments WHERE deleted),
       (SELECT '{' || coalesce(string_agg(customer_id::VARCHAR, ','), '') || '}' FROM d_customers WHERE deleted);

-- name: bucket_diff
-- Contributions of the loaded rows after the delta minus before it, per bucket. Rows
-- the delta does not affect contribute the same to both sides and cancel out.
WITH
new_c AS (
    SELECT customer_id, segment FROM s_customers
    WHERE customer_id NOT IN (SELECT customer_id FROM d_customers)
    UNION ALL SELECT customer_id, segment FROM d_customers WHERE NOT deleted),
new_o AS (
    SELECT order_id, customer_id, amount, created_minute FROM s_orders
    WHERE order_id NOT IN (SELECT order_id FROM d_orders)
    UNION ALL SELECT order_id, customer_id, amount, date_trunc('minute', created_at) FROM d_orders WHERE NOT deleted),
new_p AS (
    SELECT payment_id, order_id, paid_amount, paid_minute FROM s_payments
    WHERE payment_id NOT IN (SELECT payment_id FROM d_payments)
    UNION ALL SELECT payment_id, order_id, paid_amount, date_trunc('minute', paid_at) FROM d_payments WHERE NOT deleted),
contrib AS (
    SELECT o.created_minute AS minute_bucket, coalesce(c.segment, 'UNKNOWN') AS segment, 1 AS sign,
           1 AS orders, coalesce(o.amount, 0) AS amount, 0 AS paid, 0 AS payments
    FROM new_o o LEFT JOIN new_c c ON c.customer_id = o.customer_id
    UNION ALL
    SELECT p.paid_minute, coalesce(c.segment, 'UNKNOWN'), 1, 0, 0, coalesce(p.paid_amount, 0), 1
    FROM new_p p JOIN new_o o ON o.order_id = p.order_id LEFT JOIN new_c c ON c.customer_id = o.customer_id
    UNION ALL
    SELECT o.created_minute, coalesce(c.segment, 'UNKNOWN'), -1, 1, coalesce(o.amount, 0), 0, 0
    FROM s_orders o LEFT JOIN s_customers c ON c.customer_id = o.customer_id
    UNION ALL
    SELECT p.paid_minute, coalesce(c.segment, 'UNKNOWN'), -1, 0, 0, coalesce(p.paid_amount, 0), 1
    FROM s_payments p JOIN s_orders o ON o.order_id = p.order_id LEFT JOIN s_customers c ON c.customer_id = o.customer_id)
SELECT minute_bucket, segment,
       CAST(sum(sign * orders) AS BIGINT) AS orders_count,
       CAST(sum(sign * amount) AS DECIMAL(18,2)) AS orders_amount_sum,
       CAST(sum(sign * paid) AS DECIMAL(18,2)) AS paid_amount_sum,
       CAST(sum(sign * payments) AS BIGINT) AS payments_count
FROM contrib
GROUP BY minute_bucket, segment
HAVING sum(sign * orders) <> 0 OR sum(sign * amount) <> 0 OR sum(sign * paid) <> 0 OR sum(sign * payments) <> 0
ORDER BY minute_bucket, segment;

-- name: window_recompute
-- Self-check: the buckets of the window recomputed from stored rows, compared with what
-- the projection holds; one row per bucket that differs, with the correct values
-- (payments_count -1: the bucket must not exist).
-- Inputs: w_orders, w_payments (in the window), w_pay_orders (their orders),
-- w_customers, w_held (window_buckets).
WITH
contrib AS (
    SELECT o.created_minute AS minute_bucket, coalesce(c.segment, 'UNKNOWN') AS segment,
           1 AS orders, coalesce(o.amount, 0) AS amount, 0 AS paid, 0 AS payments
    FROM w_orders o LEFT JOIN w_customers c ON c.customer_id = o.customer_id
    UNION ALL
    SELECT p.paid_minute, coalesce(c.segment, 'UNKNOWN'), 0, 0, coalesce(p.paid_amount, 0), 1
    FROM w_payments p JOIN w_pay_orders o ON o.order_id = p.order_id
    LEFT JOIN w_customers c ON c.customer_id = o.customer_id),
truth AS (
    SELECT minute_bucket, segment, CAST(sum(orders) AS BIGINT) AS orders_count,
           CAST(sum(amount) AS DECIMAL(18,2)) AS orders_amount_sum,
           CAST(sum(paid) AS DECIMAL(18,2)) AS paid_amount_sum, CAST(sum(payments) AS BIGINT) AS payments_count
    FROM contrib GROUP BY minute_bucket, segment)
SELECT coalesce(t.minute_bucket, h.minute_bucket) AS minute_bucket, coalesce(t.segment, h.segment) AS segment,
       coalesce(t.orders_count, 0) AS orders_count,
       coalesce(t.orders_amount_sum, 0)::DECIMAL(18,2) AS orders_amount_sum,
       coalesce(t.paid_amount_sum, 0)::DECIMAL(18,2) AS paid_amount_sum,
       coalesce(t.payments_count, -1) AS payments_count
FROM truth t FULL JOIN w_held h ON t.minute_bucket = h.minute_bucket AND t.segment = h.segment
WHERE t.minute_bucket IS NULL OR h.minute_bucket IS NULL
   OR t.orders_count IS DISTINCT FROM h.orders_count
   OR t.orders_amount_sum IS DISTINCT FROM h.orders_amount_sum
   OR t.paid_amount_sum IS DISTINCT FROM h.paid_amount_sum
   OR t.payments_count IS DISTINCT FROM h.payments_count;
