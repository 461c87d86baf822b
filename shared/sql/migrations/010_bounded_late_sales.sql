-- Bounded cost per sale, whatever its sale_time (issue 21).
--
-- Until now a sale k days late added to k + 1 rows of store_running and item_running: one batch
-- of 1,000 sales dated 2000-01-02 wrote 9.8 million rows (3.3 GB). Now the running totals take
-- only sales of their last days (rollups.RUNNING_WINDOW_DAYS: at most that many rows + 1 per
-- key); an older sale adds to one row of its day in a "late" twin, and a period is
--
--     running(to) - running(from - 1) + the late rows of days from..to
--
-- The late rows are few: a sale a week late is rare, one a year late rarer. For every key and
-- day, running(day) + the late rows up to that day = everything sold up to that day
-- (rollups.drift checks exactly that).
CREATE TABLE store_running_late (
    day      date    NOT NULL,
    store_id integer NOT NULL REFERENCES store (id) ON DELETE CASCADE,
    income   bigint  NOT NULL,
    units    bigint  NOT NULL,
    sales    bigint  NOT NULL,
    returns  bigint  NOT NULL DEFAULT 0,
    refunds  bigint  NOT NULL DEFAULT 0,
    PRIMARY KEY (day, store_id)
);

CREATE TABLE item_running_late (
    day     date    NOT NULL,
    item_id integer NOT NULL REFERENCES item (id) ON DELETE CASCADE,
    income  bigint  NOT NULL,
    units   bigint  NOT NULL,
    sales   bigint  NOT NULL,
    returns bigint  NOT NULL DEFAULT 0,
    refunds bigint  NOT NULL DEFAULT 0,
    PRIMARY KEY (day, item_id)
);

CREATE TRIGGER store_running_late_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON store_running_late
    FOR EACH STATEMENT EXECUTE FUNCTION notify_reports_changed();
CREATE TRIGGER item_running_late_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON item_running_late
    FOR EACH STATEMENT EXECUTE FUNCTION notify_reports_changed();
ALTER TABLE store_running_late ENABLE ALWAYS TRIGGER store_running_late_changed;
ALTER TABLE item_running_late ENABLE ALWAYS TRIGGER item_running_late_changed;

-- The rebuild (reconcile --repair, a time-zone change) starts a key's running rows at its first
-- day within the last `horizon` days; the days before go to the late rows. Before, it started
-- them at the key's first sale ever: one sale dated 2000 gave its key 9,800 rows.
CREATE FUNCTION running_rebuild(horizon integer DEFAULT 731) RETURNS void LANGUAGE plpgsql AS $$
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
    INSERT INTO store_running_late (day, store_id, income, units, sales, returns, refunds)
    SELECT day, store_id, income, units, sales, returns, refunds FROM daily_totals WHERE day < since
    ORDER BY 1, 2;
    INSERT INTO item_running_late (day, item_id, income, units, sales, returns, refunds)
    SELECT day, item_id, sum(income), sum(units), sum(sales), sum(returns), sum(refunds)
    FROM store_item_daily WHERE day < since GROUP BY 1, 2 ORDER BY 1, 2;
    SELECT min(day) INTO earliest FROM daily_totals WHERE day >= since;
    IF earliest IS NULL THEN
        RETURN;
    END IF;
    -- Every day from the first sale on, joined to each key from its own first day: not a
    -- LATERAL series per key, which Citus cannot push down to the shards.
    INSERT INTO store_running (day, store_id, income, units, sales, returns, refunds)
    SELECT g.day, k.store_id, sum(coalesce(d.income, 0)) OVER w, sum(coalesce(d.units, 0)) OVER w,
           sum(coalesce(d.sales, 0)) OVER w, sum(coalesce(d.returns, 0)) OVER w, sum(coalesce(d.refunds, 0)) OVER w
    FROM (SELECT store_id, min(day) AS first_day FROM daily_totals WHERE day >= since GROUP BY store_id) k
    JOIN (SELECT earliest + n AS day FROM generate_series(0, through - earliest) AS n) g ON g.day >= k.first_day
    LEFT JOIN daily_totals d ON d.store_id = k.store_id AND d.day = g.day
    WINDOW w AS (PARTITION BY k.store_id ORDER BY g.day)
    ORDER BY 1, 2;  -- day by day: a report reads one day's rows, together on few pages
    INSERT INTO item_running (day, item_id, income, units, sales, returns, refunds)
    SELECT g.day, k.item_id, sum(coalesce(d.income, 0)) OVER w, sum(coalesce(d.units, 0)) OVER w,
           sum(coalesce(d.sales, 0)) OVER w, sum(coalesce(d.returns, 0)) OVER w, sum(coalesce(d.refunds, 0)) OVER w
    FROM (SELECT item_id, min(day) AS first_day FROM store_item_daily WHERE day >= since GROUP BY item_id) k
    JOIN (SELECT earliest + n AS day FROM generate_series(0, through - earliest) AS n) g ON g.day >= k.first_day
    LEFT JOIN (SELECT day, item_id, sum(income) AS income, sum(units) AS units, sum(sales) AS sales,
                      sum(returns) AS returns, sum(refunds) AS refunds
               FROM store_item_daily WHERE day >= since GROUP BY day, item_id) d
           ON d.item_id = k.item_id AND d.day = g.day
    WINDOW w AS (PARTITION BY k.item_id ORDER BY g.day)
    ORDER BY 1, 2;
END
$$;
DROP FUNCTION running_rebuild();  -- 008's, without the horizon: a call without it now takes the default
