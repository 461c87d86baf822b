-- API keys (used when AUTH_REQUIRED=true). Only a SHA-256 of the random secret is kept;
-- the prefix is the visible, unique part used to find the key and to name it in lists.
CREATE TABLE api_key (
    id          serial PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('pos', 'owner', 'admin')),
    -- no foreign key: /clear/ and /create/ replace the stores, the POS keys stay valid
    store_id    integer CHECK ((kind = 'pos') = (store_id IS NOT NULL)),
    prefix      text NOT NULL UNIQUE,
    secret_hash bytea NOT NULL,
    label       text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE FUNCTION notify_api_keys_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('api_keys_changed', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER api_key_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON api_key
    FOR EACH STATEMENT EXECUTE FUNCTION notify_api_keys_changed();
