-- revenue_by_segment_status: payments of live orders by the customer's segment and the order's status
-- A user's query for the benchmarks: three tables joined, grouped, with a MAX kept per value.
SELECT c.segment, o.status, count(*) AS payments, sum(p.paid_amount) AS paid, max(p.paid_at) AS last_paid_at
FROM payments p
JOIN orders o ON o.order_id = p.order_id
JOIN customers c ON c.customer_id = o.customer_id
GROUP BY c.segment, o.status
