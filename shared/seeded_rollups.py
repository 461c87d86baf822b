"""The seeder's own rollups: the per-day ones computed by numpy from the sales it generates.

`store_item_daily` has about a row per sale for demo data (a store sells a few dozen random
items of 10,000 a day), and the running totals a row per item (or store) and day: recomputed
from 10 million sales by SQL they took 155 s and 39 s, where the seeder must finish in under a
minute. Here the same rows are summed with numpy from the arrays the sales were written from
and loaded by binary COPY. They must equal what `shared.rollups` computes (same days, cut in
the same zone, same running-total rule); the tests compare them with `rollups.drift`.
"""
from __future__ import annotations

import datetime as dt
import zoneinfo

import asyncpg
import numpy as np

from shared import sales_copy

FILLED = frozenset({"store_item_daily", "store_running", "item_running"})
PG_EPOCH_DAY = dt.date(2000, 1, 1).toordinal()  # binary COPY's day zero


def _day_starts_us(first: dt.date, last: dt.date, tz: zoneinfo.ZoneInfo) -> np.ndarray:
    """Unix µs of each local midnight from `first` to the day after `last` (a midnight that a DST
    change skips starts its day at the change, as PostgreSQL's AT TIME ZONE cuts it)."""
    days = (last - first).days + 2
    return np.array([int(dt.datetime.combine(first + dt.timedelta(days=n), dt.time(), tz).timestamp()) * 1_000_000
                     for n in range(days)], dtype=np.int64)


class SeededDays:
    """The generated sales by local day: day index of each sale, from `first` to `through`."""

    def __init__(self, times_us: np.ndarray, tz: zoneinfo.ZoneInfo, through: dt.date | None):
        self.first = dt.datetime.fromtimestamp(int(times_us[0]) / 1e6, tz).date()
        last = dt.datetime.fromtimestamp(int(times_us[-1]) / 1e6, tz).date()
        self.through = max(last, through) if through else last
        starts = _day_starts_us(self.first, self.through, tz)
        self.count = len(starts) - 1
        self.index = np.searchsorted(starts, times_us, side="right") - 1  # times are sorted

    def pg_days(self, index: np.ndarray) -> np.ndarray:
        return index + (self.first.toordinal() - PG_EPOCH_DAY)


def _copy_data(columns: list[tuple[str, str, np.ndarray]]) -> bytes:
    """Binary COPY rows of (name, '>i4' or '>i8', values) columns, none NULL."""
    dtype = [("fields", ">i2")]
    for name, kind, _ in columns:
        dtype += [(name + "_len", ">i4"), (name, kind)]
    rows = np.empty(len(columns[0][2]), dtype=dtype)
    rows["fields"] = len(columns)
    for name, kind, values in columns:
        rows[name + "_len"] = 4 if kind == ">i4" else 8
        rows[name] = values
    return sales_copy.HEADER + rows.tobytes() + sales_copy.TRAILER


def _sums(keys: np.ndarray, size: int | None, income: np.ndarray) -> tuple[np.ndarray, ...]:
    """Income, units (= sales: the seeder sells one of each) per key value, in integers."""
    units = np.bincount(keys, minlength=size or 0)
    # bincount adds weights as float64: exact while every sum stays below 2**53
    if int(income.sum()) >= 2**53:
        raise ValueError("seeded income too large to be summed exactly")
    return np.bincount(keys, weights=income, minlength=size or 0).astype(np.int64), units, units


def store_item_daily(days: SeededDays, store_ids: np.ndarray, item_ids: np.ndarray, income: np.ndarray,
                     stores: int, items: int) -> bytes:
    keys = (days.index * stores + (store_ids - 1)) * items + (item_ids - 1)
    unique, inverse = np.unique(keys, return_inverse=True)
    income_sum, units, sales = _sums(inverse, None, income)
    day, rest = np.divmod(unique, stores * items)
    store, item = np.divmod(rest, items)
    return _copy_data([("day", ">i4", days.pg_days(day)), ("store_id", ">i4", store + 1),
                       ("item_id", ">i4", item + 1), ("income", ">i8", income_sum), ("units", ">i8", units),
                       ("sales", ">i8", sales)])


def running(days: SeededDays, key_ids: np.ndarray, income: np.ndarray, keys: int, key_name: str) -> bytes:
    """Running totals per key and day, from each key's first sale to `days.through`."""
    cells = (key_ids - 1) * days.count + days.index
    sums = [np.cumsum(s.reshape(keys, days.count), axis=1) for s in _sums(cells, keys * days.count, income)]
    # from the key's first sale on; day by day, as the worker adds them: a report reads one day's
    # rows, which then share a few hundred pages instead of one page each
    day, key = np.nonzero((sums[2] > 0).T)
    return _copy_data([("day", ">i4", days.pg_days(day)), (key_name, ">i4", key + 1),
                       *((name, ">i8", s[key, day]) for name, s in zip(("income", "units", "sales"), sums))])


async def load(conn: asyncpg.Connection, times_us: np.ndarray, item_ids: np.ndarray, store_ids: np.ndarray,
               income: np.ndarray, items: int, stores: int, freeze: bool) -> None:
    """Fill FILLED from the seeded sales (sorted by time), inside the seeder's transaction, after
    it emptied them; sets running_through (which never goes back)."""
    if len(times_us) == 0:
        return
    # the zone the rollups are cut in, whatever the caller was configured with
    zone, through = await conn.fetchrow("SELECT timezone, running_through FROM report_settings")
    days = SeededDays(times_us, zoneinfo.ZoneInfo(zone), through)
    await conn.execute("UPDATE report_settings SET running_through = $1", days.through)
    for table, data in (
            ("store_item_daily", store_item_daily(days, store_ids, item_ids, income, stores, items)),
            ("store_running", running(days, store_ids, income, stores, "store_id")),
            ("item_running", running(days, item_ids, income, items, "item_id"))):
        columns = ["day", "store_id", "item_id"] if table == "store_item_daily" else \
            ["day", "store_id" if table == "store_running" else "item_id"]
        await conn.copy_to_table(table, source=memoryview(data), columns=[*columns, "income", "units", "sales"],
                                 format="binary", freeze=freeze)
