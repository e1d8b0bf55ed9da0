-- Demo seed rows (idempotent: only when the tables are empty). Demo only.
IF NOT EXISTS (SELECT 1 FROM dbo.customers)
    INSERT INTO dbo.customers (segment, is_active)
    VALUES (N'ENTERPRISE', 1), (N'SMB', 1), (N'CONSUMER', 1), (N'SMB', 1), (N'CONSUMER', 1);
GO
IF NOT EXISTS (SELECT 1 FROM dbo.orders)
    INSERT INTO dbo.orders (customer_id, amount, status, created_at, updated_at)
    SELECT c.customer_id, CAST(10 + c.customer_id * 7.25 AS numeric(18,2)), N'NEW', SYSUTCDATETIME(), SYSUTCDATETIME()
    FROM dbo.customers AS c;
GO
IF NOT EXISTS (SELECT 1 FROM dbo.payments)
    INSERT INTO dbo.payments (order_id, paid_amount, paid_at)
    SELECT o.order_id, o.amount, SYSUTCDATETIME()
    FROM dbo.orders AS o
    WHERE o.order_id % 2 = 1;
