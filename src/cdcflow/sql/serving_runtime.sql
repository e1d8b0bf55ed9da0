-- Queries the workers run against the serving database.

-- name: ensure_watermark
-- A control row per capture, created if missing (never reset if present).
INSERT INTO ctl_ingestion_watermarks (source_name, capture_instance, engine, source_table, staging_table)
VALUES (%(source)s, %(capture)s, %(engine)s, %(source_table)s, %(staging_table)s)
ON CONFLICT (source_name, capture_instance) DO NOTHING;

-- name: read_watermarks
-- Every capture of a source with its position and state.
SELECT capture_instance, last_lsn, state, gap_from_lsn, gap_to_lsn, last_error, rows_staged,
       last_commit_time, updated_at, engine, source_table, staging_table, backfill_from_lsn
FROM ctl_ingestion_watermarks
WHERE source_name = %(source)s
ORDER BY capture_instance;

-- name: advance_watermarks
-- After staging a batch: move the watermark of each listed capture and count its rows,
-- but only from the watermark the batch was read after (%(expected)s, one per capture):
-- one that moved meanwhile (reset, resync) or was stopped (GAP, PAUSED) is left alone,
-- and the caller, counting the rows updated, rolls the batch back. The guard on last_lsn
-- keeps a watermark from ever moving back.
UPDATE ctl_ingestion_watermarks AS w
SET last_lsn = %(lsn)s,
    last_commit_time = coalesce(%(commit_time)s, w.last_commit_time),
    rows_staged = w.rows_staged + d.rows,
    -- a capture being backfilled streams too, and stays BACKFILL (or INIT) until its rows are in
    state = CASE WHEN w.state IN ('INIT', 'BACKFILL') THEN w.state ELSE 'OK' END,
    last_error = CASE WHEN w.state IN ('INIT', 'BACKFILL') THEN w.last_error END,
    updated_at = now()
FROM unnest(%(captures)s::text[], %(rows)s::bigint[], %(expected)s::numeric[]) AS d(capture, rows, expected)
WHERE w.source_name = %(source)s
  AND w.capture_instance = d.capture
  AND w.last_lsn = d.expected
  AND w.last_lsn <= %(lsn)s
  AND w.state NOT IN ('GAP', 'PAUSED');

-- name: set_capture_state
-- Record a capture's state (GAP, PAUSED, ERROR, OK) with its reason and range.
UPDATE ctl_ingestion_watermarks
SET state = %(state)s, last_error = %(error)s, gap_from_lsn = %(gap_from)s,
    gap_to_lsn = %(gap_to)s, updated_at = now()
WHERE source_name = %(source)s AND capture_instance = %(capture)s;

-- name: set_capture_error
-- A transient failure: keep the state, remember the error for status.
UPDATE ctl_ingestion_watermarks
SET last_error = %(error)s, updated_at = now()
WHERE source_name = %(source)s AND capture_instance = ANY(%(captures)s::text[]);

-- name: notify_staged
-- Wake projection workers in other processes (delivered at commit).
SELECT pg_notify('cdcflow_staged', %(source)s);

-- name: carry_unchanged
-- TOAST: an update that did not resend an unchanged column takes it from the previous
-- staged version of the same key (placeholders {table}, {column}, {key_match}).
UPDATE {table} AS cur
SET {column} = (
    SELECT prev.{column} FROM {table} AS prev
    WHERE {key_match}
      AND (prev.__lsn, prev.__seqval) < (cur.__lsn, cur.__seqval)
      AND prev.__op <> 3
    ORDER BY prev.__lsn DESC, prev.__seqval DESC
    LIMIT 1)
WHERE cur.__lsn = %(lsn)s AND cur.__seqval = %(seqval)s AND cur.__op = %(op)s;

-- name: create_staging
-- A staging table for one captured table: cdcflow's position columns, then the
-- source's columns with their source types. Each change is staged once: the
-- position (commit LSN, order in the transaction, op) is the primary key.
CREATE TABLE IF NOT EXISTS {table} (
    __lsn          numeric(25,0) NOT NULL,
    __seqval       numeric(25,0) NOT NULL,
    __op           smallint      NOT NULL,
    __commit_time  timestamptz,
    {columns},
    __staged_at    timestamptz   NOT NULL DEFAULT now(),
    CONSTRAINT {pk} PRIMARY KEY (__lsn, __seqval, __op)
);

-- name: create_staging_key_index
-- Latest version of a key by an index read (projections, TOAST carry-forward).
CREATE INDEX IF NOT EXISTS {index} ON {table} ({keys}, __lsn DESC, __seqval DESC);

-- name: staging_columns
-- The columns a staging table has now (to detect a mismatch with the source).
SELECT a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_attribute a
WHERE a.attrelid = to_regclass(%(table)s) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum;

-- name: watermarks_after_snapshot
-- A snapshot (initial or resync) staged: every listed capture restarts from its position.
UPDATE ctl_ingestion_watermarks AS w
SET last_lsn = %(lsn)s,
    rows_staged = w.rows_staged + d.rows,
    state = 'OK', last_error = NULL, gap_from_lsn = NULL, gap_to_lsn = NULL, backfill_from_lsn = NULL,
    updated_at = now()
FROM unnest(%(captures)s::text[], %(rows)s::bigint[]) AS d(capture, rows)
WHERE w.source_name = %(source)s AND w.capture_instance = d.capture;

-- name: stage_vanished_deletes
-- Resync: a key whose latest staged state is live but that the fresh snapshot (its rows
-- staged at or after snapshot_from) does not have was deleted during the gap; stage its
-- delete at the given position.
INSERT INTO {table} (__lsn, __seqval, __op, __commit_time, {keys})
SELECT %(lsn)s, %(base)s + row_number() OVER (), 1, NULL, {k_keys}
FROM (
    SELECT DISTINCT ON ({keys}) {keys}, __op
    FROM {table}
    WHERE __lsn < %(lsn)s AND __lsn <= %(history)s AND __op <> 3
    ORDER BY {keys}, __lsn DESC, __seqval DESC
) AS k
WHERE k.__op <> 1
  AND NOT EXISTS (SELECT 1 FROM {table} AS s WHERE s.__lsn >= %(snapshot_from)s AND s.__op = 5 AND {match});

-- name: cdcflow_tables
-- Staging, projection and projection-state tables in the serving database (for reset).
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname = current_schema()
  AND (left(c.relname, 5) = 'proj_' OR left(c.relname, 4) = 'pst_' OR c.relname = ANY(%(staging)s::text[]))
ORDER BY 1;

-- name: reset_watermarks
-- Reset: every capture of the source back to "nothing staged".
UPDATE ctl_ingestion_watermarks
SET last_lsn = 0, last_commit_time = NULL, rows_staged = 0, state = 'INIT', last_error = NULL,
    gap_from_lsn = NULL, gap_to_lsn = NULL, backfill_from_lsn = NULL, updated_at = now()
WHERE source_name = %(source)s;

-- name: reset_backfills
-- Reset: no backfill is in flight.
WITH chunks AS (DELETE FROM ctl_backfill_chunks WHERE source_name = %(source)s),
     unchanged AS (
         DELETE FROM ctl_unchanged_pending
         WHERE staging_table IN (SELECT staging_table FROM ctl_ingestion_watermarks WHERE source_name = %(source)s)
     )
DELETE FROM ctl_backfills WHERE source_name = %(source)s;

-- name: reset_checkpoints
-- Reset: projections start over.
UPDATE ctl_projection_checkpoints SET last_lsn = 0, updated_at = now() WHERE source_name = %(source)s;

-- name: reset_metadata
-- Reset: projections say INIT until their first cycle.
UPDATE ctl_projection_metadata
SET status = 'INIT', as_of_lsn = NULL, as_of_time = NULL, built_at = NULL, last_error = NULL,
    restated_buckets = 0, updated_at = now();

-- name: create_schema_version
-- Which version of the serving scripts this database has (so a restart runs no DDL).
CREATE TABLE IF NOT EXISTS ctl_schema_version (
    folder      text PRIMARY KEY,
    digest      text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- name: schema_digest
-- The digest of the scripts last applied.
SELECT digest FROM ctl_schema_version WHERE folder = %(folder)s;

-- name: set_schema_digest
-- Remember the scripts just applied.
INSERT INTO ctl_schema_version (folder, digest) VALUES (%(folder)s, %(digest)s)
ON CONFLICT (folder) DO UPDATE SET digest = excluded.digest, applied_at = now();

-- name: backfill_begin
-- A capture's backfill starts: it streams from now on (BACKFILL), and its staged history
-- ends at backfill_from_lsn (kept from an earlier attempt that did not finish).
UPDATE ctl_ingestion_watermarks
SET state = 'BACKFILL',
    backfill_from_lsn = coalesce(backfill_from_lsn, CASE WHEN state = 'INIT' THEN 0 ELSE last_lsn END),
    last_error = %(why)s, gap_from_lsn = NULL, gap_to_lsn = NULL, updated_at = now()
WHERE source_name = %(source)s AND capture_instance = %(capture)s
RETURNING backfill_from_lsn, last_lsn;

-- name: backfill_progress
-- The backfill in flight: position and rows copied so far (its own short transaction).
INSERT INTO ctl_backfills AS b (source_name, capture_instance, snapshot_lsn, rows_done, rows_estimate, rows_resumed)
VALUES (%(source)s, %(capture)s, %(lsn)s, %(rows)s, %(estimate)s, %(resumed)s)
ON CONFLICT (source_name, capture_instance) DO UPDATE
SET snapshot_lsn = excluded.snapshot_lsn, rows_done = excluded.rows_done,
    rows_estimate = excluded.rows_estimate, rows_resumed = excluded.rows_resumed, updated_at = now(),
    started_at = CASE WHEN b.snapshot_lsn IS DISTINCT FROM excluded.snapshot_lsn THEN now() ELSE b.started_at END;

-- name: read_backfills
-- Backfills in flight (status).
SELECT capture_instance, snapshot_lsn, rows_done, rows_estimate, started_at, updated_at, rows_resumed
FROM ctl_backfills WHERE source_name = %(source)s ORDER BY capture_instance;

-- name: backfill_lock
-- The snapshot's rows are staged: take the capture's row (ingestion's batches that stage
-- this capture wait from here to the commit) and move its watermark to the snapshot, so
-- that a batch read before now, which may hold changes the snapshot has, rolls back.
-- Also returns the new watermark and the lowest of the source's streaming captures: below
-- it, some batch after the snapshot did not carry this capture.
UPDATE ctl_ingestion_watermarks AS w
SET last_lsn = greatest(w.last_lsn, %(lsn)s), updated_at = now()
WHERE w.source_name = %(source)s AND w.capture_instance = %(capture)s AND w.state = 'BACKFILL'
RETURNING w.backfill_from_lsn, w.last_lsn,
    (SELECT min(o.last_lsn) FROM ctl_ingestion_watermarks AS o
     WHERE o.source_name = w.source_name AND o.capture_instance <> w.capture_instance AND o.state = 'OK');

-- name: backfill_drop_streamed
-- Changes streamed during the backfill that the snapshot already holds: those after the
-- capture's staged history and before the snapshot's position (at which only its own rows are).
DELETE FROM {table} WHERE __lsn > %(history)s AND __lsn < %(lsn)s;

-- name: backfill_done
-- The backfill commits: the capture is complete again.
UPDATE ctl_ingestion_watermarks
SET state = 'OK', last_error = NULL, backfill_from_lsn = NULL, rows_staged = rows_staged + %(rows)s,
    updated_at = now()
WHERE source_name = %(source)s AND capture_instance = %(capture)s;

-- name: backfill_forget
-- The backfill's progress row and chunk records go with it.
WITH chunks AS (
    DELETE FROM ctl_backfill_chunks WHERE source_name = %(source)s AND capture_instance = %(capture)s
)
DELETE FROM ctl_backfills WHERE source_name = %(source)s AND capture_instance = %(capture)s;

-- name: read_backfill_chunks
-- The chunks of a capture's copy done so far: block range and rows.
SELECT first_block, last_block, rows FROM ctl_backfill_chunks
WHERE source_name = %(source)s AND capture_instance = %(capture)s ORDER BY first_block;

-- name: backfill_chunk_positions
-- The lowest and highest snapshot positions of a capture's chunks.
SELECT min(snapshot_lsn), max(snapshot_lsn) FROM ctl_backfill_chunks
WHERE source_name = %(source)s AND capture_instance = %(capture)s;

-- name: backfill_record_chunk
-- A chunk is staged (in the transaction that staged it).
INSERT INTO ctl_backfill_chunks (source_name, capture_instance, first_block, last_block, snapshot_lsn, rows)
VALUES (%(source)s, %(capture)s, %(first)s, %(last)s, %(lsn)s, %(rows)s);

-- name: backfill_count_rows
-- Rows staged (or dropped) for a capture being copied; no row updated: it left BACKFILL.
UPDATE ctl_ingestion_watermarks SET rows_staged = rows_staged + %(rows)s, updated_at = now()
WHERE source_name = %(source)s AND capture_instance = %(capture)s AND state = 'BACKFILL';

-- name: backfill_restart
-- A copy that must start over: its chunks are forgotten (its rows are dropped before the next first chunk).
DELETE FROM ctl_backfill_chunks WHERE source_name = %(source)s AND capture_instance = %(capture)s;

-- name: bulk_index_memory
-- For the rest of the transaction, index builds sort in at least 256MB of memory.
SELECT set_config(
    'maintenance_work_mem',
    (greatest(pg_size_bytes(current_setting('maintenance_work_mem')), 256 * 1024 * 1024) / 1024)::bigint || 'kB',
    true
);

-- name: staging_has_primary_key
-- Whether a staging table has its primary key (a bulk load drops it for a while).
SELECT EXISTS (
    SELECT 1 FROM pg_constraint
    WHERE conrelid = to_regclass(quote_ident(%(table)s)) AND contype = 'p'
);

-- name: snapshot_begin
-- A snapshot of every capture begins at a new slot's position: each is copied from here
-- (BACKFILL), its staged history kept as where it ends, and streams from the position.
UPDATE ctl_ingestion_watermarks
SET state = 'BACKFILL', last_error = %(why)s, last_lsn = %(lsn)s,
    backfill_from_lsn = coalesce(backfill_from_lsn, CASE WHEN state = 'INIT' THEN 0 ELSE last_lsn END),
    gap_from_lsn = NULL, gap_to_lsn = NULL, updated_at = now()
WHERE source_name = %(source)s AND capture_instance = ANY(%(captures)s::text[])
RETURNING capture_instance, backfill_from_lsn;

-- name: copy_try_lock
-- The right to copy one capture's table (session advisory lock), if free.
SELECT pg_try_advisory_lock(hashtextextended(%(key)s, 0));

-- name: copy_lock
-- The right to copy one capture's table, waiting for it.
SELECT pg_advisory_lock(hashtextextended(%(key)s, 0));

-- name: remember_unchanged
-- A row staged for a capture being copied, whose TOAST columns were not resent.
INSERT INTO ctl_unchanged_pending (staging_table, lsn, seqval, op, columns)
VALUES (%(table)s, %(lsn)s, %(seqval)s, %(op)s, %(columns)s)
ON CONFLICT DO NOTHING;

-- name: read_unchanged
-- The rows of a staging table whose TOAST columns are to be taken again, in stream order.
SELECT lsn, seqval, op, columns FROM ctl_unchanged_pending
WHERE staging_table = %(table)s ORDER BY lsn, seqval, op;

-- name: backfill_unbased_keys
-- Keys of a capture being copied whose TOAST values nothing staged holds: a row streamed
-- without some of them (ctl_unchanged_pending) that no version staged at or after the copy's
-- first position precedes (an update moved the row, between two attempts of the copy, from
-- blocks not yet copied into blocks already copied: neither snapshot had it), and that no
-- later copied row, insert or delete of its key replaces. Key values as text
-- (placeholders {table}, {keys}: cur.k::text, ..., {prev_match}, {next_match}).
SELECT DISTINCT {keys}
FROM ctl_unchanged_pending AS p
JOIN {table} AS cur ON cur.__lsn = p.lsn AND cur.__seqval = p.seqval AND cur.__op = p.op
WHERE p.staging_table = %(table)s
  AND NOT EXISTS (
      SELECT 1 FROM {table} AS prev
      WHERE {prev_match} AND prev.__lsn >= %(first)s AND prev.__op <> 3
        AND (prev.__lsn, prev.__seqval) < (cur.__lsn, cur.__seqval))
  AND NOT EXISTS (
      SELECT 1 FROM {table} AS nxt
      WHERE {next_match} AND nxt.__op IN (1, 2, 5)
        AND (nxt.__lsn, nxt.__seqval) > (cur.__lsn, cur.__seqval));

-- name: forget_unchanged
-- Their values are taken again.
DELETE FROM ctl_unchanged_pending WHERE staging_table = %(table)s;

-- name: wait_for_copy_completion
-- A batch about to carry TOAST values for a capture being copied: waits while the copy's
-- completion (which locks the capture's row) commits, so that it carries from the values
-- the completion carried again; and keeps it from starting until this batch commits.
SELECT state FROM ctl_ingestion_watermarks
WHERE source_name = %(source)s AND capture_instance = %(capture)s
FOR SHARE;
