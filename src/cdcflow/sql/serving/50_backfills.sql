-- Backfills (idempotent): a capture added to a running deployment, or resynced alone, has
-- its table's rows copied from a snapshot while every other capture keeps streaming.
-- backfill_from_lsn: the capture's watermark when its backfill began (its staged history
-- ends there; what is staged above it was streamed during the backfill).
ALTER TABLE ctl_ingestion_watermarks ADD COLUMN IF NOT EXISTS backfill_from_lsn numeric(25,0);

-- Progress of the backfill in flight, per capture, written outside its transaction so
-- that `cdcflow status` shows it; the row goes when the backfill commits.
CREATE TABLE IF NOT EXISTS ctl_backfills (
    source_name       text          NOT NULL,
    capture_instance  text          NOT NULL,
    snapshot_lsn      numeric(25,0),
    rows_done         bigint        NOT NULL DEFAULT 0,
    rows_estimate     bigint,
    started_at        timestamptz   NOT NULL DEFAULT now(),
    updated_at        timestamptz   NOT NULL DEFAULT now(),
    PRIMARY KEY (source_name, capture_instance)
);

-- Rows the copy in flight found done by earlier attempts (its rate counts the rest).
ALTER TABLE ctl_backfills ADD COLUMN IF NOT EXISTS rows_resumed bigint NOT NULL DEFAULT 0;

-- The chunks of a capture's copy already staged, each committed with its rows, so that a
-- copy that stopped resumes from them: a range of the table's heap blocks (last_block NULL:
-- to the end) and the snapshot position its rows were staged at.
CREATE TABLE IF NOT EXISTS ctl_backfill_chunks (
    source_name       text          NOT NULL,
    capture_instance  text          NOT NULL,
    first_block       bigint        NOT NULL,
    last_block        bigint,
    snapshot_lsn      numeric(25,0) NOT NULL,
    rows              bigint        NOT NULL,
    done_at           timestamptz   NOT NULL DEFAULT now(),
    PRIMARY KEY (source_name, capture_instance, first_block)
);

-- Rows staged while their capture's table was being copied whose TOAST columns the source
-- did not resend (an update that left them unchanged): the value was taken from the key's
-- previous staged version then, which the copy may not have staged yet. The backfill's
-- completion takes these values again, in stream order, and forgets the rows.
CREATE TABLE IF NOT EXISTS ctl_unchanged_pending (
    staging_table  text          NOT NULL,
    lsn            numeric(25,0) NOT NULL,
    seqval         numeric(25,0) NOT NULL,
    op             smallint      NOT NULL,
    columns        text[]        NOT NULL,
    PRIMARY KEY (staging_table, lsn, seqval, op)
);
