-- The API's catalogue and report cache hear of changes through NOTIFY. On one node the
-- triggers send them; on Citus they are gone (shared/citus.py): a trigger on a reference
-- table fires on every node inside Citus's two-phase commit, where NOTIFY is refused, and
-- nobody listens on the worker nodes anyway. The product's own writers notify by themselves;
-- whoever edits the catalogue or the rollups by hand on Citus calls this in the same
-- transaction (harmless on one node):  UPDATE item SET price = 120 WHERE id = 7; SELECT announce_changes();
CREATE FUNCTION announce_changes() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('catalogue_changed', ''), pg_notify('reports_changed', '');
END
$$;
