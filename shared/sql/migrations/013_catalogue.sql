-- The catalogue as a chain runs it (shared.catalogue writes it, over the API or its tool).
--
-- 1. Prices with history: item_price holds every change of an item's list price with the
--    moment it takes effect (now, or scheduled). A sale is priced at the list price in effect at
--    its sale_time: the row with the latest effective_from at or before it, or item.price when
--    the item has no row that early (an item that never changed, or one created, seeded or
--    inserted by hand, has none). item.price keeps the seed's meaning for plain SQL readers: the
--    writer sets it to a change that takes effect at once; GET /items/ answers the price in
--    effect now, scheduled changes included.
CREATE TABLE item_price (
    item_id        integer     NOT NULL REFERENCES item (id) ON DELETE CASCADE,
    effective_from timestamptz NOT NULL,
    price          integer     NOT NULL CHECK (price >= 0),
    version        bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (item_id, effective_from)
);

-- 2. Retirement: no sale dated at or after retired_at is accepted; the history and the reports
--    keep the item or store.
ALTER TABLE item ADD COLUMN retired_at timestamptz;
ALTER TABLE store ADD COLUMN retired_at timestamptz;

-- 3. Versions, for GET /catalogue/?since=V: every write of shared.catalogue stamps the rows it
--    touches with one number from this sequence, taken under a lock that serializes those
--    writes, so versions commit in order and a till that saw V misses nothing below it. Rows
--    written otherwise (seeding, hand edits) keep 0: a full GET always shows them.
CREATE SEQUENCE catalogue_version;
ALTER TABLE item ADD COLUMN version bigint NOT NULL DEFAULT 0;
ALTER TABLE store ADD COLUMN version bigint NOT NULL DEFAULT 0;

-- 4. The list price beside the price charged: sales.price is what the till charged (income
--    counts it), list_price the catalogue's price at sale_time; their difference times the
--    quantity is the discount given. NULL on the sales stored before this column: they were
--    charged their list price.
-- (Two statements: Citus refuses a constraint inside ADD COLUMN on a distributed table. NOT
-- VALID: the rows there are all NULL, and validating would scan every sale under a lock that
-- stops the worker, at an API's start.)
ALTER TABLE sales ADD COLUMN list_price integer;
ALTER TABLE sales ADD CONSTRAINT sales_list_price_check CHECK (list_price >= 0) NOT VALID;
