-- proj_orders_latest: serving-side reads and writes (PostgreSQL). {table} is a staging
-- table; deltas are the latest version per key in (after, upto] (range scan on __lsn).

-- name: delta_orders
-- Latest change per order in the range, with its commit LSN.
SELECT DISTINCT ON (order_id) order_id, __op = 1 AS deleted, customer_id, amount, status,
       created_at, updated_at, __lsn
FROM {table}
WHERE __lsn > %(after)s AND __lsn <= %(upto)s AND __op <> 3
ORDER BY order_id, __lsn DESC, __seqval DESC;

-- name: delta_customers
-- Latest change per customer in the range.
SELECT DISTINCT ON (customer_id) customer_id, __op = 1 AS deleted, segment
FROM {table}
WHERE __lsn > %(after)s AND __lsn <= %(upto)s AND __op <> 3
ORDER BY customer_id, __lsn DESC, __seqval DESC;

-- name: state_customers_by_id
-- Stored customers by key.
SELECT customer_id, segment FROM pst_latest_customers WHERE customer_id = ANY(%(customers)s::bigint[]);

-- name: create_temp
-- Per-cycle scratch tables (dropped at commit or rollback).
CREATE TEMP TABLE tmp_latest_rows (LIKE proj_orders_latest) ON COMMIT DROP;
CREATE TEMP TABLE tmp_latest_customers (customer_id bigint NOT NULL, deleted boolean NOT NULL, segment text)
    ON COMMIT DROP;

-- name: write_customers
-- The customer state follows the delta (deleted customers leave it).
DELETE FROM pst_latest_customers s USING tmp_latest_customers t WHERE s.customer_id = t.customer_id AND t.deleted;
INSERT INTO pst_latest_customers SELECT customer_id, segment FROM tmp_latest_customers WHERE NOT deleted
ON CONFLICT (customer_id) DO UPDATE SET segment = excluded.segment;

-- name: update_segments
-- Orders of a changed customer take its new segment (NULL when it was deleted); by the
-- customer index, so the work follows the orders touched.
UPDATE proj_orders_latest p SET segment = t.segment
FROM tmp_latest_customers t
WHERE p.customer_id = t.customer_id AND p.segment IS DISTINCT FROM t.segment;

-- name: delete_orders
-- Deleted orders leave (primary-key lookups).
DELETE FROM proj_orders_latest WHERE order_id = ANY(%(orders)s::bigint[]);

-- name: upsert_orders
-- The new versions of the changed live orders.
INSERT INTO proj_orders_latest SELECT * FROM tmp_latest_rows
ON CONFLICT (order_id) DO UPDATE
SET customer_id = excluded.customer_id, segment = excluded.segment, amount = excluded.amount,
    status = excluded.status, created_at = excluded.created_at, updated_at = excluded.updated_at,
    __source_lsn = excluded.__source_lsn;

-- name: clear
-- A rebuild starts empty (DELETE, not TRUNCATE: readers keep the old rows until commit).
DELETE FROM proj_orders_latest;
DELETE FROM pst_latest_customers;
