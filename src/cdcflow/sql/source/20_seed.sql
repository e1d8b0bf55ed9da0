-- Demo seed rows (idempotent: only when the tables are empty). Demo only.
INSERT INTO customers (segment, is_active)
SELECT s.segment, true
FROM (VALUES ('ENTERPRISE'), ('SMB'), ('CONSUMER'), ('SMB'), ('CONSUMER')) AS s(segment)
WHERE NOT EXISTS (SELECT 1 FROM customers);

INSERT INTO orders (customer_id, amount, status, created_at, updated_at)
SELECT c.customer_id, (10 + c.customer_id * 7.25)::numeric(18,2), 'NEW', now(), now()
FROM customers c
WHERE NOT EXISTS (SELECT 1 FROM orders);

INSERT INTO payments (order_id, paid_amount, paid_at)
SELECT o.order_id, o.amount, now()
FROM orders o
WHERE o.order_id % 2 = 1
  AND NOT EXISTS (SELECT 1 FROM payments);
