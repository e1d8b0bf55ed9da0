-- Demo schema (the seed's three tables, as sql/source/10_schema.sql for PostgreSQL).
-- Run only for the demo: bootstrap never creates or writes a user's tables otherwise.
-- Timestamps hold UTC (SYSUTCDATETIME()); cdcflow stages datetime2 as timestamp (no time zone).
IF OBJECT_ID(N'dbo.customers', N'U') IS NULL
    CREATE TABLE dbo.customers (
        customer_id  bigint IDENTITY(1,1) NOT NULL CONSTRAINT pk_customers PRIMARY KEY,
        segment      nvarchar(64)  NOT NULL,
        is_active    bit           NOT NULL CONSTRAINT df_customers_is_active DEFAULT (1),
        updated_at   datetime2(6)  NOT NULL CONSTRAINT df_customers_updated_at DEFAULT (SYSUTCDATETIME())
    );
GO
IF OBJECT_ID(N'dbo.orders', N'U') IS NULL
    CREATE TABLE dbo.orders (
        order_id     bigint IDENTITY(1,1) NOT NULL CONSTRAINT pk_orders PRIMARY KEY,
        customer_id  bigint        NULL,
        amount       numeric(18,2) NULL,
        status       nvarchar(32)  NOT NULL CONSTRAINT df_orders_status DEFAULT (N'NEW'),
        created_at   datetime2(6)  NOT NULL CONSTRAINT df_orders_created_at DEFAULT (SYSUTCDATETIME()),
        updated_at   datetime2(6)  NOT NULL CONSTRAINT df_orders_updated_at DEFAULT (SYSUTCDATETIME())
    );
GO
IF OBJECT_ID(N'dbo.payments', N'U') IS NULL
    CREATE TABLE dbo.payments (
        payment_id   bigint IDENTITY(1,1) NOT NULL CONSTRAINT pk_payments PRIMARY KEY,
        order_id     bigint        NULL,
        paid_amount  numeric(18,2) NULL,
        paid_at      datetime2(6)  NOT NULL CONSTRAINT df_payments_paid_at DEFAULT (SYSUTCDATETIME())
    );
