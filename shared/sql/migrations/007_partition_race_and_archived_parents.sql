-- 1. sales_partition(), again. Two callers asking for the same new month at once: the second
--    one's to_regclass, after the advisory lock, could still answer from a catalogue cache
--    that had not heard of the first one's table, and its CREATE then failed ("already
--    exists"). IF NOT EXISTS checks under the schema's lock, with a fresh catalogue. And the
--    bounds are computed from a timestamp, never through the session's time zone (a date cast
--    to timestamptz lands at 01:00 where a DST change skips midnight on the 1st). On Citus the
--    new partition is distributed at once, over one connection per node: in a transaction
--    that touched a reference table (item, store) Citus refuses to do it in parallel.
CREATE OR REPLACE FUNCTION sales_partition(month_start date) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    name text := 'sales_' || to_char(month_start, 'YYYY_MM');
    first_day timestamp := date_trunc('month', month_start::timestamp);
BEGIN
    IF to_regclass(name) IS NULL THEN
        PERFORM pg_advisory_xact_lock(370221);
        IF current_setting('citus.multi_shard_modify_mode', true) IS NOT NULL THEN
            PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);
        END IF;
        EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF sales FOR VALUES FROM (%L) TO (%L)', name,
                       first_day AT TIME ZONE 'UTC', (first_day + interval '1 month') AT TIME ZONE 'UTC');
    END IF;
    RETURN name;
END
$$;

-- 2. Once a month is archived its sales no longer hold their item and store: the archived
--    rollups do, so that deleting an item or store whose sales are all archived is refused
--    like any other with sales (it would otherwise cascade from the live rollups only, and
--    the recount would no longer match them).
ALTER TABLE store_monthly_archived ADD CONSTRAINT store_monthly_archived_store_id_fkey
    FOREIGN KEY (store_id) REFERENCES store (id);
ALTER TABLE daily_totals_archived ADD CONSTRAINT daily_totals_archived_store_id_fkey
    FOREIGN KEY (store_id) REFERENCES store (id);
ALTER TABLE item_totals_archived ADD CONSTRAINT item_totals_archived_item_id_fkey
    FOREIGN KEY (item_id) REFERENCES item (id);
