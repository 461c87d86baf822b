-- Tills as producers (docs/guarantees.md, "Tills: identity and sequence"). A till is a pos key
-- (api_key.id); it numbers its sales 1, 2, 3, ... and each carries (till_id, till_seq), so
-- that what is kept to recognise a retry grows with the number of tills, not with sales.
--
-- The till a pos key speaks for: NULL for the first key of a till (the till's id is then the
-- key's own); a key issued to replace another (`python -m shared.keys issue --till N`) names
-- that till, so that the till keeps its numbers across a change of key.
ALTER TABLE api_key ADD COLUMN till_id integer;

-- till_id, till_seq: a till's sale and its number (NULL for other callers' sales, and those of
-- releases before). till_time: what the caller stamped, kept only when it was ahead of the
-- server's clock (by up to two minutes): such a sale is stored at the server's moment of
-- acceptance (sale_time), never in the future; NULL otherwise. A NULL costs a bit of the row's
-- null bitmap, nothing more.
ALTER TABLE sales
    ADD COLUMN till_id   integer,
    ADD COLUMN till_seq  bigint,
    ADD COLUMN till_time timestamptz;

-- The highest sequence number of each till that is stored, moved by the worker in the
-- transaction that stores its sales: a sale of the till numbered at or below it is stored
-- already, whatever id the API gave it (after a Redis that lost its state took it again).
-- One row per till. Keyed by store as well, so that on Citus it lives beside the store's sales.
CREATE TABLE till_progress (
    store_id   integer NOT NULL,
    till_id    integer NOT NULL,
    last_seq   bigint  NOT NULL,
    PRIMARY KEY (store_id, till_id)
);

-- Whether a till's number is stored, and under which id: the worker asks when a batch holds a
-- number at or below its till's progress (redelivered, a dead letter replayed, a Redis that lost
-- the till's state), and numbers below it may be unstored (refused, given up, dead-lettered).
CREATE INDEX sales_till_seq ON sales (till_id, till_seq) WHERE till_id IS NOT NULL;
