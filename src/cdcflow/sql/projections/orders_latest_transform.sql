-- proj_orders_latest: DuckDB transforms over Arrow tables.
-- Inputs: d_orders(order_id, deleted, customer_id, amount, status, created_at, updated_at,
-- __lsn), d_customers(customer_id, deleted, segment), s_customers(customer_id, segment)
-- (stored customers of the changed orders and of the changed customers).

-- name: rows
-- New rows of the changed live orders, with their customer's segment after the delta.
-- __source_lsn is the commit LSN of the order's own latest change.
WITH new_c AS (
    SELECT customer_id, segment FROM s_customers
    WHERE customer_id NOT IN (SELECT customer_id FROM d_customers)
    UNION ALL SELECT customer_id, segment FROM d_customers WHERE NOT deleted)
SELECT o.order_id, o.customer_id, c.segment, o.amount, o.status, o.created_at, o.updated_at,
       o.__lsn AS __source_lsn
FROM d_orders o LEFT JOIN new_c c ON c.customer_id = o.customer_id
WHERE NOT o.deleted;

-- name: deleted_orders
-- Orders whose latest change is a delete, as a PostgreSQL array literal.
SELECT '{' || coalesce(string_agg(order_id::VARCHAR, ','), '') || '}' FROM d_orders WHERE deleted;

-- name: customers
-- Changed customers with the segment their orders now show (NULL when deleted).
SELECT customer_id, deleted, CASE WHEN deleted THEN NULL ELSE segment END AS segment FROM d_customers;
