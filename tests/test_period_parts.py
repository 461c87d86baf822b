"""A period reaching today as two parts (api.period_parts): the split, and the top of their sum."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from api import period_parts
from api.period_parts import Ranked, add, add_by_key, split_at, top

TODAY = dt.date(2026, 12, 5)
YESTERDAY = dt.date(2026, 12, 4)
JAN, END = dt.date(2026, 1, 1), dt.date(9999, 12, 31)


@pytest.mark.parametrize(
    ("first", "last", "parts"),
    [
        (JAN, TODAY, [(JAN, YESTERDAY), (TODAY, TODAY)]),
        (JAN, END, [(JAN, YESTERDAY), (TODAY, END)]),
        (JAN, YESTERDAY, [(JAN, YESTERDAY)]),  # closed: one part
        (TODAY, TODAY, [(TODAY, TODAY)]),
        (dt.date(2026, 11, 28), TODAY, [(dt.date(2026, 11, 28), YESTERDAY), (TODAY, TODAY)]),  # a week before
        (dt.date(2026, 11, 29), TODAY, [(dt.date(2026, 11, 29), TODAY)]),  # less: one part
        (TODAY, dt.date(2026, 12, 31), [(TODAY, dt.date(2026, 12, 31))]),
        (dt.date(2027, 1, 1), dt.date(2027, 1, 2), [(dt.date(2027, 1, 1), dt.date(2027, 1, 2))]),
    ],
)
def test_a_period_is_split_before_today(first, last, parts):
    assert split_at(first, last, TODAY) == parts


def _brute_top(parts: list[dict[int, int]], cnt: int) -> list[tuple[int, int]]:
    summed: dict[int, int] = {}
    for part in parts:
        for key, value in part.items():
            summed[key] = summed.get(key, 0) + value
    return sorted(((k, v) for k, v in summed.items() if v > 0), key=lambda kv: (-kv[1], kv[0]))[:cnt]


@pytest.mark.parametrize("seed", range(200))
def test_the_top_of_two_parts_is_the_top_of_their_sum(seed):
    rng = random.Random(seed)
    keys = rng.randint(1, 60)
    closed = {k: rng.randint(-3, 12) for k in rng.sample(range(1, 100), keys)}  # ties, zeros, returns
    today = {k: rng.randint(-2, 9) for k in rng.sample(range(1, 100), rng.randint(0, 15))}
    cnt = rng.randint(1, 12)
    parts = [Ranked.of(closed.items()), Ranked.of(today.items())]
    assert top(parts, cnt) == _brute_top([closed, today], cnt)
    assert top(parts[::-1], cnt) == _brute_top([closed, today], cnt)
    assert top(parts[:1], cnt) == _brute_top([closed], cnt)


def test_a_key_today_lifts_past_the_closed_leaders():
    closed = Ranked.of({1: 10, 2: 9, 3: 8, 4: 1}.items())
    assert top([closed, Ranked.of([(4, 20)])], 2) == [(4, 21), (1, 10)]
    assert top([closed, Ranked.of([(1, -10)])], 2) == [(2, 9), (3, 8)]  # a return today drops the leader
    assert top([], 3) == []
    assert (closed.get(3), closed.get(5), len(closed)) == (8, None, 4)


def test_measures_add_up_by_key():
    assert add([{"income": 5, "units": 1}, {"income": 2, "units": 3}, {}]) == {"income": 7, "units": 4}
    months = add_by_key([{1: {"income": 5}}, {1: {"income": 1}, 2: {"income": 3}}])
    assert months == {1: {"income": 6}, 2: {"income": 3}}


def test_a_live_top_kept_as_the_day_grows_equals_the_top_of_the_sums():
    rng = random.Random(7)
    closed = period_parts.KeyedSums.of(
        {"key": k, "ranked_by": rng.randint(-5, 60), "units": rng.randint(-2, 9)} for k in range(1, 300)
    )
    day: dict[int, list[int]] = {}
    live = period_parts.LiveTop(closed, day, 7)
    for _ in range(2000):
        k = rng.randint(1, 320)  # some keys the closed days never had
        grown = day.setdefault(k, [0, 0])
        grown[0] += rng.randint(0, 9)
        grown[1] += rng.randint(1, 3)
        live.grown(k, grown)
        assert live.top() == period_parts.top_of_sums(closed, day, 7)
