-- Reports over any period (issue 14), answered from rollups in the same few rows whatever
-- the period's length.
--
-- 1. Running totals: a row per day and store (and per day and item) holding everything up to
--    and including that day. Any period [from, to] is then one subtraction per store or item,
--    running(to) - running(from - 1): a year costs what a day costs (2 x 1,000 stores, or
--    2 x 10,000 items), where summing days or months reads up to 365 rows per store or item.
--    A key's rows run without a gap from the first day it sold up to
--    report_settings.running_through (a day with no sale copies the day before), so the row
--    of any day is there to be read; a day before a key's first row counts 0.
ALTER TABLE report_settings ADD COLUMN running_through date;

CREATE TABLE store_running (
    day      date    NOT NULL,
    store_id integer NOT NULL REFERENCES store (id) ON DELETE CASCADE,
    income   bigint  NOT NULL,
    units    bigint  NOT NULL,
    sales    bigint  NOT NULL,
    PRIMARY KEY (day, store_id)
) WITH (fillfactor = 50);

CREATE TABLE item_running (
    day     date    NOT NULL,
    item_id integer NOT NULL REFERENCES item (id) ON DELETE CASCADE,
    income  bigint  NOT NULL,
    units   bigint  NOT NULL,
    sales   bigint  NOT NULL,
    PRIMARY KEY (day, item_id)
) WITH (fillfactor = 50);

-- Days are series of integers added to a date: a series of timestamps would step through the
-- session's time zone, and stop short where a DST change skips a midnight.
-- A sale of day d adds to its key's rows from d to running_through; a batch with a day past
-- running_through first carries every key's last row forward to that day (running_extend).
-- Writers hold this lock shared for their whole transaction (taken first, before any table)
-- and the extension holds it exclusively: a row copied forward must already hold every
-- committed and in-flight sale of its day, or the copy would miss one. Whatever replaces the
-- running totals wholesale (rebuild, seeding, /clear/) holds it exclusively too, first.
CREATE FUNCTION running_extend(through date) RETURNS void LANGUAGE plpgsql AS $$
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
        INSERT INTO store_running (day, store_id, income, units, sales)
        SELECT last + g.n, r.store_id, r.income, r.units, r.sales
        FROM store_running r CROSS JOIN generate_series(1, through - last) AS g(n)
        WHERE r.day = last;
        INSERT INTO item_running (day, item_id, income, units, sales)
        SELECT last + g.n, r.item_id, r.income, r.units, r.sales
        FROM item_running r CROSS JOIN generate_series(1, through - last) AS g(n)
        WHERE r.day = last;
    END IF;
    UPDATE report_settings SET running_through = greatest(running_through, through);
END
$$;

-- 2. A store's items by day: one store's top items over a period, and its page. On real tills a
--    store sells the same items day after day, so it is far smaller than the sales.
CREATE TABLE store_item_daily (
    day      date    NOT NULL,
    store_id integer NOT NULL REFERENCES store (id) ON DELETE CASCADE,
    item_id  integer NOT NULL REFERENCES item (id) ON DELETE CASCADE,
    income   bigint  NOT NULL,
    units    bigint  NOT NULL,
    sales    bigint  NOT NULL,
    PRIMARY KEY (store_id, day, item_id)
) WITH (fillfactor = 90);  -- mostly new rows: a store's item is sold again the same day far less often
CREATE TABLE store_item_daily_archived (LIKE store_item_daily INCLUDING ALL);

-- One store's days (its page) and months (its trend): the keys lead with the day or month,
-- for the chain's.
CREATE INDEX daily_totals_store_day ON daily_totals (store_id, day);
CREATE INDEX store_monthly_store_month ON store_monthly (store_id, month);
ALTER TABLE store_item_daily_archived
    ADD CONSTRAINT store_item_daily_archived_store_id_fkey FOREIGN KEY (store_id) REFERENCES store (id),
    ADD CONSTRAINT store_item_daily_archived_item_id_fkey FOREIGN KEY (item_id) REFERENCES item (id);

-- The report cache hears of every change (see 004).
CREATE TRIGGER store_running_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON store_running
    FOR EACH STATEMENT EXECUTE FUNCTION notify_reports_changed();
CREATE TRIGGER item_running_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON item_running
    FOR EACH STATEMENT EXECUTE FUNCTION notify_reports_changed();
CREATE TRIGGER store_item_daily_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON store_item_daily
    FOR EACH STATEMENT EXECUTE FUNCTION notify_reports_changed();
ALTER TABLE store_running ENABLE ALWAYS TRIGGER store_running_changed;
ALTER TABLE item_running ENABLE ALWAYS TRIGGER item_running_changed;
ALTER TABLE store_item_daily ENABLE ALWAYS TRIGGER store_item_daily_changed;

-- 3. The running totals recomputed from the daily rollups (which keep archived months too):
--    by rollups.rebuild, and here for a database that holds sales already. running_through
--    never goes back: a writer may have extended it for a batch it is about to write.
CREATE FUNCTION running_rebuild() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    through date;
    earliest date;
BEGIN
    TRUNCATE store_running, item_running;
    SELECT greatest(running_through, (SELECT max(day) FROM daily_totals)) INTO through FROM report_settings;
    UPDATE report_settings SET running_through = through;
    SELECT min(day) INTO earliest FROM daily_totals;
    IF through IS NULL OR earliest IS NULL THEN
        RETURN;
    END IF;
    -- Every day from the first sale on, joined to each key from its own first day: not a
    -- LATERAL series per key, which Citus cannot push down to the shards.
    INSERT INTO store_running (day, store_id, income, units, sales)
    SELECT g.day, k.store_id, sum(coalesce(d.income, 0)) OVER w, sum(coalesce(d.units, 0)) OVER w,
           sum(coalesce(d.sales, 0)) OVER w
    FROM (SELECT store_id, min(day) AS first_day FROM daily_totals GROUP BY store_id) k
    JOIN (SELECT earliest + n AS day FROM generate_series(0, through - earliest) AS n) g ON g.day >= k.first_day
    LEFT JOIN daily_totals d ON d.store_id = k.store_id AND d.day = g.day
    WINDOW w AS (PARTITION BY k.store_id ORDER BY g.day)
    ORDER BY 1, 2;  -- day by day: a report reads one day's rows, together on few pages
    INSERT INTO item_running (day, item_id, income, units, sales)
    SELECT g.day, k.item_id, sum(coalesce(d.income, 0)) OVER w, sum(coalesce(d.units, 0)) OVER w,
           sum(coalesce(d.sales, 0)) OVER w
    FROM (SELECT item_id, min(day) AS first_day FROM store_item_daily GROUP BY item_id) k
    JOIN (SELECT earliest + n AS day FROM generate_series(0, through - earliest) AS n) g ON g.day >= k.first_day
    LEFT JOIN (SELECT day, item_id, sum(income) AS income, sum(units) AS units, sum(sales) AS sales
               FROM store_item_daily GROUP BY day, item_id) d ON d.item_id = k.item_id AND d.day = g.day
    WINDOW w AS (PARTITION BY k.item_id ORDER BY g.day)
    ORDER BY 1, 2;
END
$$;

INSERT INTO store_item_daily (day, store_id, item_id, income, units, sales)
SELECT (s.sale_time AT TIME ZONE r.timezone)::date, s.store_id, s.item_id, sum(s.price::bigint * s.quantity),
       sum(s.quantity), count(*)
FROM sales s CROSS JOIN report_settings r
GROUP BY 1, 2, 3;
SELECT running_rebuild();
