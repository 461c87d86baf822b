"""A batch's sums, computed with numpy, against the same sums computed one sale at a time."""

from __future__ import annotations

import collections

from hypothesis import given, strategies as st

from shared.rollups import ROLLUPS
from worker.batch_columns import BatchColumns

_rows = st.lists(
    st.tuples(
        st.integers(1, 2**62),
        st.integers(946_684_800_000_000, 2_000_000_000_000_000),
        st.integers(1, 5),
        st.integers(1, 4),
        st.integers(0, 2**31 - 1),
        st.integers(1, 10_000),
        st.one_of(st.none(), st.text(max_size=4)),
        st.integers(946_684_800_000_000, 2_000_000_000_000_000),
        st.integers(0, 2**31 - 1),
    ),
    min_size=1,
    max_size=60,
)


@given(_rows)
def test_sums_by_each_rollups_grouping_match_a_plain_loop(rows):
    batch = BatchColumns(rows)
    for rollup in ROLLUPS:
        expected = collections.defaultdict(lambda: [0, 0, 0, 0])
        for _, time_us, item_id, store_id, price, quantity, _, _, list_price in rows:
            values = {"second": time_us // 1_000_000, "item_id": item_id, "store_id": store_id}
            key = tuple(values[name] if name in rollup.summed_by else 0 for name in ("second", "item_id", "store_id"))
            sums = expected[key]
            sums[0] += price * quantity
            sums[1] += quantity
            sums[2] += 1
            sums[3] += (list_price - price) * quantity
        seconds, item_ids, store_ids, income, units, sales, discounts = batch.sums_by(rollup.summed_by)
        got = {
            key: [i, u, s, d]
            for key, i, u, s, d in zip(zip(seconds, item_ids, store_ids), income, units, sales, discounts)
        }
        assert got == expected
        assert len(seconds) == len(expected)  # one row per group


def test_income_beyond_int64_is_summed_exactly():
    rows = [(i, 0, 1, 1, 2**31 - 1, 10_000, None, 0, 2**31 - 1) for i in range(450_000)]
    [_, _, _, [income], [units], [sales], [discounts]] = BatchColumns(rows).sums_by(("item_id",))
    assert (income, units, sales, discounts) == ((2**31 - 1) * 10_000 * 450_000, 10_000 * 450_000, 450_000, 0)
    rows = [(i, 0, 1, 1, 0, 10_000, None, 0, 2**31 - 1) for i in range(450_000)]  # everything given away
    [_, _, _, [income], _, _, [discounts]] = BatchColumns(rows).sums_by(("item_id",))
    assert (income, discounts) == (0, (2**31 - 1) * 10_000 * 450_000)
