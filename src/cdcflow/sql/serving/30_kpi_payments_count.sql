-- proj_orders_kpi_by_minute_segment keeps its own count of contributing payments
-- (idempotent). A bucket exists exactly while an order or a payment contributes to it,
-- so a cycle needs that count beside the sums; it used to live in a copy of every bucket
-- (pst_kpi_buckets), written twice per touched bucket. One table halves those writes.
--
-- payments_count: live payments of live orders paid in that minute whose order's
-- customer is in that segment (what paid_amount_sum adds up).
ALTER TABLE proj_orders_kpi_by_minute_segment ADD COLUMN IF NOT EXISTS payments_count bigint NOT NULL DEFAULT 0;

-- An existing deployment: move the counts over, then drop the copy. Both tables hold the
-- same buckets (one transaction always wrote both).
DO $$
BEGIN
    IF to_regclass('pst_kpi_buckets') IS NOT NULL THEN
        UPDATE proj_orders_kpi_by_minute_segment p SET payments_count = b.payments_count
        FROM pst_kpi_buckets b
        WHERE p.minute_bucket = b.minute_bucket AND p.segment = b.segment AND p.payments_count <> b.payments_count;
        DROP TABLE pst_kpi_buckets;
    END IF;
END
$$;
