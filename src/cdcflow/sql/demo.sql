-- Queries behind the demo's live view (serving database).

-- name: capture_totals
-- Per capture: state, rows staged, source commit time of the newest staged change.
SELECT capture_instance, state, rows_staged, last_commit_time, updated_at
FROM ctl_ingestion_watermarks WHERE source_name = %(source)s ORDER BY capture_instance;

-- name: projections
-- Per projection: status and the source commit time it is current to.
SELECT projection_name, status, as_of_time, last_error FROM ctl_projection_metadata ORDER BY projection_name;

-- name: newest_kpi
-- The newest KPI rows.
SELECT minute_bucket, segment, orders_count, orders_amount_sum, paid_amount_sum
FROM proj_orders_kpi_by_minute_segment ORDER BY minute_bucket DESC, segment LIMIT %(limit)s;
