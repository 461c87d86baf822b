-- A batch whose acknowledgement was lost after its commit is delivered again; its bad rows
-- must not be filed twice. One pending dead letter per sale.
DELETE FROM dead_letter d USING dead_letter e
    WHERE d.sale_id = e.sale_id AND d.replayed_at IS NULL AND e.replayed_at IS NULL AND d.id > e.id;
CREATE UNIQUE INDEX dead_letter_pending_sale ON dead_letter (sale_id)
    WHERE replayed_at IS NULL AND sale_id IS NOT NULL;
