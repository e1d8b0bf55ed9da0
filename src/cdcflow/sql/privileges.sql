-- What bootstrap checks before it touches anything: does each role have what it needs?

-- name: source_role
-- The source role's attributes, and whether it may create a publication in this database.
SELECT quote_ident(current_user), r.rolsuper, r.rolreplication, quote_ident(current_database()),
       has_database_privilege(current_database(), 'CREATE'), quote_ident(%(publication)s)
FROM pg_roles r WHERE r.rolname = current_user;

-- name: captured_tables
-- Each captured table that exists (quoted as SQL needs it): schema USAGE, table SELECT, and
-- ownership (membership in the owning role counts), with the owner's name.
SELECT quote_ident(t.s), quote_ident(t.s) || '.' || quote_ident(t.r), has_schema_privilege(n.oid, 'USAGE'), has_table_privilege(c.oid, 'SELECT'),
       pg_has_role(c.relowner, 'USAGE'), pg_get_userbyid(c.relowner)
FROM unnest(%(schemas)s::text[], %(tables)s::text[]) WITH ORDINALITY AS t(s, r, i)
JOIN pg_namespace n ON n.nspname = t.s
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.r AND c.relkind IN ('r', 'p')
ORDER BY t.i;

-- name: publication
-- The publication, if it exists: do we own it, does it publish every table, which tables.
SELECT pg_has_role(p.pubowner, 'USAGE'), pg_get_userbyid(p.pubowner), p.puballtables,
       ARRAY(SELECT quote_ident(pt.schemaname) || '.' || quote_ident(pt.tablename) FROM pg_publication_tables pt
             WHERE pt.pubname = p.pubname)
FROM pg_publication p WHERE p.pubname = %(publication)s;

-- name: serving_role
-- The serving role, the schema cdcflow's tables go to, and whether it may create there.
SELECT quote_ident(current_user), r.rolsuper, quote_ident(current_schema()),
       current_schema() IS NOT NULL AND has_schema_privilege(current_schema(), 'CREATE'),
       quote_ident(current_database())
FROM pg_roles r WHERE r.rolname = current_user;

-- name: foreign_owned_tables
-- cdcflow's tables in that schema that the serving role does not own.
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), pg_get_userbyid(c.relowner)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
  AND (left(c.relname, 4) IN ('ctl_', 'pst_') OR left(c.relname, 5) = 'proj_' OR left(c.relname, 8) = 'stg_cdc_')
  AND NOT pg_has_role(c.relowner, 'USAGE')
ORDER BY 1;
