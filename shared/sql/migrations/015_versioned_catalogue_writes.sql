-- The catalogue's writers (shared.catalogue) say on `catalogue_changed` that only rows stamped
-- with a newer version changed, and every API process then loads just those rows. The triggers
-- on item and store would say "item" for the same statements (a whole reload of a 100,000-item
-- catalogue in every API process): they stay quiet inside such a write, which sets this flag.
CREATE OR REPLACE FUNCTION notify_catalogue_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('catalogue.versioned', true) = 'on' THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify('catalogue_changed', TG_TABLE_NAME);
    RETURN NULL;
END
$$;

-- Each API process asks for the rows past the version it holds after every such write.
CREATE INDEX item_version ON item (version);
CREATE INDEX store_version ON store (version);
