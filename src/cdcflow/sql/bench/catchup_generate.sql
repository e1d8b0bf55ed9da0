-- Catch-up benchmark: pre-generate changes in the demo schema, set-based, many transactions.
--
-- One loop iteration is one source transaction of about 2.4 * unit row changes:
--   orders:    unit inserts, 0.45 unit updates, 0.02 unit deletes (of the previous transaction's orders)
--   payments:  0.8 unit inserts, 0.05 unit updates, 0.02 unit deletes (of the previous transaction's payments)
--   customers: 0.02 unit inserts and segment changes (at least 1 each), 1 delete every 10 transactions
-- Counts are taken from the statements (GET DIAGNOSTICS), so the caller knows exactly how
-- many changes were made. Transaction control needs CALL outside a transaction block.

CREATE OR REPLACE PROCEDURE cdcflow_bench_generate(
    txns integer, unit integer,
    INOUT ins bigint DEFAULT 0, INOUT upd bigint DEFAULT 0, INOUT del bigint DEFAULT 0)
LANGUAGE plpgsql AS $$
DECLARE
    n_c   integer := greatest(1, unit / 50);
    n_upd integer := (unit * 45) / 100;
    n_pay integer := (unit * 80) / 100;
    n_pup integer := greatest(1, unit / 20);
    n_del integer := greatest(1, unit / 50);
    o_lo bigint; c_lo bigint; p_lo bigint;
    prev_o bigint; prev_c bigint; prev_p bigint;
    n bigint;
BEGIN
    FOR i IN 1..txns LOOP
        WITH x AS (
            INSERT INTO customers (segment)
            SELECT (ARRAY['ENTERPRISE', 'SMB', 'CONSUMER'])[1 + g % 3] FROM generate_series(1, n_c) AS g
            RETURNING customer_id)
        SELECT min(customer_id), count(*) INTO c_lo, n FROM x;
        ins := ins + n;

        WITH x AS (
            INSERT INTO orders (customer_id, amount, status)
            SELECT c_lo + g % n_c, (5 + (g * 7919) % 49500 / 100.0)::numeric(18,2), 'NEW'
            FROM generate_series(1, unit) AS g
            RETURNING order_id)
        SELECT min(order_id), count(*) INTO o_lo, n FROM x;
        ins := ins + n;

        UPDATE orders SET status = 'PAID', amount = amount + 1, updated_at = now()
        WHERE order_id BETWEEN o_lo AND o_lo + n_upd - 1;
        GET DIAGNOSTICS n = ROW_COUNT;
        upd := upd + n;

        WITH x AS (
            INSERT INTO payments (order_id, paid_amount)
            SELECT order_id, amount FROM orders WHERE order_id BETWEEN o_lo AND o_lo + n_pay - 1
            RETURNING payment_id)
        SELECT min(payment_id), count(*) INTO p_lo, n FROM x;
        ins := ins + n;

        UPDATE payments SET paid_amount = paid_amount + 0.01 WHERE payment_id BETWEEN p_lo AND p_lo + n_pup - 1;
        GET DIAGNOSTICS n = ROW_COUNT;
        upd := upd + n;

        UPDATE customers SET segment = 'ENTERPRISE', updated_at = now() WHERE customer_id BETWEEN c_lo AND c_lo + n_c - 1;
        GET DIAGNOSTICS n = ROW_COUNT;
        upd := upd + n;

        IF prev_o IS NOT NULL THEN
            DELETE FROM orders WHERE order_id BETWEEN prev_o + n_upd AND prev_o + n_upd + n_del - 1;
            GET DIAGNOSTICS n = ROW_COUNT;
            del := del + n;
            DELETE FROM payments WHERE payment_id BETWEEN prev_p + n_pup AND prev_p + n_pup + n_del - 1;
            GET DIAGNOSTICS n = ROW_COUNT;
            del := del + n;
            IF i % 10 = 0 THEN
                DELETE FROM customers WHERE customer_id = prev_c;
                GET DIAGNOSTICS n = ROW_COUNT;
                del := del + n;
            END IF;
        END IF;
        prev_o := o_lo; prev_c := c_lo; prev_p := p_lo;
        COMMIT;
    END LOOP;
END
$$;
