-- The API keeps report results in memory and drops them when a rollup changes: every
-- statement that writes a rollup (the worker's batches, rebuilds, repairs, cascades from a
-- deleted store or item) sends one NOTIFY at its commit. ENABLE ALWAYS: the worker's
-- batches run with session_replication_role = replica, which skips ordinary triggers.
CREATE FUNCTION notify_reports_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('reports_changed', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER store_monthly_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON store_monthly
    FOR EACH STATEMENT EXECUTE FUNCTION notify_reports_changed();
CREATE TRIGGER item_totals_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON item_totals
    FOR EACH STATEMENT EXECUTE FUNCTION notify_reports_changed();
CREATE TRIGGER daily_totals_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON daily_totals
    FOR EACH STATEMENT EXECUTE FUNCTION notify_reports_changed();
ALTER TABLE store_monthly ENABLE ALWAYS TRIGGER store_monthly_changed;
ALTER TABLE item_totals ENABLE ALWAYS TRIGGER item_totals_changed;
ALTER TABLE daily_totals ENABLE ALWAYS TRIGGER daily_totals_changed;

-- With reports answered from memory, the rollups are written far more often than they are
-- read: their "top" indexes made every upsert a non-HOT update (income and units are indexed)
-- with two index insertions per row, half of a batch's time in PostgreSQL. Without them, and
-- with room left on each page, an upsert rewrites its row in place (HOT).
DROP INDEX store_monthly_top;
DROP INDEX item_totals_top;
ALTER TABLE store_monthly SET (fillfactor = 50);
ALTER TABLE item_totals SET (fillfactor = 50);
ALTER TABLE daily_totals SET (fillfactor = 50);
