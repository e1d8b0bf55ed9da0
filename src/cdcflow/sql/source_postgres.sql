-- Queries cdcflow runs against a PostgreSQL source (regular, non-replication connection).

-- name: server_settings
-- wal_level and server version, checked before anything else.
SELECT current_setting('wal_level') AS wal_level,
       current_setting('server_version_num')::int AS version_num,
       current_database() AS dbname;

-- name: table_columns
-- Columns of a captured table in attribute order (what pgoutput sends), with key flags:
-- the primary key, or else the replica identity index. type_sql is the type staging uses:
-- the column's own when it is built in; for a domain, the built-in type under it; else
-- (enum, composite, range or extension type, their arrays) text, which holds the value as
-- the source prints it. source_type and kind (pg_type.typtype) say what it was.
SELECT a.attname AS name,
       CASE
           WHEN a.atttypid < 16384 THEN format_type(a.atttypid, a.atttypmod)
           WHEN dom.base IS NOT NULL AND dom.base < 16384 THEN format_type(dom.base, dom.typmod)
           ELSE 'text'
       END AS type_sql,
       coalesce(a.attnum = ANY (k.indkey::int2[]), false) AS is_key,
       c.relreplident AS replident,
       a.atttypid::int AS type_oid,
       format_type(a.atttypid, a.atttypmod) AS source_type,
       t.typtype::text AS kind
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN LATERAL (
    SELECT i.indkey FROM pg_index i
    WHERE i.indrelid = c.oid AND (i.indisprimary OR i.indisreplident)
    ORDER BY i.indisprimary DESC LIMIT 1
) k ON true
LEFT JOIN LATERAL (
    -- a domain (over domains): the type at the bottom, with the typmod of the domain over it
    WITH RECURSIVE d (base, typmod, depth) AS (
        SELECT t.typbasetype, t.typtypmod, 0 WHERE t.typtype = 'd'
        UNION ALL
        SELECT b.typbasetype, b.typtypmod, d.depth + 1
        FROM d JOIN pg_type b ON b.oid = d.base WHERE b.typtype = 'd' AND d.depth < 16
    )
    SELECT base, typmod FROM d ORDER BY depth DESC LIMIT 1
) dom ON true
WHERE n.nspname = %(schema)s AND c.relname = %(table)s AND c.relkind IN ('r', 'p')
  AND a.attgenerated = ''
ORDER BY a.attnum;

-- name: slot_state
-- The replication slot as the server sees it.
SELECT slot_name, plugin, database, confirmed_flush_lsn::text AS confirmed_flush,
       restart_lsn::text AS restart_lsn, wal_status, active_pid
FROM pg_replication_slots WHERE slot_name = %(slot)s;

-- name: current_lsn
-- The newest WAL position.
SELECT pg_current_wal_lsn()::text;

-- name: position_and_retained_bytes
-- The newest WAL position and the WAL our slot keeps on disk (the metrics sampler's read).
SELECT pg_current_wal_lsn()::text,
       (SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint
        FROM pg_replication_slots WHERE slot_name = %(slot)s);

-- name: terminate_slot_reader
-- End a leftover walsender still holding our slot (a previous run of ours that died).
SELECT pg_terminate_backend(active_pid)
FROM pg_replication_slots WHERE slot_name = %(slot)s AND active_pid IS NOT NULL;

-- name: drop_slot
-- Drop the slot (only while no position of it was ever staged).
SELECT pg_drop_replication_slot(%(slot)s)
WHERE EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = %(slot)s);

-- name: types_without_binary_io
-- Of these type OIDs, how many cannot travel in binary (no send or receive function).
SELECT count(*) FROM pg_type
WHERE oid = ANY(%(oids)s::oid[]) AND (typsend::oid = 0 OR typreceive::oid = 0);

-- name: estimate_rows
-- The planner's row count of a table (for a backfill's progress; -1 or 0: never analysed).
SELECT c.reltuples::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relname = %(table)s;

-- name: table_blocks
-- A table's heap blocks now (its largest partition's, for a partitioned table) and the
-- planner's rows per block (0: no statistics yet): how a copy splits it into chunks.
SELECT greatest(pg_relation_size(c.oid),
                coalesce((SELECT max(pg_relation_size(t.relid)) FROM pg_partition_tree(c.oid) AS t), 0))
         / current_setting('block_size')::bigint,
       CASE WHEN c.relpages > 0 AND c.reltuples > 0 THEN c.reltuples / c.relpages ELSE 0 END
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relname = %(table)s;
