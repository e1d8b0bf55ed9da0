-- customer_activity: every customer with its orders so far (none: zero, NULL totals)
-- A user's query for the benchmarks: an outer join grouped by its preserved side.
SELECT c.customer_id, c.segment, count(o.order_id) AS orders, sum(o.amount) AS total,
       max(o.created_at) AS last_order_at
FROM customers c
LEFT JOIN orders o ON o.customer_id = c.customer_id
GROUP BY c.customer_id, c.segment
