-- Reports that keep their cache under ingest (issue 21). A writer that says what its
-- transaction changed (the worker: the moments and stores of its batch, shared.report_changes)
-- sets sales.reports_announced for that transaction, and the rollups' triggers stay quiet:
-- their "something changed" made every API process drop every cached report at every commit,
-- last month's included. Any other change (an edit in psql, a rebuild, seeding) still says
-- "something changed", as before.
CREATE OR REPLACE FUNCTION notify_reports_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('sales.reports_announced', true) IS DISTINCT FROM 'on' THEN
        PERFORM pg_notify('reports_changed', '');
    END IF;
    RETURN NULL;
END
$$;
