-- Chain-wide rollups that no two workers' transactions write at once.
--
-- item_totals, item_running (with item_running_late) and hourly_totals are keyed by item or by
-- hour for the whole chain: every batch upserted the same popular items' rows and the current
-- hour's row and held them until commit, so workers waited on each other. A batch now only
-- inserts its sums by local day, hour and item here (no row anybody else writes), and one
-- session at a time (shared.chain_fold) moves them into those tables. Reports add what is not
-- folded yet in the same statement, so they are exact whatever the fold has done.
CREATE TABLE chain_deltas (
    day     date     NOT NULL,  -- local day and hour in report_settings.timezone, as the rollups cut them
    hour    smallint NOT NULL,
    item_id integer  NOT NULL REFERENCES item (id) ON DELETE CASCADE,  -- as item_totals: an item's rows go with it
    income  bigint   NOT NULL,
    units   bigint   NOT NULL,
    sales   bigint   NOT NULL,
    returns bigint   NOT NULL DEFAULT 0,
    refunds bigint   NOT NULL DEFAULT 0
) WITH (
    -- Insert-only, emptied by every fold: no key and no index (nothing to keep up per row), and
    -- a few thousand live rows at most. What grows is the dead ones, which inserts do not reuse
    -- before a vacuum and which every report's scan of the table reads: vacuum it as soon as
    -- anything is dead (the folder vacuums it too, every few seconds: autovacuum visits only
    -- once a naptime), without cost delay, and never skip an insert-only vacuum.
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 10000,
    autovacuum_vacuum_cost_delay = 0
);

-- A change no writer announced (an edit in psql) still empties the reports' caches (see 011):
-- the worker's inserts and the folds set sales.reports_announced and stay quiet.
CREATE TRIGGER chain_deltas_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON chain_deltas
    FOR EACH STATEMENT EXECUTE FUNCTION notify_reports_changed();
ALTER TABLE chain_deltas ENABLE ALWAYS TRIGGER chain_deltas_changed;
