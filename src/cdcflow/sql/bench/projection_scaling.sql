-- Projection scaling benchmark: set-based history and deltas written straight into
-- staging (no source database involved). Positions: one change per "transaction", so
-- __lsn increases by one per row and __seqval is 0.

-- name: history_customers
-- %(n)s customers, each a snapshot row (op 5).
INSERT INTO stg_cdc_customers (__lsn, __seqval, __op, __commit_time, customer_id, segment, is_active, updated_at)
SELECT g, 0, 5, %(t)s, g, (ARRAY['ENTERPRISE', 'SMB', 'CONSUMER', 'MIDMARKET'])[1 + g %% 4], true, %(t)s
FROM generate_series(1::bigint, %(n)s::bigint) AS g;

-- name: history_orders
-- %(n)s orders (op 2), 10 a minute up to %(t)s (so history spans n/10 minutes: the same
-- shape at every size), then %(upd)s updates of random orders (op 4, same minute).
INSERT INTO stg_cdc_orders (__lsn, __seqval, __op, __commit_time, order_id, customer_id, amount, status, created_at,
                            updated_at)
SELECT %(base)s + g, 0, 2, %(t)s, g, 1 + (g * 7919) %% %(customers)s, (g %% 100000) / 100.0, 'NEW',
       %(t)s - (%(n)s - g) * interval '6 seconds', %(t)s
FROM generate_series(1::bigint, %(n)s::bigint) AS g;
INSERT INTO stg_cdc_orders (__lsn, __seqval, __op, __commit_time, order_id, customer_id, amount, status, created_at,
                            updated_at)
SELECT %(base)s + %(n)s + g, 0, 4, %(t)s, o, 1 + (o * 7919) %% %(customers)s, (g %% 77777) / 100.0, 'PAID',
       %(t)s - (%(n)s - o) * interval '6 seconds', %(t)s
FROM generate_series(1::bigint, %(upd)s::bigint) AS g, LATERAL (SELECT 1 + (g * 104729) %% %(n)s AS o) AS x;

-- name: history_payments
-- %(n)s payments (op 2): payment g pays order 1 + (g - 1) mod orders, 30 s after it was made.
INSERT INTO stg_cdc_payments (__lsn, __seqval, __op, __commit_time, payment_id, order_id, paid_amount, paid_at)
SELECT %(base)s + g, 0, 2, %(t)s, g, o, (g %% 50000) / 100.0,
       %(t)s - (%(orders)s - o) * interval '6 seconds' + interval '30 seconds'
FROM generate_series(1::bigint, %(n)s::bigint) AS g, LATERAL (SELECT 1 + (g - 1) %% %(orders)s AS o) AS x;

-- name: delta
-- A delta of 10,000 changes after %(base)s, made at %(now)s: 100 segment changes (their
-- orders lie anywhere in history), 3,000 new orders, 2,400 updates of recent orders and
-- 600 late updates of orders anywhere in history (new customer, some amounts NULL), 200
-- order deletes, 2,500 new payments (1 in 50 for an order that does not exist yet),
-- 1,000 payment updates, 200 payment deletes. "Recent" is the newest %(span_o)s orders /
-- %(span_p)s payments: profile "recent" passes 50,000, profile "uniform" all of them
-- (every change anywhere in history: the worst case for caches).
SELECT setseed(%(seed)s);
INSERT INTO stg_cdc_customers (__lsn, __seqval, __op, __commit_time, customer_id, segment, is_active, updated_at)
SELECT %(base)s + g, 0, 4, %(now)s, 1 + floor(random() * %(customers)s)::bigint,
       (ARRAY['ENTERPRISE', 'SMB', 'CONSUMER', 'MIDMARKET'])[1 + floor(random() * 4)::int], true, %(now)s
FROM generate_series(1, 100) AS g;
INSERT INTO stg_cdc_orders (__lsn, __seqval, __op, __commit_time, order_id, customer_id, amount, status, created_at,
                            updated_at)
SELECT %(base)s + 100 + g, 0, 2, %(now)s, %(next_order)s + g, 1 + floor(random() * %(customers)s)::bigint,
       round((random() * 1000)::numeric, 2), 'NEW', %(now)s + (g %% 300) * interval '1 second', %(now)s
FROM generate_series(1, 3000) AS g;
INSERT INTO stg_cdc_orders (__lsn, __seqval, __op, __commit_time, order_id, customer_id, amount, status, created_at,
                            updated_at)
SELECT %(base)s + 3100 + g, 0, 4, %(now)s, o, 1 + floor(random() * %(customers)s)::bigint,
       CASE WHEN g %% 10 = 0 THEN NULL ELSE round((random() * 1000)::numeric, 2) END, 'PAID',
       %(t)s - (%(orders)s - o) * interval '6 seconds', %(now)s
FROM generate_series(1, 3000) AS g,
     LATERAL (SELECT CASE WHEN g %% 5 = 0 THEN 1 + floor(random() * %(orders)s)::bigint
                          ELSE %(orders)s - floor(random() * %(span_o)s)::bigint END AS o) AS x;
INSERT INTO stg_cdc_orders (__lsn, __seqval, __op, __commit_time, order_id)
SELECT %(base)s + 6100 + g, 0, 1, %(now)s, %(orders)s - floor(random() * %(span_o)s)::bigint + 0 * g
FROM generate_series(1, 200) AS g;
INSERT INTO stg_cdc_payments (__lsn, __seqval, __op, __commit_time, payment_id, order_id, paid_amount, paid_at)
SELECT %(base)s + 6300 + g, 0, 2, %(now)s, %(next_payment)s + g,
       CASE WHEN g %% 50 = 0 THEN %(next_order)s + 100000 + g
            ELSE %(orders)s - floor(random() * %(span_o)s)::bigint END,
       round((random() * 500)::numeric, 2), %(now)s + (g %% 300) * interval '1 second'
FROM generate_series(1, 2500) AS g;
INSERT INTO stg_cdc_payments (__lsn, __seqval, __op, __commit_time, payment_id, order_id, paid_amount, paid_at)
SELECT %(base)s + 8800 + g, 0, 4, %(now)s, p, o, round((random() * 500)::numeric, 2),
       %(t)s - (%(orders)s - o) * interval '6 seconds' + interval '30 seconds'
FROM generate_series(1, 1000) AS g,
     LATERAL (SELECT %(payments)s - floor(random() * %(span_p)s)::bigint + 0 * g AS p) AS x,
     LATERAL (SELECT 1 + (p - 1) %% %(orders)s AS o) AS y;
INSERT INTO stg_cdc_payments (__lsn, __seqval, __op, __commit_time, payment_id)
SELECT %(base)s + 9800 + g, 0, 1, %(now)s, %(payments)s - floor(random() * %(span_p)s)::bigint + 0 * g
FROM generate_series(1, 200) AS g;

-- name: advance
-- Every capture staged up to %(lsn)s.
UPDATE ctl_ingestion_watermarks SET last_lsn = %(lsn)s, state = 'OK', updated_at = now();

-- name: full_recompute
-- The seed's way, in DuckDB: latest state per key over all staged rows, all buckets.
WITH
c AS (SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY customer_id ORDER BY __lsn DESC, __seqval DESC) AS rn
                     FROM all_customers) WHERE rn = 1 AND __op <> 1),
o AS (SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY order_id ORDER BY __lsn DESC, __seqval DESC) AS rn
                     FROM all_orders) WHERE rn = 1 AND __op <> 1),
p AS (SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY payment_id ORDER BY __lsn DESC, __seqval DESC) AS rn
                     FROM all_payments) WHERE rn = 1 AND __op <> 1),
oc AS (SELECT o.order_id, date_trunc('minute', o.created_at) AS m, coalesce(c.segment, 'UNKNOWN') AS seg,
              coalesce(o.amount, 0) AS amount
       FROM o LEFT JOIN c ON c.customer_id = o.customer_id),
u AS (SELECT m, seg, 1 AS n, amount, 0 AS paid FROM oc
      UNION ALL
      SELECT date_trunc('minute', p.paid_at), oc.seg, 0, 0, coalesce(p.paid_amount, 0) FROM p JOIN oc USING (order_id))
SELECT m AS minute_bucket, seg AS segment, CAST(sum(n) AS BIGINT) AS orders_count,
       CAST(sum(amount) AS DECIMAL(18,2)) AS orders_amount_sum, CAST(sum(paid) AS DECIMAL(18,2)) AS paid_amount_sum
FROM u GROUP BY m, seg;
