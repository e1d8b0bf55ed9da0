-- Staging compaction: history that every projection has read and that is older than
-- STAGING_RETENTION is reduced to the latest row per key. Placeholders: {table} the
-- staging table, {keys} its key columns, {match} "s.k = r.k AND ..." over the keys.
-- Positions are (__lsn, __seqval): a batch is a bounded range of the primary key, so a
-- huge source transaction (one __lsn) is still cut into small batches. Every statement
-- is a short transaction with row locks only, on rows at or below the horizon (which is
-- at or below the watermark), while ingestion only inserts above the watermark: it is
-- never held up.

-- name: projection_checkpoints
-- Checkpoints of the given projections on one capture.
SELECT projection_name, last_lsn FROM ctl_projection_checkpoints
WHERE source_name = %(source)s AND capture_instance = %(capture)s
  AND projection_name = ANY(%(projections)s::text[]);

-- name: projection_captures
-- The captures each of the given projections has a checkpoint for (what it reads).
SELECT projection_name, capture_instance FROM ctl_projection_checkpoints
WHERE source_name = %(source)s AND projection_name = ANY(%(projections)s::text[])
ORDER BY 1, 2;

-- name: key_columns
-- A staging table's key columns, read from its key index (<staging>_key_idx).
SELECT a.attname
FROM pg_index i
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[])
WHERE i.indexrelid = to_regclass(%(index)s) AND a.attname NOT IN ('__lsn', '__seqval')
ORDER BY array_position(i.indkey::int2[], a.attnum);

-- name: lowest_lsn
-- Where staging starts.
SELECT __lsn FROM {table} ORDER BY __lsn LIMIT 1;

-- name: old_enough
-- Was the newest row at or below a position staged longer than retention ago?
-- (a probe of retention's binary search: __staged_at grows with __lsn)
SELECT __staged_at < now() - make_interval(secs => %(retention)s)
FROM {table} WHERE __lsn <= %(lsn)s ORDER BY __lsn DESC LIMIT 1;

-- name: batch_end
-- The position of the batch_rows-th row after lo, at or below the horizon (none: fewer left).
SELECT __lsn, __seqval FROM {table}
WHERE (__lsn, __seqval) > (%(lo_lsn)s, %(lo_seq)s) AND __lsn <= %(horizon)s
ORDER BY __lsn, __seqval OFFSET %(rows)s LIMIT 1;

-- name: delete_superseded
-- In (lo, hi]: update-befores, and rows with a later non-update-before row of the same
-- key at or below the horizon (that row, or a later one, stays: the latest state survives).
DELETE FROM {table} AS r
WHERE (r.__lsn, r.__seqval) > (%(lo_lsn)s, %(lo_seq)s) AND (r.__lsn, r.__seqval) <= (%(hi_lsn)s, %(hi_seq)s)
  AND r.__lsn <= %(horizon)s
  AND (r.__op = 3 OR EXISTS (
        SELECT 1 FROM {table} AS s
        WHERE {match} AND s.__op <> 3 AND s.__lsn <= %(horizon)s
          AND (s.__lsn, s.__seqval) > (r.__lsn, r.__seqval)));

-- name: delete_superseded_before
-- At or below lo (compacted by an earlier pass): rows of the keys changed in (lo, hi]
-- that a newer row at or below the horizon now supersedes (one per key at most).
DELETE FROM {table} AS r
WHERE (r.__lsn, r.__seqval) <= (%(lo_lsn)s, %(lo_seq)s)
  AND ({keys}) IN (
        SELECT {keys} FROM {table}
        WHERE (__lsn, __seqval) > (%(lo_lsn)s, %(lo_seq)s) AND (__lsn, __seqval) <= (%(hi_lsn)s, %(hi_seq)s)
          AND __lsn <= %(horizon)s AND __op <> 3)
  AND EXISTS (
        SELECT 1 FROM {table} AS s
        WHERE {match} AND s.__op <> 3 AND s.__lsn <= %(horizon)s
          AND (s.__lsn, s.__seqval) > (r.__lsn, r.__seqval));

-- name: delete_lone_deletes
-- A delete in (lo, hi] that is the only row left of its key: the key is absent either
-- way, so no rebuild needs it (a later insert of the key is a row of its own).
DELETE FROM {table} AS r
WHERE (r.__lsn, r.__seqval) > (%(lo_lsn)s, %(lo_seq)s) AND (r.__lsn, r.__seqval) <= (%(hi_lsn)s, %(hi_seq)s)
  AND r.__lsn <= %(horizon)s AND r.__op = 1
  AND NOT EXISTS (
        SELECT 1 FROM {table} AS s
        WHERE {match} AND (s.__lsn, s.__seqval, s.__op) <> (r.__lsn, r.__seqval, r.__op));
