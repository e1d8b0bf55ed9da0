-- SQL Server source initialisation (idempotent; run on every bootstrap).
-- 1. Change data capture on the database (sys.sp_cdc_enable_db needs sysadmin). The
--    capture and cleanup jobs it relies on run under SQL Server Agent: the Agent must run.
-- 2. SNAPSHOT isolation allowed, so the initial snapshot reads a table at one point in
--    time without blocking writers (see cdcflow/sources/sqlserver.py, SqlServerSource.snapshot).
IF EXISTS (SELECT 1 FROM sys.databases WHERE database_id = DB_ID() AND is_cdc_enabled = 0)
BEGIN
    EXEC sys.sp_cdc_enable_db;
END;
GO
IF EXISTS (SELECT 1 FROM sys.databases WHERE database_id = DB_ID() AND snapshot_isolation_state = 0)
BEGIN
    ALTER DATABASE CURRENT SET ALLOW_SNAPSHOT_ISOLATION ON;
END;
