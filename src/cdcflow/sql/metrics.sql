-- Cheap queries the metrics sampler runs about once a second (short statement timeout).

-- name: projection_positions
-- Every projection's status and position (as_of_lsn: it reflects every change up to it).
SELECT projection_name, status, as_of_lsn FROM ctl_projection_metadata ORDER BY projection_name;
