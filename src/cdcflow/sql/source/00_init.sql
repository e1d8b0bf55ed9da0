-- Source initialisation (idempotent): nothing at database level for PostgreSQL.
-- wal_level = logical is a server setting; bootstrap checks it and says how to set it.
SELECT 1;
