-- The seed's three tables keep their names and columns; sales gains a price snapshot,
-- a quantity, an idempotency key and a 64-bit id.
CREATE TABLE store (
    id      serial PRIMARY KEY,
    address varchar NOT NULL
);

CREATE TABLE item (
    id    serial PRIMARY KEY,
    name  varchar NOT NULL,
    price integer NOT NULL CHECK (price >= 0)
);

-- Ids are handed out by the API in blocks from this sequence before the sale is queued,
-- so the answer to POST /sales/ carries the final id.
CREATE TABLE sales (
    id              bigserial PRIMARY KEY,
    sale_time       timestamptz NOT NULL DEFAULT now(),
    item_id         integer NOT NULL REFERENCES item (id),
    store_id        integer NOT NULL REFERENCES store (id),
    price           integer NOT NULL CHECK (price >= 0),
    quantity        integer NOT NULL DEFAULT 1 CHECK (quantity BETWEEN 1 AND 10000),
    idempotency_key varchar(64),
    accepted_at     timestamptz NOT NULL DEFAULT now()
);

-- A retried sale carries the same key: the second copy is never stored.
CREATE UNIQUE INDEX sales_store_idempotency_key
    ON sales (store_id, idempotency_key) WHERE idempotency_key IS NOT NULL;

-- One row: the time zone the rollups' months and days are cut in.
CREATE TABLE report_settings (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    timezone  text NOT NULL
);
INSERT INTO report_settings (timezone) VALUES ('UTC');

-- Rollups, written by the worker in the same transaction as the sales they count.
CREATE TABLE store_monthly (
    month    date    NOT NULL,
    store_id integer NOT NULL REFERENCES store (id) ON DELETE CASCADE,
    income   bigint  NOT NULL,
    units    bigint  NOT NULL,
    sales    bigint  NOT NULL,
    PRIMARY KEY (month, store_id)
);
CREATE INDEX store_monthly_top ON store_monthly (month, income DESC, store_id);

CREATE TABLE item_totals (
    item_id integer PRIMARY KEY REFERENCES item (id) ON DELETE CASCADE,
    income  bigint NOT NULL,
    units   bigint NOT NULL,
    sales   bigint NOT NULL
);
CREATE INDEX item_totals_top ON item_totals (units DESC, item_id);

CREATE TABLE daily_totals (
    day    date   PRIMARY KEY,
    income bigint NOT NULL,
    units  bigint NOT NULL,
    sales  bigint NOT NULL
);

-- Sales the worker could never write, with the reason; replayable.
CREATE TABLE dead_letter (
    id          bigserial PRIMARY KEY,
    sale_id     bigint,
    sale        jsonb NOT NULL,
    reason      text NOT NULL,
    failed_at   timestamptz NOT NULL DEFAULT now(),
    replayed_at timestamptz
);
CREATE INDEX dead_letter_pending ON dead_letter (id) WHERE replayed_at IS NULL;

-- Every API process caches the catalogue and reloads it when told.
CREATE FUNCTION notify_catalogue_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('catalogue_changed', TG_TABLE_NAME);
    RETURN NULL;
END
$$;
CREATE TRIGGER item_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON item
    FOR EACH STATEMENT EXECUTE FUNCTION notify_catalogue_changed();
CREATE TRIGGER store_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON store
    FOR EACH STATEMENT EXECUTE FUNCTION notify_catalogue_changed();

-- Each nextval reserves a block of 1,000 ids: the API and the seeder take whole blocks,
-- so their ids never collide with each other or with a plain INSERT.
ALTER SEQUENCE sales_id_seq INCREMENT BY 1000;
