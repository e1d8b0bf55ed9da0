-- proj_orders_latest: the latest state of every order, with its customer's current segment
-- One row per live order (key order_id, inferred: the customer is joined on its key);
-- segment is NULL while the order has no customer.
SELECT o.order_id, o.customer_id, c.segment, o.amount, o.status, o.created_at, o.updated_at
FROM orders o
LEFT JOIN customers c ON c.customer_id = o.customer_id
