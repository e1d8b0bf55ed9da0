-- CDC enablement, part one: the publication that pgoutput streams (idempotent: bootstrap
-- creates it, or re-points an existing one at the configured tables).
-- Part two, the logical slot, is created by cdcflow over the replication protocol so that
-- it exports a snapshot for the consistent initial load (see sources/postgres.py).

-- name: publication_exists
-- Does the publication exist?
SELECT 1 FROM pg_publication WHERE pubname = %(publication)s;

-- name: create_publication
-- Publish every row change of the captured tables, truncates included (so we see them).
CREATE PUBLICATION {publication} FOR TABLE {tables}
    WITH (publish = 'insert, update, delete, truncate');

-- name: alter_publication
-- Re-point an existing publication at exactly the configured tables.
ALTER PUBLICATION {publication} SET TABLE {tables};

-- name: publication_tables
-- The tables a publication publishes now (to leave a correct one alone).
SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = %(publication)s;
