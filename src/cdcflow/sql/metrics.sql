-- Cheap queries the metrics sampler runs about once a second (short statement timeout).

-- name: source_position
-- PostgreSQL source: the newest WAL position and the WAL our slot keeps on disk.
SELECT pg_current_wal_lsn()::text,
       (SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint
        FROM pg_replication_slots WHERE slot_name = %(slot)s);

-- name: projection_positions
-- Every projection's status and position (as_of_lsn: it reflects every change up to it).
SELECT projection_name, status, as_of_lsn FROM ctl_projection_metadata ORDER BY projection_name;
