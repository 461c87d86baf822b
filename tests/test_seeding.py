"""The demo sale times: every day of the last 12 months alike, at shop hours, up to now."""

from __future__ import annotations

import collections
import datetime as dt
import statistics
import zoneinfo

import numpy as np
import pytest

from shared import rollups, seeded_rollups
from shared.seeding import WEEKDAY_HOURS, WEEKEND_FACTOR, month_starts, sale_times_us
from tests.recount import NO_DRIFT

UTC = dt.UTC
SALES = 200_000
OPEN_HOURS = range(8, 22)


def _local(times: np.ndarray, tz: zoneinfo.ZoneInfo) -> list[dt.datetime]:
    return [dt.datetime.fromtimestamp(int(t) / 1_000_000, tz) for t in times]


def _generate(now: dt.datetime, tz: str, count: int = SALES, seed: int = 1):
    zone = zoneinfo.ZoneInfo(tz)
    times = sale_times_us(count, now, zone, np.random.default_rng(seed))
    return times, _local(times, zone), zone


@pytest.mark.parametrize("tz", ["UTC", "Europe/Moscow", "America/New_York", "Asia/Kolkata"])
def test_times_stay_in_the_window_at_shop_hours(tz):
    now = dt.datetime(2026, 12, 2, 15, 45, tzinfo=UTC)
    times, local, zone = _generate(now, tz)
    assert times.dtype == np.int64 and len(times) == SALES
    assert (np.diff(times) >= 0).all(), "sorted"
    start = month_starts(now, zone)[0]
    assert start == dt.datetime(2026, 1, 1, tzinfo=zone)
    assert local[0] >= start and local[-1] <= now
    assert int(times[-1]) < int(now.timestamp() * 1_000_000)
    hours = collections.Counter(t.hour for t in local)
    assert set(hours) == set(OPEN_HOURS), f"sales at night: {sorted(set(hours) - set(OPEN_HOURS))}"
    assert hours[18] > 3 * hours[8] and hours[18] > hours[12] > hours[9], hours  # evening > lunch > morning
    # the same seed, the same data
    assert np.array_equal(times, sale_times_us(SALES, now, zone, np.random.default_rng(1)))


def test_weekends_sell_more_than_weekdays():
    now = dt.datetime(2026, 12, 2, 15, 45, tzinfo=UTC)
    _, local, _ = _generate(now, "UTC")
    per_day = collections.Counter(t.date() for t in local)
    full_days = [now.date() - dt.timedelta(days=n) for n in range(1, 330)]
    weekdays = statistics.mean(per_day[d] for d in full_days if d.weekday() < 5)
    weekends = statistics.mean(per_day[d] for d in full_days if d.weekday() >= 5)
    assert weekends / weekdays == pytest.approx(WEEKEND_FACTOR, rel=0.05)
    # and flatter: the busiest hour holds a smaller part of a weekend day than of a weekday
    by_hour = {
        weekend: collections.Counter(t.hour for t in local if (t.weekday() >= 5) == weekend)
        for weekend in (False, True)
    }
    peak_share = {weekend: max(c.values()) / sum(c.values()) for weekend, c in by_hour.items()}
    assert peak_share[True] < 0.85 * peak_share[False], peak_share


@pytest.mark.parametrize(
    "now", [dt.datetime(2026, 12, 2, 15, 45, tzinfo=UTC), dt.datetime(2026, 11, 13, 19, 30, tzinfo=UTC)]
)
def test_the_current_month_gets_the_days_so_far_not_a_whole_share(now):
    """On 2 December the daily chart is no tall bar: a day of December sells like any other."""
    _, local, _ = _generate(now, "UTC")
    per_day = collections.Counter(t.date() for t in local)
    first = now.date().replace(day=1)
    earlier = [first - dt.timedelta(days=n) for n in range(1, 300)]
    this_month = [first + dt.timedelta(days=n) for n in range((now.date() - first).days)]  # full days only
    earlier_weekday = statistics.mean(per_day[d] for d in earlier if d.weekday() < 5)
    this_month_weekday = statistics.mean(per_day[d] for d in this_month if d.weekday() < 5)
    assert this_month_weekday == pytest.approx(earlier_weekday, rel=0.1)
    # today is cut at now: it holds the share of the hours gone by, none of the rest
    today = sum(1 for t in local if t.date() == now.date())
    hours_gone = sum(WEEKDAY_HOURS[: now.hour]) + WEEKDAY_HOURS[now.hour] * now.minute / 60
    expected_today = earlier_weekday * hours_gone / sum(WEEKDAY_HOURS)
    assert now.weekday() < 5 and today == pytest.approx(expected_today, rel=0.2)
    # the months before share the rest by their days
    per_month = collections.Counter(t.date().replace(day=1) for t in local)
    for month in month_starts(now, zoneinfo.ZoneInfo("UTC"))[:-1]:
        days = ((month + dt.timedelta(days=32)).replace(day=1) - month).days
        assert per_month[month.date()] / days == pytest.approx(
            statistics.mean(per_day[d] for d in earlier), rel=0.06
        ), month


def test_before_opening_on_the_first_of_the_month_nothing_is_this_month():
    now = dt.datetime(2026, 12, 1, 7, 59, tzinfo=zoneinfo.ZoneInfo("Europe/Moscow"))
    times, local, _ = _generate(now, "Europe/Moscow", count=10_000)
    assert len(times) == 10_000
    assert local[0] >= dt.datetime(2026, 1, 1, 8, tzinfo=zoneinfo.ZoneInfo("Europe/Moscow"))
    assert max(local) < dt.datetime(2026, 11, 30, 22, tzinfo=zoneinfo.ZoneInfo("Europe/Moscow"))


@pytest.mark.parametrize("switch", [dt.date(2026, 3, 8), dt.date(2026, 11, 1)])  # New York's DST changes
def test_local_hours_are_right_across_dst_changes(switch):
    now = dt.datetime(2026, 12, 2, 15, 45, tzinfo=UTC)
    _, local, _zone = _generate(now, "America/New_York")
    around = [t for t in local if abs((t.date() - switch).days) <= 2]
    assert len(around) > 2_000
    for day in (switch - dt.timedelta(days=1), switch, switch + dt.timedelta(days=1)):
        hours = collections.Counter(t.hour for t in around if t.date() == day)
        assert set(hours) == set(OPEN_HOURS), (day, sorted(hours))  # opens at 8, last sale before 22
    # the offsets really differ across the switch: UTC hours of the first sales moved by an hour
    before = {t.utcoffset() for t in around if t.date() < switch}
    after = {t.utcoffset() for t in around if t.date() >= switch}
    assert len(before) == len(after) == 1 and before != after


def test_no_sales_and_a_single_sale():
    now = dt.datetime(2026, 6, 15, 12, tzinfo=UTC)
    assert len(sale_times_us(0, now, zoneinfo.ZoneInfo("UTC"), np.random.default_rng(1))) == 0
    [one] = sale_times_us(1, now, zoneinfo.ZoneInfo("UTC"), np.random.default_rng(1))
    assert dt.datetime(2025, 7, 1, 8, tzinfo=UTC).timestamp() * 1e6 <= one < now.timestamp() * 1e6


async def test_seeded_sales_are_at_shop_hours_in_postgresql_too(seed, db):
    """What PostgreSQL makes of the stored times in the report time zone, across both DST changes."""
    now = dt.datetime(2026, 11, 20, 18, tzinfo=UTC)
    await seed(items=2, stores=2, sales=20_000, tz="America/New_York", now=now)
    hours = await db.fetch(
        "SELECT extract(hour FROM sale_time AT TIME ZONE 'America/New_York')::int AS hour, "
        "count(*) AS n FROM sales GROUP BY 1 ORDER BY 1"
    )
    assert [r["hour"] for r in hours] == list(OPEN_HOURS)
    assert await db.fetchval("SELECT count(*) FROM sales") == 20_000
    assert await db.fetchval("SELECT min(sale_time) FROM sales") >= dt.datetime(
        2025, 12, 1, 8, tzinfo=zoneinfo.ZoneInfo("America/New_York")
    )
    assert await db.fetchval("SELECT max(sale_time) FROM sales") < now


@pytest.mark.parametrize("tz", ["America/New_York", "Australia/Lord_Howe"])  # DST of an hour; of half an hour
async def test_seeded_returns_and_every_rollup_match_a_recount(seed, db, tz):
    """About 2% of the demo sales come back, after their sale and before now; every rollup the
    seeder sums with numpy (days and hours cut across DST changes included) equals the recount."""
    now = dt.datetime(2026, 11, 20, 18, tzinfo=UTC)
    await seed(items=30, stores=4, sales=30_000, tz=tz, now=now)
    returns = await db.fetchval("SELECT count(*) FROM returns")
    assert 0.015 * 30_000 < returns < 0.025 * 30_000
    assert (
        await db.fetchval(
            "SELECT count(*) FROM returns r JOIN sales s ON s.id = r.sale_id "
            "WHERE r.return_time < s.sale_time OR r.item_id <> s.item_id OR r.price <> s.price "
            "OR r.return_time > $1",
            now,
        )
        == 0
    )
    in_own_store = await db.fetchval(
        "SELECT count(*) FROM returns r JOIN sales s ON s.id = r.sale_id WHERE r.store_id = s.store_id"
    )
    assert in_own_store > 0.85 * returns
    assert await db.fetchval("SELECT count(*) FROM sale_returned") == returns
    assert await db.fetchval("SELECT count(*) FROM hourly_totals") > 0
    assert await rollups.drift(db) == NO_DRIFT


async def test_rollups_loaded_in_many_copies_match_a_recount(seed, db, monkeypatch):
    """At 10 million sales the rollups go in by COPYs of a million rows, built by a thread while
    the one before loads: chunks cut mid-table (7 rows here) lose and repeat no row."""
    monkeypatch.setattr(seeded_rollups, "COPY_ROWS", 7)
    await seed(items=30, stores=4, sales=3_000, tz="America/New_York", now=dt.datetime(2026, 11, 20, 18, tzinfo=UTC))
    assert await db.fetchval("SELECT count(*) FROM store_item_daily") > 100 * 7
    assert await rollups.drift(db) == NO_DRIFT
