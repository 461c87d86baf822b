"""A batch of queued sales as numpy columns: its binary COPY data and its sums for the rollups.

The worker's usual batch (all new sales) is written with these: the rows go straight into
`sales` by binary COPY, and each rollup gets the batch already summed by what it groups on,
a few hundred rows instead of one per sale. Sums are exact: int64, or Python integers for a
batch whose income could pass 2**63 (prices and quantities at their limits).
"""

from __future__ import annotations

import numpy as np

from shared import sales_copy

# The partial-sums parameters of shared.rollups.PARTIAL_SALES, in order.
_GROUP_COLUMNS = ("second", "item_id", "store_id")


class BatchColumns:
    def __init__(self, rows: list[tuple]):
        """`rows`: worker.writer.Row, (id, sale_time_us, item_id, store_id, price, quantity,
        idempotency_key, accepted_at_us, list_price)."""
        self.rows = rows
        ids, times_us, item_ids, store_ids, prices, quantities, keys, accepted_us, list_prices = zip(*rows)
        self._keyed = [] if keys.count(None) == len(keys) else [i for i, key in enumerate(keys) if key is not None]
        self.ids = np.array(ids, dtype=np.int64)
        self.times_us = np.array(times_us, dtype=np.int64)
        self.item_ids = np.array(item_ids, dtype=np.int64)
        self.store_ids = np.array(store_ids, dtype=np.int64)
        self.prices = np.array(prices, dtype=np.int64)
        self.quantities = np.array(quantities, dtype=np.int64)
        self.accepted_us = np.array(accepted_us, dtype=np.int64)
        self.list_prices = np.array(list_prices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def keys(self) -> list[tuple[int, str, int]]:
        """(store_id, idempotency_key, id) of the sales that carry a key: rows of sale_keys."""
        return [(self.rows[i][3], self.rows[i][6], self.rows[i][0]) for i in self._keyed]

    def copy_data(self) -> bytes:
        """The whole batch as binary COPY data for shared.sales_copy.COLUMNS."""
        unkeyed = np.ones(len(self), dtype=bool)
        unkeyed[self._keyed] = False
        return b"".join(
            [
                sales_copy.HEADER,
                sales_copy.unkeyed_rows(
                    self.ids[unkeyed],
                    self.times_us[unkeyed],
                    self.item_ids[unkeyed],
                    self.store_ids[unkeyed],
                    self.prices[unkeyed],
                    self.quantities[unkeyed],
                    self.accepted_us[unkeyed],
                    self.list_prices[unkeyed],
                ),
                *(sales_copy.keyed_row(*self.rows[i]) for i in self._keyed),
                sales_copy.TRAILER,
            ]
        )

    def sums_by(self, names: tuple[str, ...]) -> list[list[int]]:
        """Income, units, sales and discounts summed per distinct value of `names` (a Rollup's
        summed_by), as the seven arrays of shared.rollups.PARTIAL_SALES."""
        columns = {"second": self.times_us // 1_000_000, "item_id": self.item_ids, "store_id": self.store_ids}
        keys = [columns[name] for name in names]
        order = np.lexsort(keys[::-1])
        sorted_keys = [key[order] for key in keys]
        starts_group = np.zeros(len(self), dtype=bool)
        starts_group[0] = True
        for key in sorted_keys:
            starts_group[1:] |= key[1:] != key[:-1]
        starts = np.flatnonzero(starts_group)
        income = self.prices * self.quantities
        discounts = (self.list_prices - self.prices) * self.quantities
        if int(max(self.prices.max(), self.list_prices.max())) * int(self.quantities.max()) * len(self) >= 2**63:
            income = self.prices.astype(object) * self.quantities
            discounts = (self.list_prices.astype(object) - self.prices) * self.quantities
        measures = (income, self.quantities, np.ones(len(self), dtype=np.int64), discounts)
        sums = [np.add.reduceat(measure[order], starts).tolist() for measure in measures]
        groups = {name: key[starts].tolist() for name, key in zip(names, sorted_keys)}
        zeros = [0] * len(starts)
        return [groups.get(name, zeros) for name in _GROUP_COLUMNS] + sums
