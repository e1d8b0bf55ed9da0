-- Projections defined by SQL files (idempotent): each projection's metadata remembers
-- which definition its rows and state were built from (a digest of the query as parsed),
-- and how it is maintained. A definition whose digest differs is rebuilt from staging.
ALTER TABLE ctl_projection_metadata ADD COLUMN IF NOT EXISTS definition_digest text;
ALTER TABLE ctl_projection_metadata ADD COLUMN IF NOT EXISTS mode text;
ALTER TABLE ctl_projection_metadata ADD COLUMN IF NOT EXISTS definition_file text;
