-- Control-table queries shared by every projection (checkpoints, metadata, cutoff).

-- name: ensure_checkpoint
-- A checkpoint row per (projection, capture), created if missing.
INSERT INTO ctl_projection_checkpoints (projection_name, source_name, capture_instance)
VALUES (%(projection)s, %(source)s, %(capture)s)
ON CONFLICT DO NOTHING;

-- name: ensure_metadata
-- A metadata row per projection, created if missing.
INSERT INTO ctl_projection_metadata (projection_name) VALUES (%(projection)s)
ON CONFLICT DO NOTHING;

-- name: lock_metadata
-- Serialise cycles and rebuilds of one projection (across processes) for this transaction.
SELECT status, definition_digest FROM ctl_projection_metadata WHERE projection_name = %(projection)s FOR UPDATE;

-- name: read_checkpoints
-- The projection's position per capture.
SELECT capture_instance, last_lsn FROM ctl_projection_checkpoints
WHERE projection_name = %(projection)s AND source_name = %(source)s;

-- name: write_checkpoints
-- Every checkpoint of the projection moves to the cutoff.
UPDATE ctl_projection_checkpoints
SET last_lsn = %(lsn)s, updated_at = now()
WHERE projection_name = %(projection)s AND source_name = %(source)s AND capture_instance = ANY(%(captures)s::text[]);

-- name: metadata_built
-- A committed cycle: status OK (or STALE when a capture is held), position and counts.
UPDATE ctl_projection_metadata
SET status = %(status)s, as_of_lsn = %(lsn)s, as_of_time = %(as_of_time)s, built_at = now(),
    last_error = %(error)s, rows_changed = rows_changed + %(rows)s,
    restated_buckets = restated_buckets + %(restated)s, updated_at = now(),
    definition_digest = %(digest)s, mode = %(mode)s, definition_file = %(file)s
WHERE projection_name = %(projection)s;

-- name: metadata_error
-- A failed cycle: ERROR with the message; rows, checkpoints and as_of stay as they were.
UPDATE ctl_projection_metadata
SET status = 'ERROR', last_error = %(error)s, updated_at = now()
WHERE projection_name = %(projection)s;

-- name: reset_checkpoints
-- Before a rebuild's reload: the projection holds nothing yet.
UPDATE ctl_projection_checkpoints SET last_lsn = 0, updated_at = now()
WHERE projection_name = %(projection)s AND source_name = %(source)s;

-- name: drop_other_checkpoints
-- A rebuild: checkpoints of captures the projection no longer reads go.
DELETE FROM ctl_projection_checkpoints
WHERE projection_name = %(projection)s AND source_name = %(source)s AND NOT capture_instance = ANY(%(captures)s::text[]);

-- name: delta_exists
-- Is there a staged change of this capture in (checkpoint, cutoff]? (primary-key range scan)
SELECT EXISTS (SELECT 1 FROM {table} WHERE __lsn > %(after)s AND __lsn <= %(upto)s);

-- name: commit_time_at
-- Source commit time of the newest staged change at or below the cutoff (as_of_time).
SELECT __commit_time FROM {table} WHERE __lsn <= %(upto)s ORDER BY __lsn DESC LIMIT 1;

-- name: index_plans
-- For the rest of this transaction, joins between a delta and state go through the
-- state's indexes. Left alone, the planner picks a hash join over a scan of the whole
-- state table once the delta is a sizable fraction of it, and that cost then grows
-- with history. (Not used by a rebuild, where the delta is everything.)
SET LOCAL enable_seqscan = off;
SET LOCAL enable_hashjoin = off;
SET LOCAL enable_mergejoin = off;

-- name: default_plans
-- Back to the planner's defaults for the rest of the transaction.
RESET enable_seqscan;
RESET enable_hashjoin;
RESET enable_mergejoin;
