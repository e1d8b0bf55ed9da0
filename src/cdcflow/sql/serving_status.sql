-- Queries behind 'cdcflow status'.

-- name: projection_metadata
-- Every projection's health and position.
SELECT projection_name, status, as_of_lsn, as_of_time, built_at, last_error, restated_buckets, mode
FROM ctl_projection_metadata
ORDER BY projection_name;
