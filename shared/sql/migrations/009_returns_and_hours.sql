-- Returns, and the hour-of-day pattern (issue 14).
--
-- 1. A return takes back part (or all) of one sold line, in the store that took it back, at
--    the sale's price snapshot. Returns are few (about 2% of sales) and kept whole: retention
--    archives months of sales only, so the rollups are "sales + returns + archived sales".
CREATE TABLE returns (
    id              bigint      NOT NULL,  -- from the same id blocks as sales
    sale_id         bigint      NOT NULL,
    return_time     timestamptz NOT NULL,
    store_id        integer     NOT NULL REFERENCES store (id),  -- the store that took it back
    item_id         integer     NOT NULL REFERENCES item (id),   -- the sale's
    price           integer     NOT NULL CHECK (price >= 0),     -- the sale's price snapshot
    quantity        integer     NOT NULL CHECK (quantity BETWEEN 1 AND 10000),
    idempotency_key varchar(64),
    accepted_at     timestamptz NOT NULL,
    PRIMARY KEY (id, store_id)  -- with the distribution column, for Citus
);
CREATE UNIQUE INDEX returns_store_idempotency_key
    ON returns (store_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX returns_sale ON returns (sale_id);

-- What has been returned of each sale, checked in the transaction that writes the return: the
-- last line of defence (the API refuses an over-return before queueing it, see api/returns.py).
CREATE TABLE sale_returned (
    sale_id  bigint  PRIMARY KEY,
    sold     integer NOT NULL,
    returned integer NOT NULL,
    CONSTRAINT return_not_more_than_sold CHECK (returned BETWEEN 1 AND sold)
);

-- 2. Every rollup counts returns where and when they happened: income and units net of them,
--    `returns` (how many) and `refunds` (the money given back) beside.
ALTER TABLE store_monthly ADD COLUMN returns bigint NOT NULL DEFAULT 0, ADD COLUMN refunds bigint NOT NULL DEFAULT 0;
ALTER TABLE item_totals ADD COLUMN returns bigint NOT NULL DEFAULT 0, ADD COLUMN refunds bigint NOT NULL DEFAULT 0;
ALTER TABLE daily_totals ADD COLUMN returns bigint NOT NULL DEFAULT 0, ADD COLUMN refunds bigint NOT NULL DEFAULT 0;
ALTER TABLE store_item_daily ADD COLUMN returns bigint NOT NULL DEFAULT 0, ADD COLUMN refunds bigint NOT NULL DEFAULT 0;
ALTER TABLE store_running ADD COLUMN returns bigint NOT NULL DEFAULT 0, ADD COLUMN refunds bigint NOT NULL DEFAULT 0;
ALTER TABLE item_running ADD COLUMN returns bigint NOT NULL DEFAULT 0, ADD COLUMN refunds bigint NOT NULL DEFAULT 0;
ALTER TABLE store_monthly_archived ADD COLUMN returns bigint NOT NULL DEFAULT 0, ADD COLUMN refunds bigint NOT NULL DEFAULT 0;
ALTER TABLE item_totals_archived ADD COLUMN returns bigint NOT NULL DEFAULT 0, ADD COLUMN refunds bigint NOT NULL DEFAULT 0;
ALTER TABLE daily_totals_archived ADD COLUMN returns bigint NOT NULL DEFAULT 0, ADD COLUMN refunds bigint NOT NULL DEFAULT 0;
ALTER TABLE store_item_daily_archived ADD COLUMN returns bigint NOT NULL DEFAULT 0, ADD COLUMN refunds bigint NOT NULL DEFAULT 0;

-- 3. Hours: per local day and hour, chain-wide and per store. The heat map of any period sums
--    its days' rows by weekday and hour: at most 24 a day for the chain, or for one store.
CREATE TABLE hourly_totals (
    day    date     NOT NULL,
    hour   smallint NOT NULL,
    income bigint   NOT NULL,
    units  bigint   NOT NULL,
    sales  bigint   NOT NULL,
    returns bigint  NOT NULL DEFAULT 0,
    refunds bigint  NOT NULL DEFAULT 0,
    PRIMARY KEY (day, hour)
) WITH (fillfactor = 50);  -- the current hour's row is updated by every batch
CREATE TABLE store_hourly (
    store_id integer  NOT NULL REFERENCES store (id) ON DELETE CASCADE,
    day      date     NOT NULL,
    hour     smallint NOT NULL,
    income   bigint   NOT NULL,
    units    bigint   NOT NULL,
    sales    bigint   NOT NULL,
    returns  bigint   NOT NULL DEFAULT 0,
    refunds  bigint   NOT NULL DEFAULT 0,
    PRIMARY KEY (store_id, day, hour)
) WITH (fillfactor = 70);
CREATE TABLE hourly_totals_archived (LIKE hourly_totals INCLUDING ALL);
CREATE TABLE store_hourly_archived (LIKE store_hourly INCLUDING ALL);
ALTER TABLE store_hourly_archived
    ADD CONSTRAINT store_hourly_archived_store_id_fkey FOREIGN KEY (store_id) REFERENCES store (id);

CREATE TRIGGER hourly_totals_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON hourly_totals
    FOR EACH STATEMENT EXECUTE FUNCTION notify_reports_changed();
CREATE TRIGGER store_hourly_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON store_hourly
    FOR EACH STATEMENT EXECUTE FUNCTION notify_reports_changed();
ALTER TABLE hourly_totals ENABLE ALWAYS TRIGGER hourly_totals_changed;
ALTER TABLE store_hourly ENABLE ALWAYS TRIGGER store_hourly_changed;

-- 4. The running totals carry the two new measures forward too (008's functions, with them).
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
        INSERT INTO store_running (day, store_id, income, units, sales, returns, refunds)
        SELECT last + g.n, r.store_id, r.income, r.units, r.sales, r.returns, r.refunds
        FROM store_running r CROSS JOIN generate_series(1, through - last) AS g(n)
        WHERE r.day = last;
        INSERT INTO item_running (day, item_id, income, units, sales, returns, refunds)
        SELECT last + g.n, r.item_id, r.income, r.units, r.sales, r.returns, r.refunds
        FROM item_running r CROSS JOIN generate_series(1, through - last) AS g(n)
        WHERE r.day = last;
    END IF;
    UPDATE report_settings SET running_through = greatest(running_through, through);
END
$$;

CREATE OR REPLACE FUNCTION running_rebuild() RETURNS void LANGUAGE plpgsql AS $$
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
    INSERT INTO store_running (day, store_id, income, units, sales, returns, refunds)
    SELECT g.day, k.store_id, sum(coalesce(d.income, 0)) OVER w, sum(coalesce(d.units, 0)) OVER w,
           sum(coalesce(d.sales, 0)) OVER w, sum(coalesce(d.returns, 0)) OVER w, sum(coalesce(d.refunds, 0)) OVER w
    FROM (SELECT store_id, min(day) AS first_day FROM daily_totals GROUP BY store_id) k
    JOIN (SELECT earliest + n AS day FROM generate_series(0, through - earliest) AS n) g ON g.day >= k.first_day
    LEFT JOIN daily_totals d ON d.store_id = k.store_id AND d.day = g.day
    WINDOW w AS (PARTITION BY k.store_id ORDER BY g.day)
    ORDER BY 1, 2;  -- day by day: a report reads one day's rows, together on few pages
    INSERT INTO item_running (day, item_id, income, units, sales, returns, refunds)
    SELECT g.day, k.item_id, sum(coalesce(d.income, 0)) OVER w, sum(coalesce(d.units, 0)) OVER w,
           sum(coalesce(d.sales, 0)) OVER w, sum(coalesce(d.returns, 0)) OVER w, sum(coalesce(d.refunds, 0)) OVER w
    FROM (SELECT item_id, min(day) AS first_day FROM store_item_daily GROUP BY item_id) k
    JOIN (SELECT earliest + n AS day FROM generate_series(0, through - earliest) AS n) g ON g.day >= k.first_day
    LEFT JOIN (SELECT day, item_id, sum(income) AS income, sum(units) AS units, sum(sales) AS sales,
                      sum(returns) AS returns, sum(refunds) AS refunds
               FROM store_item_daily GROUP BY day, item_id) d ON d.item_id = k.item_id AND d.day = g.day
    WINDOW w AS (PARTITION BY k.item_id ORDER BY g.day)
    ORDER BY 1, 2;
END
$$;

-- A database that holds sales already gets its hours (no returns exist yet).
INSERT INTO hourly_totals (day, hour, income, units, sales)
SELECT (s.sale_time AT TIME ZONE r.timezone)::date, extract(hour FROM s.sale_time AT TIME ZONE r.timezone),
       sum(s.price::bigint * s.quantity), sum(s.quantity), count(*)
FROM sales s CROSS JOIN report_settings r
GROUP BY 1, 2;
INSERT INTO store_hourly (store_id, day, hour, income, units, sales)
SELECT s.store_id, (s.sale_time AT TIME ZONE r.timezone)::date, extract(hour FROM s.sale_time AT TIME ZONE r.timezone),
       sum(s.price::bigint * s.quantity), sum(s.quantity), count(*)
FROM sales s CROSS JOIN report_settings r
GROUP BY 1, 2, 3;
