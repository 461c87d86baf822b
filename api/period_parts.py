"""A period that reaches today, answered as the sum of two parts.

Every worker commit adds to today, so a report over a period that includes today cannot stay in
memory while tills sell. Its days before today can: they change only with a late sale or a
return of an old sale. So such a report is asked as two parts, each kept in the report cache
under its own scope: the closed days (first..yesterday: as costly as the whole period once,
then kept across commits), and today on (today..last: one day's rows, computed again after a
commit that adds to today). The answer is their sum. A period wholly before or after today is
one part.

Every measure here adds up over days (sales, units, income, returns, refunds, per key), so the
sum of the parts is the whole period's figure exactly.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Hashable, Mapping, Sequence
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

_ONE_DAY = dt.timedelta(days=1)


def split_at(first: dt.date, last: dt.date, today: dt.date) -> list[tuple[dt.date, dt.date]]:
    """[first, last] (both included) as its days before `today` and the rest; one range if it
    lies on one side."""
    if last < today or first >= today:
        return [(first, last)]
    return [(first, today - _ONE_DAY), (today, last)]


@dataclasses.dataclass(frozen=True, eq=False)
class Ranked(Generic[K]):
    """One measure per key over a part of a period (every key, zero and negative ones too),
    with the keys ranked by it: largest first, then by key."""

    by_key: Mapping[K, int]
    ranked: tuple[K, ...] = ()

    @classmethod
    def of(cls, by_key: Mapping[K, int]) -> Ranked[K]:
        return cls(by_key, tuple(sorted(by_key, key=lambda k: (-by_key[k], k))))

    @property
    def rows(self) -> int:  # what it counts against the report cache's bound
        return len(self.by_key)


def top(parts: Sequence[Ranked[K]], cnt: int) -> list[tuple[K, int]]:
    """The `cnt` keys whose summed measure is largest and positive, with it, largest first (ties
    by key). Two parts cost the smaller part's keys plus `cnt` more, not the larger's: a key the
    smaller part lacks keeps its place in the larger one's ranking."""
    if not parts:
        return []
    if len(parts) == 1:
        only = parts[0].by_key
        return [(k, only[k]) for k in parts[0].ranked[:cnt] if only[k] > 0]
    if len(parts) > 2:
        raise ValueError("a period has at most two parts")
    large, small = sorted(parts, key=lambda p: p.rows, reverse=True)
    totals = {k: large.by_key.get(k, 0) + v for k, v in small.by_key.items()}
    kept = 0
    for k in large.ranked:
        if kept == cnt:
            break
        if k not in small.by_key:
            totals[k] = large.by_key[k]
            kept += 1
    best = sorted((k for k, v in totals.items() if v > 0), key=lambda k: (-totals[k], k))
    return [(k, totals[k]) for k in best[:cnt]]


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
