-- The serving catalog as projection definitions see it.

-- name: captures
-- Every capture of the source, with its source and staging table.
SELECT source_table, capture_instance, staging_table FROM ctl_ingestion_watermarks
WHERE source_name = %(source)s ORDER BY source_table;

-- name: columns
-- A staging table's columns with their types (format_type), in order.
SELECT a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_attribute a
WHERE a.attrelid = to_regclass(%(table)s) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum;

-- name: key_columns
-- A staging table's key columns, from its key index (<staging>_key_idx).
SELECT a.attname
FROM pg_index i
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[])
WHERE i.indexrelid = to_regclass(%(index)s) AND a.attname NOT IN ('__lsn', '__seqval')
ORDER BY array_position(i.indkey::int2[], a.attnum);

-- name: probe_types
-- The columns of a scratch table made from a query (its names and exact types).
SELECT a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_attribute a
WHERE a.attrelid = 'pg_temp.cdcflow_probe'::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum;
