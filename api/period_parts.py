"""A period that reaches today, answered as the sum of two parts.

Every worker commit adds to today, so a report over a period that includes today cannot stay in
memory while tills sell. Its days before today can: they change only with a late sale or a
return of an old sale. So such a report is asked as two parts, each kept in the report cache
under its own scope: the closed days (first..yesterday: as costly as the whole period once,
then kept across commits), and today on (today..last: one day's rows, computed again after a
commit that adds to today). The answer is their sum. A period wholly before or after today is
one part, and so is one with less than a week before today.

Every measure here adds up over days (sales, units, income, returns, refunds, per key), so the
sum of the parts is the whole period's figure exactly.
"""

from __future__ import annotations

import array
import bisect
import dataclasses
import datetime as dt
import heapq
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import TypeVar

K = TypeVar("K", bound=Hashable)

_ONE_DAY = dt.timedelta(days=1)


# Closed days fewer than this are not kept apart: their rows are about as few as today's, and
# two parts cost two queries and a merge where one would do.
MIN_CLOSED_DAYS = 7


def split_at(first: dt.date, last: dt.date, today: dt.date) -> list[tuple[dt.date, dt.date]]:
    """[first, last] (both included) as its days before `today` and the rest; one range if it
    lies on one side, or if fewer than MIN_CLOSED_DAYS of it are before today."""
    if last < today or first >= today or (today - first).days < MIN_CLOSED_DAYS:
        return [(first, last)]
    return [(first, today - _ONE_DAY), (today, last)]


@dataclasses.dataclass(frozen=True, eq=False)
class Ranked:
    """Units per item over a part of a period (every item, zero and negative ones too), ranked:
    most units first, then by id. Kept in arrays, 24 bytes an item (a dict took some 130): one
    store's year of demo sales at 10M is 6,300 items, and the report cache holds many stores."""

    ranked_ids: array.array  # item ids, best first
    ranked_units: array.array
    ids: array.array  # the same, by id: a lookup is a binary search
    units: array.array

    @classmethod
    def of(cls, pairs: Iterable[tuple[int, int]]) -> Ranked:
        """From (item id, units) pairs in any order."""
        return cls.from_ranked(sorted(pairs, key=lambda pair: (-pair[1], pair[0])))

    @classmethod
    def from_ranked(cls, ranked: Sequence[tuple[int, int]]) -> Ranked:
        """From (item id, units) pairs already ranked."""
        by_id = sorted(ranked)
        return cls(
            array.array("i", [k for k, _ in ranked]),
            array.array("q", [v for _, v in ranked]),
            array.array("i", [k for k, _ in by_id]),
            array.array("q", [v for _, v in by_id]),
        )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:  # what it counts against the report cache's bound
        return 24 * len(self) + 200

    def get(self, item_id: int) -> int | None:
        at = bisect.bisect_left(self.ids, item_id)
        return self.units[at] if at < len(self.ids) and self.ids[at] == item_id else None


def top(parts: Sequence[Ranked], cnt: int) -> list[tuple[int, int]]:
    """The `cnt` items whose summed units are largest and positive, with them, largest first (ties
    by id). Two parts cost the smaller part's items plus `cnt` more, not the larger's: an item
    the smaller part lacks keeps its place in the larger one's ranking."""
    if not parts:
        return []
    if len(parts) == 1:
        only = parts[0]
        return [(k, v) for k, v in zip(only.ranked_ids[:cnt], only.ranked_units[:cnt], strict=True) if v > 0]
    if len(parts) > 2:
        raise ValueError("a period has at most two parts")
    large, small = sorted(parts, key=len, reverse=True)
    totals = {k: (large.get(k) or 0) + v for k, v in zip(small.ranked_ids, small.ranked_units, strict=True)}
    kept = 0
    for k, v in zip(large.ranked_ids, large.ranked_units, strict=True):
        if kept == cnt:
            break
        if k not in totals:
            totals[k] = v
            kept += 1
    best = sorted((k for k, v in totals.items() if v > 0), key=lambda k: (-totals[k], k))
    return [(k, totals[k]) for k in best[:cnt]]


@dataclasses.dataclass(frozen=True, eq=False)
class KeyedSums:
    """Per key (a store, an item), what it is ranked by (income, units) and its units, over a
    part of a period; its keys ranked: largest first, then by key."""

    sums: dict[int, tuple[int, int]]
    ranked: list[int]

    @classmethod
    def of(cls, rows: Iterable[Mapping[str, int]]) -> KeyedSums:
        """From rows of `key`, `ranked_by` and `units` (those with neither left out: days to come
        have a row of zeros per key)."""
        sums = {row["key"]: (row["ranked_by"], row["units"]) for row in rows if row["ranked_by"] or row["units"]}
        return cls(sums, sorted(sums, key=lambda k: (-sums[k][0], k)))

    @property
    def nbytes(self) -> int:  # a dict entry, a tuple, a list slot
        return 160 * len(self.sums) + 200

    def plus(self, other: KeyedSums) -> KeyedSums:
        if not other.sums:
            return self
        sums = dict(self.sums)
        for k, (ranked_by, units) in other.sums.items():
            mine = sums.get(k, (0, 0))
            sums[k] = (mine[0] + ranked_by, mine[1] + units)
        return KeyedSums(sums, sorted(sums, key=lambda k: (-sums[k][0], k)))


def top_of_sums(closed: KeyedSums, added: Mapping[int, Sequence[int]], cnt: int) -> list[tuple[int, int]]:
    """The `cnt` keys largest in `ranked_by` over `closed` plus `added` ((ranked_by, units) per
    key: the chain's today) among those with units above zero, with it, largest first (ties by
    key). Costs `added`'s keys plus `cnt`: a key today lacks keeps its place in the closed ranking."""
    summed: dict[int, tuple[int, int]] = {}
    get = closed.sums.get
    for k, (ranked_by, units) in added.items():
        before = get(k)
        summed[k] = (ranked_by + before[0], units + before[1]) if before else (ranked_by, units)
    kept = 0
    for k in closed.ranked:
        if kept == cnt:
            break
        if k not in summed and closed.sums[k][1] > 0:
            summed[k] = closed.sums[k]
            kept += 1
    best = heapq.nsmallest(cnt, ((-ranked_by, k) for k, (ranked_by, units) in summed.items() if units > 0))
    return [(k, -negated) for negated, k in best]


class LiveTop:
    """top_of_sums kept as the day's sums grow: a key's growth moves that key alone, so each
    costs a comparison with the last of the top (a new sum over every key sold today took
    ~6 ms at 10,000 items). The day's sums only grow: sales come with deltas, and anything else
    drops the day (api.chain_today)."""

    def __init__(self, closed: KeyedSums, day: Mapping[int, Sequence[int]], cnt: int):
        self.closed = closed
        self._cnt = cnt
        self._best = [(-ranked_by, k) for k, ranked_by in top_of_sums(closed, day, cnt)]  # ascending
        self._keys = {k for _, k in self._best}

    def grown(self, k: int, day: Sequence[int]) -> None:
        """Key `k`'s sums of the day are now `day` (ranked_by, units), no less than before."""
        before = self.closed.sums.get(k)
        ranked_by, units = (day[0] + before[0], day[1] + before[1]) if before else (day[0], day[1])
        if units <= 0:
            return
        entry = (-ranked_by, k)
        if k in self._keys:
            self._best = sorted(entry if key == k else (negated, key) for negated, key in self._best)
        elif len(self._best) < self._cnt or entry < self._best[-1]:
            bisect.insort(self._best, entry)
            self._keys.add(k)
            if len(self._best) > self._cnt:
                self._keys.discard(self._best.pop()[1])

    def top(self) -> list[tuple[int, int]]:
        return [(k, -negated) for negated, k in self._best]


def add(parts: Sequence[Mapping[str, int]]) -> dict[str, int]:
    """Measures summed over the parts (each a mapping of measure to value)."""
    summed: dict[str, int] = {}
    for part in parts:
        for measure, value in part.items():
            summed[measure] = summed.get(measure, 0) + value
    return summed


def add_by_key(parts: Sequence[Mapping[K, Mapping[str, int]]]) -> dict[K, dict[str, int]]:
    """Per key (an hour of the week, a month), its measures summed over the parts."""
    summed: dict[K, dict[str, int]] = {}
    for part in parts:
        for key, measures in part.items():
            summed[key] = add([summed[key], measures]) if key in summed else dict(measures)
    return summed
