-- Queries cdcflow runs against a SQL Server source: the CDC functions and the catalog.
-- {placeholders} take identifiers validated and bracket-quoted by
-- cdcflow.sources.mssql_support (never raw text); %(name)s are driver parameters.
-- LSNs travel as binary(10) both ways.

-- name: server_info
-- Major version, database, whether CDC is enabled, whether SNAPSHOT isolation is allowed,
-- and the engine edition (5 = Azure SQL Database, 8 = Azure SQL Managed Instance: both
-- report major version 12 whatever the engine's real version).
SELECT CAST(SERVERPROPERTY('ProductMajorVersion') AS int) AS major_version,
       DB_NAME() AS database_name,
       d.is_cdc_enabled,
       d.snapshot_isolation_state,
       CAST(SERVERPROPERTY('EngineEdition') AS int) AS engine_edition
FROM sys.databases AS d
WHERE d.database_id = DB_ID();

-- name: capture_instances
-- The capture instances of a source table (at most two), newest first.
SELECT ct.capture_instance, ct.start_lsn
FROM cdc.change_tables AS ct
WHERE ct.source_object_id = OBJECT_ID(QUOTENAME(%(schema)s) + N'.' + QUOTENAME(%(table)s))
ORDER BY ct.create_date DESC;

-- name: capture_columns
-- Captured columns in change-table order, with their source types and key flags (the
-- columns of the unique index the capture instance identifies rows by). Type: the base
-- system type (an alias type's too), except for CLR types (geography, geometry,
-- hierarchyid): they share system_type_id 240, for which TYPE_NAME answers NULL, and are
-- named by their own sys.types row (user_type_id).
SELECT cc.column_name,
       CASE WHEN t.is_assembly_type = 1 THEN t.name ELSE TYPE_NAME(c.system_type_id) END AS type_name,
       c.precision,
       c.scale,
       CAST(CASE WHEN ic.column_name IS NULL THEN 0 ELSE 1 END AS bit) AS is_key
FROM cdc.change_tables AS ct
JOIN cdc.captured_columns AS cc ON cc.object_id = ct.object_id
JOIN sys.columns AS c ON c.object_id = ct.source_object_id AND c.name = cc.column_name
JOIN sys.types AS t ON t.user_type_id = c.user_type_id
LEFT JOIN cdc.index_columns AS ic ON ic.object_id = ct.object_id AND ic.column_name = cc.column_name
WHERE ct.capture_instance = %(capture)s
ORDER BY cc.column_ordinal;

-- name: capture_state
-- Why sys.fn_cdc_get_min_lsn answered 0x00...: no row (the capture instance does not
-- exist), start_lsn NULL (the capture job has not processed it yet), or a row with a
-- start_lsn (this login may not read it: not in the gating role, or no SELECT on the
-- captured columns).
SELECT ct.start_lsn,
       ct.role_name,
       CAST(CASE WHEN ct.role_name IS NULL THEN 1 ELSE COALESCE(IS_ROLEMEMBER(ct.role_name), 0) END AS bit) AS in_role
FROM cdc.change_tables AS ct
WHERE ct.capture_instance = %(capture)s;

-- name: capture_job_scan
-- Seconds since the capture job last ended a log scan session (session_id 0 aggregates
-- them; both times are server local time). No row after a restart or failover; needs
-- VIEW DATABASE STATE.
SELECT DATEDIFF(second, s.end_time, GETDATE()) AS seconds_since_scan
FROM sys.dm_cdc_log_scan_sessions AS s
WHERE s.session_id = 0;

-- name: source_columns
-- The source table's columns now (sys.columns), typed as capture_columns types them.
SELECT c.name AS column_name,
       CASE WHEN t.is_assembly_type = 1 THEN t.name ELSE TYPE_NAME(c.system_type_id) END AS type_name
FROM sys.columns AS c
JOIN sys.types AS t ON t.user_type_id = c.user_type_id
WHERE c.object_id = OBJECT_ID(QUOTENAME(%(schema)s) + N'.' + QUOTENAME(%(table)s))
ORDER BY c.column_id;

-- name: captured_columns
-- The capture instance's own columns (cdc.captured_columns): fixed when it was created;
-- DDL on the source table does not change them.
SELECT cc.column_name, cc.column_type
FROM cdc.captured_columns AS cc
JOIN cdc.change_tables AS ct ON ct.object_id = cc.object_id
WHERE ct.capture_instance = %(capture)s
ORDER BY cc.column_ordinal;

-- name: ddl_history
-- The first DDL on the source table after the watermark, up to to_lsn (cdc.ddl_history
-- has a row per capture instance; object_id is the change table's).
SELECT TOP (1) h.ddl_lsn, h.ddl_command, h.required_column_update
FROM cdc.ddl_history AS h
JOIN cdc.change_tables AS ct ON ct.object_id = h.object_id
WHERE ct.capture_instance = %(capture)s AND h.ddl_lsn > %(after_lsn)s AND h.ddl_lsn <= %(to_lsn)s
ORDER BY h.ddl_lsn;

-- name: lsn_bounds
-- The oldest LSN the capture instance still holds (0x00... if it does not exist or we
-- may not read it) and the newest LSN the capture job has harvested.
SELECT sys.fn_cdc_get_min_lsn(%(capture)s) AS min_lsn,
       sys.fn_cdc_get_max_lsn() AS max_lsn;

-- name: max_lsn
-- The newest LSN the capture job has harvested (for status and "caught up" checks).
SELECT sys.fn_cdc_get_max_lsn() AS max_lsn;

-- name: read_window
-- Bounds plus where the next window starts: the LSN right after the watermark.
SELECT sys.fn_cdc_get_min_lsn(%(capture)s) AS min_lsn,
       sys.fn_cdc_get_max_lsn() AS max_lsn,
       sys.fn_cdc_increment_lsn(%(after_lsn)s) AS from_lsn;

-- name: changes
-- Changes with from_lsn <= __$start_lsn <= to_lsn, read from the change table itself
-- (cdc.<capture_instance>_CT): the cdc.fn_cdc_get_all_changes_<ci> function does not return
-- __$command_id, and Microsoft's change-table page says to order the changes of a
-- transaction by __$command_id, not __$seqval (KB 3030352: the insert of an update recorded
-- as delete + insert can have the lower seqval). Every operation is read, op 3 included.
-- A table read checks no range (no error 313): the caller checks the min LSN before and
-- after. TOP ... WITH TIES on __$start_lsn applies the row cap without splitting an LSN.
-- Commit time: cdc.lsn_time_mapping holds server local time; shifted to UTC with the
-- server's current offset.
SELECT c.[__$start_lsn], c.[__$seqval], c.[__$operation], c.[__$command_id],
       DATEADD(minute, -DATEPART(TZOFFSET, SYSDATETIMEOFFSET()), m.tran_end_time) AS commit_time,
       {columns}
FROM (
    SELECT TOP (%(max_rows)s) WITH TIES *
    FROM {change_table}
    WHERE [__$start_lsn] >= %(from_lsn)s AND [__$start_lsn] <= %(to_lsn)s
    ORDER BY [__$start_lsn]
) AS c
LEFT JOIN cdc.lsn_time_mapping AS m ON m.start_lsn = c.[__$start_lsn]
ORDER BY c.[__$start_lsn], c.[__$command_id], c.[__$seqval], c.[__$operation];

-- name: begin_snapshot_read
-- The initial snapshot's transaction: one point in time, writers not blocked.
SET TRANSACTION ISOLATION LEVEL SNAPSHOT;
BEGIN TRANSACTION;

-- name: begin_read_committed
-- Fallback when the database does not allow SNAPSHOT isolation (still correct: see
-- SqlServerSource.snapshot).
SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
BEGIN TRANSACTION;

-- name: snapshot_rows
-- Every row of the captured table, captured columns only.
SELECT {columns} FROM {table};

-- name: end_snapshot_read
-- Read-only: nothing to keep. Back to the default isolation level for this session.
ROLLBACK TRANSACTION;
SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
