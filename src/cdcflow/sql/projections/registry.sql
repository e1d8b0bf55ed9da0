-- Projections as a whole: which are defined, which are gone.

-- name: removed
-- Projections built from a SQL definition that is no longer enabled (not yet marked).
SELECT projection_name FROM ctl_projection_metadata
WHERE definition_digest IS NOT NULL AND status <> 'REMOVED' AND NOT projection_name = ANY(%(names)s::text[])
ORDER BY 1;

-- name: mark_removed
-- No definition any more: the projection is left as it is, and says so.
UPDATE ctl_projection_metadata SET status = 'REMOVED', last_error = %(message)s, updated_at = now()
WHERE projection_name = %(projection)s;

-- name: tables_of
-- A projection's tables: its result and its state (pst_<name>__...).
SELECT relname FROM pg_class
WHERE relkind IN ('r', 'p') AND relnamespace = current_schema()::regnamespace
  AND (relname = %(name)s OR starts_with(relname, %(prefix)s))
ORDER BY relname = %(name)s, relname;

-- name: known
-- Whether the control tables know the projection.
SELECT 1 FROM ctl_projection_metadata WHERE projection_name = %(projection)s;

-- name: forget
-- A dropped projection's control rows and lease.
WITH checkpoints AS (DELETE FROM ctl_projection_checkpoints WHERE projection_name = %(projection)s),
     lease AS (DELETE FROM ctl_leases WHERE resource = 'projection:' || %(projection)s)
DELETE FROM ctl_projection_metadata WHERE projection_name = %(projection)s;
