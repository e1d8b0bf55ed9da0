-- The projections' own tables are made by the engine from their definitions (each
-- proj_<name> and its state, pst_<name>__...). A serving database of a release whose two
-- projections were hand-written modules kept their state in these tables; its projections
-- are rebuilt from staging by their SQL definitions (a definition with no digest yet), so
-- this state is dropped (idempotent).
DROP TABLE IF EXISTS pst_kpi_customers, pst_kpi_orders, pst_kpi_payments, pst_kpi_buckets, pst_latest_customers;
