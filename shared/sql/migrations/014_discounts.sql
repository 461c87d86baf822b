-- Discounts: what the tills gave off the list price, (list_price - price) x quantity of each
-- sale (sales.list_price, migration 013), a measure of every rollup beside income. Returns leave
-- it as it was: a discount was given when the sale was made (the refund is what was charged).
-- Rows from before are 0: their sales were charged the list price.
ALTER TABLE store_monthly ADD COLUMN discounts bigint NOT NULL DEFAULT 0;
ALTER TABLE item_totals ADD COLUMN discounts bigint NOT NULL DEFAULT 0;
ALTER TABLE daily_totals ADD COLUMN discounts bigint NOT NULL DEFAULT 0;
ALTER TABLE store_item_daily ADD COLUMN discounts bigint NOT NULL DEFAULT 0;
ALTER TABLE hourly_totals ADD COLUMN discounts bigint NOT NULL DEFAULT 0;
ALTER TABLE store_hourly ADD COLUMN discounts bigint NOT NULL DEFAULT 0;
ALTER TABLE store_running ADD COLUMN discounts bigint NOT NULL DEFAULT 0;
ALTER TABLE item_running ADD COLUMN discounts bigint NOT NULL DEFAULT 0;
ALTER TABLE store_running_late ADD COLUMN discounts bigint NOT NULL DEFAULT 0;
ALTER TABLE item_running_late ADD COLUMN discounts bigint NOT NULL DEFAULT 0;
ALTER TABLE chain_deltas ADD COLUMN discounts bigint NOT NULL DEFAULT 0;
ALTER TABLE store_monthly_archived ADD COLUMN discounts bigint NOT NULL DEFAULT 0;
ALTER TABLE item_totals_archived ADD COLUMN discounts bigint NOT NULL DEFAULT 0;
ALTER TABLE daily_totals_archived ADD COLUMN discounts bigint NOT NULL DEFAULT 0;
ALTER TABLE store_item_daily_archived ADD COLUMN discounts bigint NOT NULL DEFAULT 0;
ALTER TABLE hourly_totals_archived ADD COLUMN discounts bigint NOT NULL DEFAULT 0;
ALTER TABLE store_hourly_archived ADD COLUMN discounts bigint NOT NULL DEFAULT 0;

-- The running totals carry it forward and rebuild it too (009's and 010's functions, with it).
CREATE OR REPLACE FUNCTION running_extend(through date) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    last date;
BEGIN
    IF (SELECT running_through >= through FROM report_settings) THEN
        RETURN;  -- the common case: no lock
    END IF;
    PERFORM pg_advisory_xact_lock(370222);
    SELECT running_through INTO last FROM report_settings;
    IF last >= through THEN
        RETURN;
    END IF;
    IF last IS NOT NULL THEN
        INSERT INTO store_running (day, store_id, income, units, sales, returns, refunds, discounts)
        SELECT last + g.n, r.store_id, r.income, r.units, r.sales, r.returns, r.refunds, r.discounts
        FROM store_running r CROSS JOIN generate_series(1, through - last) AS g(n)
        WHERE r.day = last;
        INSERT INTO item_running (day, item_id, income, units, sales, returns, refunds, discounts)
        SELECT last + g.n, r.item_id, r.income, r.units, r.sales, r.returns, r.refunds, r.discounts
        FROM item_running r CROSS JOIN generate_series(1, through - last) AS g(n)
        WHERE r.day = last;
    END IF;
    UPDATE report_settings SET running_through = greatest(running_through, through);
END
$$;


CREATE OR REPLACE FUNCTION running_rebuild(horizon integer DEFAULT 731) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    through date;
    since date;
    earliest date;
BEGIN
    TRUNCATE store_running, item_running, store_running_late, item_running_late;
    SELECT greatest(running_through, (SELECT max(day) FROM daily_totals)) INTO through FROM report_settings;
    UPDATE report_settings SET running_through = through;
    IF through IS NULL THEN
        RETURN;
    END IF;
    since := through - horizon;
    INSERT INTO store_running_late (day, store_id, income, units, sales, returns, refunds, discounts)
    SELECT day, store_id, income, units, sales, returns, refunds, discounts FROM daily_totals WHERE day < since
    ORDER BY 1, 2;
    INSERT INTO item_running_late (day, item_id, income, units, sales, returns, refunds, discounts)
    SELECT day, item_id, sum(income), sum(units), sum(sales), sum(returns), sum(refunds), sum(discounts)
    FROM store_item_daily WHERE day < since GROUP BY 1, 2 ORDER BY 1, 2;
    SELECT min(day) INTO earliest FROM daily_totals WHERE day >= since;
    IF earliest IS NULL THEN
        RETURN;
    END IF;
    -- Every day from the first sale on, joined to each key from its own first day: not a
    -- LATERAL series per key, which Citus cannot push down to the shards.
    INSERT INTO store_running (day, store_id, income, units, sales, returns, refunds, discounts)
    SELECT g.day, k.store_id, sum(coalesce(d.income, 0)) OVER w, sum(coalesce(d.units, 0)) OVER w,
           sum(coalesce(d.sales, 0)) OVER w, sum(coalesce(d.returns, 0)) OVER w, sum(coalesce(d.refunds, 0)) OVER w,
           sum(coalesce(d.discounts, 0)) OVER w
    FROM (SELECT store_id, min(day) AS first_day FROM daily_totals WHERE day >= since GROUP BY store_id) k
    JOIN (SELECT earliest + n AS day FROM generate_series(0, through - earliest) AS n) g ON g.day >= k.first_day
    LEFT JOIN daily_totals d ON d.store_id = k.store_id AND d.day = g.day
    WINDOW w AS (PARTITION BY k.store_id ORDER BY g.day)
    ORDER BY 1, 2;  -- day by day: a report reads one day's rows, together on few pages
    INSERT INTO item_running (day, item_id, income, units, sales, returns, refunds, discounts)
    SELECT g.day, k.item_id, sum(coalesce(d.income, 0)) OVER w, sum(coalesce(d.units, 0)) OVER w,
           sum(coalesce(d.sales, 0)) OVER w, sum(coalesce(d.returns, 0)) OVER w, sum(coalesce(d.refunds, 0)) OVER w,
           sum(coalesce(d.discounts, 0)) OVER w
    FROM (SELECT item_id, min(day) AS first_day FROM store_item_daily WHERE day >= since GROUP BY item_id) k
    JOIN (SELECT earliest + n AS day FROM generate_series(0, through - earliest) AS n) g ON g.day >= k.first_day
    LEFT JOIN (SELECT day, item_id, sum(income) AS income, sum(units) AS units, sum(sales) AS sales,
                      sum(returns) AS returns, sum(refunds) AS refunds,
                      sum(discounts) AS discounts
               FROM store_item_daily WHERE day >= since GROUP BY day, item_id) d
           ON d.item_id = k.item_id AND d.day = g.day
    WINDOW w AS (PARTITION BY k.item_id ORDER BY g.day)
    ORDER BY 1, 2;
END
$$;
