-- Years of sales, and a schema that Citus can distribute (shared/citus.py does that when the
-- extension is there). Upgrades a database migrated before in place.
--
-- 1. sales is partitioned by month of sale_time (UTC bounds: storage, not reporting), so that
--    old months are archived and dropped whole (python -m shared.retention). A unique key of a
--    partitioned table must hold the partition column, and on Citus the distribution column:
--    the primary key becomes (id, store_id, sale_time). Ids stay unique because they come
--    from sales_id_seq in blocks; a sale delivered twice has the same three values.
ALTER TABLE sales RENAME TO sales_unpartitioned;
ALTER INDEX sales_pkey RENAME TO sales_unpartitioned_pkey;
ALTER INDEX sales_store_idempotency_key RENAME TO sales_unpartitioned_key;

CREATE TABLE sales (
    id              bigint NOT NULL DEFAULT nextval('sales_id_seq'),
    sale_time       timestamptz NOT NULL DEFAULT now(),
    item_id         integer NOT NULL CONSTRAINT sales_item_id_fkey REFERENCES item (id),
    store_id        integer NOT NULL CONSTRAINT sales_store_id_fkey REFERENCES store (id),
    price           integer NOT NULL CONSTRAINT sales_price_check CHECK (price >= 0),
    quantity        integer NOT NULL DEFAULT 1 CONSTRAINT sales_quantity_check CHECK (quantity BETWEEN 1 AND 10000),
    idempotency_key varchar(64),
    accepted_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT sales_pkey PRIMARY KEY (id, store_id, sale_time)
) PARTITION BY RANGE (sale_time);
ALTER SEQUENCE sales_id_seq OWNED BY sales.id;

-- The partition holding the month that starts on `month_start` (UTC), made if missing. Called
-- by the worker before it writes a batch with a month it has not seen, by the seeder, and by
-- the worker's cron for the coming months. Serialised: two writers may ask at once.
CREATE FUNCTION sales_partition(month_start date) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    name text := 'sales_' || to_char(month_start, 'YYYY_MM');
BEGIN
    IF to_regclass(name) IS NULL THEN
        PERFORM pg_advisory_xact_lock(370221);
        IF to_regclass(name) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF sales FOR VALUES FROM (%L) TO (%L)', name,
                           date_trunc('month', month_start)::timestamp AT TIME ZONE 'UTC',
                           (date_trunc('month', month_start) + interval '1 month')::timestamp AT TIME ZONE 'UTC');
        END IF;
    END IF;
    RETURN name;
END
$$;

SELECT sales_partition(month::date)
FROM (SELECT DISTINCT date_trunc('month', sale_time AT TIME ZONE 'UTC') AS month FROM sales_unpartitioned
      UNION
      SELECT date_trunc('month', now() AT TIME ZONE 'UTC') + n * interval '1 month' FROM generate_series(0, 2) n) m
ORDER BY month;

INSERT INTO sales SELECT * FROM sales_unpartitioned;

-- 2. Idempotency keys get a table of their own: a unique index on sales would now have to hold
--    sale_time, and a retry that names no sale_time (accepted again at another moment, after
--    Redis forgot the key) would then be stored twice.
CREATE TABLE sale_keys (
    store_id        integer NOT NULL,
    idempotency_key varchar(64) NOT NULL,
    sale_id         bigint NOT NULL,
    PRIMARY KEY (store_id, idempotency_key)
);
INSERT INTO sale_keys SELECT store_id, idempotency_key, id FROM sales_unpartitioned WHERE idempotency_key IS NOT NULL;

DROP TABLE sales_unpartitioned;

-- 3. daily_totals gets a row per store and day instead of one per day: every batch wrote
--    today's single row, so concurrent writers all waited on it. Reports sum the stores.
DROP TABLE daily_totals;
CREATE TABLE daily_totals (
    day      date    NOT NULL,
    store_id integer NOT NULL REFERENCES store (id) ON DELETE CASCADE,
    income   bigint  NOT NULL,
    units    bigint  NOT NULL,
    sales    bigint  NOT NULL,
    PRIMARY KEY (day, store_id)
) WITH (fillfactor = 50);
INSERT INTO daily_totals (day, store_id, income, units, sales)
SELECT (s.sale_time AT TIME ZONE r.timezone)::date, s.store_id, sum(s.price::bigint * s.quantity), sum(s.quantity), count(*)
FROM sales s CROSS JOIN report_settings r
GROUP BY 1, 2;
CREATE TRIGGER daily_totals_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON daily_totals
    FOR EACH STATEMENT EXECUTE FUNCTION notify_reports_changed();
ALTER TABLE daily_totals ENABLE ALWAYS TRIGGER daily_totals_changed;

-- 4. What archived months added to each rollup (python -m shared.retention): the rollups keep
--    their totals when a month of raw sales is dropped, and reconciliation recounts
--    "raw sales + archived" so that it still finds no drift.
CREATE TABLE store_monthly_archived (LIKE store_monthly INCLUDING ALL);
CREATE TABLE item_totals_archived (LIKE item_totals INCLUDING ALL);
CREATE TABLE daily_totals_archived (LIKE daily_totals INCLUDING ALL);
CREATE TABLE archived_months (
    month       date PRIMARY KEY,  -- first day of the UTC month
    sales       bigint NOT NULL,
    file        text,              -- where the rows were copied, if they were
    sha256      text,
    archived_at timestamptz NOT NULL DEFAULT now()
);
