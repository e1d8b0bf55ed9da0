-- Queries behind the web console (serving database).

-- name: table_columns
-- A projection table's columns, in order.
SELECT a.attname FROM pg_attribute a
WHERE a.attrelid = to_regclass(quote_ident(%(table)s)) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum;

-- name: table_key
-- A projection table's key: its primary key, else its first unique index.
SELECT array_agg(a.attname ORDER BY k.ord)
FROM pg_index i
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = to_regclass(quote_ident(%(table)s)) AND (i.indisprimary OR i.indisunique)
GROUP BY i.indexrelid, i.indisprimary
ORDER BY i.indisprimary DESC, i.indexrelid
LIMIT 1;
