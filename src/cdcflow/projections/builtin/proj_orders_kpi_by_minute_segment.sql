-- proj_orders_kpi_by_minute_segment: orders and payments per minute and customer segment
-- Orders count in the minute they were created, payments in the minute they were paid,
-- both under the current segment of the order's customer (UNKNOWN without one). A payment
-- counts only while its order exists; NULL amounts count as 0.
SELECT minute_bucket,
       segment,
       sum(orders) AS orders_count,
       sum(amount)::numeric(18,2) AS orders_amount_sum,
       sum(paid)::numeric(18,2) AS paid_amount_sum,
       sum(payments) AS payments_count
FROM (
    SELECT date_trunc('minute', o.created_at) AS minute_bucket,
           coalesce(c.segment, 'UNKNOWN') AS segment,
           1 AS orders, coalesce(o.amount, 0) AS amount, 0 AS paid, 0 AS payments
    FROM orders o
    LEFT JOIN customers c ON c.customer_id = o.customer_id
    UNION ALL
    SELECT date_trunc('minute', p.paid_at), coalesce(c.segment, 'UNKNOWN'), 0, 0, coalesce(p.paid_amount, 0), 1
    FROM payments p
    JOIN orders o ON o.order_id = p.order_id
    LEFT JOIN customers c ON c.customer_id = o.customer_id
) AS activity
GROUP BY minute_bucket, segment
