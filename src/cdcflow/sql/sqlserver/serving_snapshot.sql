-- Serving-side (PostgreSQL) query for the SQL Server snapshot: run against the serving
-- database, not SQL Server. {table} is quoted by psycopg.sql.

-- name: max_seqval_at
-- The highest seqval already staged at a snapshot position: a second snapshot at the same
-- max LSN (resync twice with no new change) numbers its rows after it.
SELECT max(__seqval) FROM {table} WHERE __lsn = %(lsn)s;
