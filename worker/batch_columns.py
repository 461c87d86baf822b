"""A batch of queued sales as numpy columns: its binary COPY data and its sums for the rollups.

The worker's usual batch (all new sales) is written with these: the rows go straight into
`sales` by binary COPY, and each rollup gets the batch already summed by what it groups on,
a few hundred rows instead of one per sale. Sums are exact: int64, or Python integers for a
batch whose income could pass 2**63 (prices and quantities at their limits).
"""

from __future__ import annotations

import numpy as np

from shared import sales_copy
from shared.queue import full_rows

# The partial-sums parameters of shared.rollups.PARTIAL_SALES, in order.
_GROUP_COLUMNS = ("second", "item_id", "store_id")


class BatchColumns:
    def __init__(self, rows: list[tuple]):
        """`rows`: worker.writer.Row, (id, sale_time_us, item_id, store_id, price, quantity,
        idempotency_key, accepted_at_us, list_price, till_id, till_seq, till_time_us)."""
        self.rows = rows = full_rows(rows)
        ids, times_us, item_ids, store_ids, prices, quantities, keys, accepted_us, list_prices, tills, _, till_times = (
            zip(*rows)
        )
        self._keyed = [] if keys.count(None) == len(keys) else [i for i, key in enumerate(keys) if key is not None]
        # Rows packed one by one: a key (text) or a till time kept; the usual batch has none.
        self._packed = (
            self._keyed
            if till_times.count(None) == len(till_times)
            else sorted({*self._keyed, *(i for i, moment in enumerate(till_times) if moment is not None)})
        )
        self._tilled = tills.count(None) < len(tills)
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

    def till_progress(self) -> list[tuple[int, int, int, int]]:
        """(store_id, till_id, lowest and highest till_seq) of each till with sales in the batch."""
        bounds: dict[tuple[int, int], tuple[int, int]] = {}
        if self._tilled:
            for row in self.rows:
                if row[9] is not None:
                    low, high = bounds.get((row[3], row[9]), (row[10], row[10]))
                    bounds[row[3], row[9]] = (min(low, row[10]), max(high, row[10]))
        return [(store_id, till_id, low, high) for (store_id, till_id), (low, high) in bounds.items()]

    def till_numbers_repeat(self) -> bool:
        """Whether two sales of the batch carry the same till and sequence number."""
        numbers = [(row[3], row[9], row[10]) for row in self.rows if row[9] is not None] if self._tilled else []
        return len(set(numbers)) < len(numbers)

    def copy_data(self) -> bytes:
        """The whole batch as binary COPY data for shared.sales_copy.COLUMNS: the fixed-width
        rows by numpy (other callers' with NULL till columns, the tills' with theirs), the rest
        one by one."""
        fixed = np.ones(len(self), dtype=bool)
        fixed[self._packed] = False
        till_ids = np.array([row[9] or 0 for row in self.rows], dtype=np.int64) if self._tilled else None
        till_seqs = np.array([row[10] or 0 for row in self.rows], dtype=np.int64) if self._tilled else None
        tilled = till_ids != 0 if till_ids is not None else np.zeros(len(self), dtype=bool)
        parts = [sales_copy.HEADER]
        for group, with_till in ((fixed & ~tilled, False), (fixed & tilled, True)):
            if group.any():
                parts.append(
                    sales_copy.unkeyed_rows(
                        self.ids[group],
                        self.times_us[group],
                        self.item_ids[group],
                        self.store_ids[group],
                        self.prices[group],
                        self.quantities[group],
                        self.accepted_us[group],
                        self.list_prices[group],
                        till_ids[group] if with_till and till_ids is not None else None,
                        till_seqs[group] if with_till and till_seqs is not None else None,
                    )
                )
        parts.extend(sales_copy.one_row(self.rows[i]) for i in self._packed)
        parts.append(sales_copy.TRAILER)
        return b"".join(parts)

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
