-- Serving schema (idempotent): control tables. (Projection tables are made from their
-- definitions by the engine.)
-- Staging tables (stg_cdc_<table>) are created from the source's catalog by bootstrap,
-- so a fourth captured table needs configuration, not a new script.

CREATE TABLE IF NOT EXISTS ctl_ingestion_watermarks (
    source_name       text          NOT NULL,
    capture_instance  text          NOT NULL,
    engine            text          NOT NULL,
    source_table      text          NOT NULL,
    staging_table     text          NOT NULL,
    -- Every change of this capture with lsn <= last_lsn is staged.
    last_lsn          numeric(25,0) NOT NULL DEFAULT 0,
    -- Source commit time of the newest staged change (lag = now - this, under load).
    last_commit_time  timestamptz,
    rows_staged       bigint        NOT NULL DEFAULT 0,
    -- INIT (nothing staged yet), OK, GAP, PAUSED, ERROR
    state             text          NOT NULL DEFAULT 'INIT',
    gap_from_lsn      numeric(25,0),
    gap_to_lsn        numeric(25,0),
    last_error        text,
    updated_at        timestamptz   NOT NULL DEFAULT now(),
    PRIMARY KEY (source_name, capture_instance)
);

CREATE TABLE IF NOT EXISTS ctl_projection_checkpoints (
    projection_name   text          NOT NULL,
    source_name       text          NOT NULL,
    capture_instance  text          NOT NULL,
    last_lsn          numeric(25,0) NOT NULL DEFAULT 0,
    updated_at        timestamptz   NOT NULL DEFAULT now(),
    PRIMARY KEY (projection_name, source_name, capture_instance)
);

CREATE TABLE IF NOT EXISTS ctl_projection_metadata (
    projection_name   text          PRIMARY KEY,
    -- INIT, OK, ERROR, STALE
    status            text          NOT NULL DEFAULT 'INIT',
    as_of_lsn         numeric(25,0),
    as_of_time        timestamptz,
    built_at          timestamptz,
    last_error        text,
    restated_buckets  bigint        NOT NULL DEFAULT 0,
    rows_changed      bigint        NOT NULL DEFAULT 0,
    updated_at        timestamptz   NOT NULL DEFAULT now()
);

-- One owner per ingestion stream and per projection across 'cdcflow run' processes
-- (leases.py): the token grows on every change of owner; commits check it (fencing).
CREATE TABLE IF NOT EXISTS ctl_leases (
    resource     text        PRIMARY KEY,
    owner        text        NOT NULL,
    token        bigint      NOT NULL,
    expires_at   timestamptz NOT NULL,
    acquired_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    renewed_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
