"""The seeder's own rollups: computed by numpy from the sales and returns it generates.

Demo data has about a row of `store_item_daily` per sale (a store sells a few dozen random
items of 10,000 a day), a row of `store_hourly` per two, and the running totals a row per item
(or store) and day: recomputed from 10 million sales by SQL, store_item_daily alone took 155 s
and the running totals 39 s, where the seeder must finish in under a minute. Here every rollup
but the months (summed from the days by SQL, shared.rollups.rebuild) is summed with numpy from
the arrays the sales and returns were written from, and loaded by binary COPY. They must equal
what `shared.rollups` computes (same days and hours, cut in the same zone, same running-total
rule); the tests compare them with `rollups.drift`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import threading
import zoneinfo
from collections.abc import Callable, Iterator
from typing import cast

import asyncpg
import numpy as np

from shared import sales_copy

FILLED = frozenset(
    {
        "item_totals",
        "daily_totals",
        "store_item_daily",
        "hourly_totals",
        "store_hourly",
        "store_running",
        "item_running",
    }
)
MEASURES = ("income", "units", "sales", "returns", "refunds")
PG_EPOCH_DAY = dt.date(2000, 1, 1).toordinal()  # binary COPY's day zero
_DAY_US = 86_400_000_000
_HOUR_US = 3_600_000_000
COPY_ROWS = 1_000_000


@dataclasses.dataclass
class Moves:
    """Sales and returns as one set of columns: a return takes back its income and units."""

    times_us: np.ndarray
    store_ids: np.ndarray
    item_ids: np.ndarray
    measures: dict[str, np.ndarray]  # MEASURES -> int64 per move

    @classmethod
    def of(cls, sales: tuple[np.ndarray, ...], returns: tuple[np.ndarray, ...]) -> Moves:
        """`sales`, `returns`: (times_us, store_ids, item_ids, prices, quantities) each."""
        (s_times, s_stores, s_items, s_prices, s_qty), (r_times, r_stores, r_items, r_prices, r_qty) = sales, returns
        s_money, r_money = s_prices * s_qty, r_prices * r_qty
        zeros, ones = np.zeros, np.ones
        return cls(
            np.concatenate([s_times, r_times]),
            np.concatenate([s_stores, r_stores]),
            np.concatenate([s_items, r_items]),
            {
                "income": np.concatenate([s_money, -r_money]),
                "units": np.concatenate([s_qty, -r_qty]),
                "sales": np.concatenate([ones(len(s_times), np.int64), zeros(len(r_times), np.int64)]),
                "returns": np.concatenate([zeros(len(s_times), np.int64), ones(len(r_times), np.int64)]),
                "refunds": np.concatenate([zeros(len(s_times), np.int64), r_money]),
            },
        )


def utc_offsets_us(times_us: np.ndarray, tz: zoneinfo.ZoneInfo) -> np.ndarray:
    """The zone's UTC offset at each moment, exactly: the offset at each day boundary, and where
    two days' differ, the instant of the change found by bisection to the microsecond."""
    first, last = int(times_us.min()), int(times_us.max())

    def offset(us: int) -> int:
        moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)
        utc_offset = cast(dt.timedelta, moment.astimezone(tz).utcoffset())  # an aware moment's: never None
        return int(utc_offset // dt.timedelta(microseconds=1))

    changes, offsets = [first], [offset(first)]
    for start in range(first, last + 1, _DAY_US):
        end = min(start + _DAY_US, last)
        if offset(end) != offsets[-1]:  # one change within this day (zones change at most twice a year)
            low, high = start, end
            while high - low > 1:
                middle = (low + high) // 2
                low, high = (middle, high) if offset(middle) == offsets[-1] else (low, middle)
            changes.append(high)
            offsets.append(offset(high))
    return np.array(offsets, dtype=np.int64)[np.searchsorted(np.array(changes), times_us, side="right") - 1]


class SeededDays:
    """The moves by local day and hour: day index of each, from `first` to `through`."""

    def __init__(self, times_us: np.ndarray, tz: zoneinfo.ZoneInfo, through: dt.date | None):
        local_us = times_us + utc_offsets_us(times_us, tz)  # what AT TIME ZONE gives
        epoch_days = local_us // _DAY_US
        self.first = dt.date(1970, 1, 1) + dt.timedelta(days=int(epoch_days.min()))
        last = dt.date(1970, 1, 1) + dt.timedelta(days=int(epoch_days.max()))
        self.through = max(last, through) if through else last
        self.count = (self.through - self.first).days + 1
        self.index = epoch_days - (self.first - dt.date(1970, 1, 1)).days
        self.hour = (local_us % _DAY_US) // _HOUR_US

    def pg_days(self, index: np.ndarray) -> np.ndarray:
        return index + (self.first.toordinal() - PG_EPOCH_DAY)


def copy_data(columns: list[sales_copy.Column], rows: int | None = None) -> bytes:
    """Binary COPY data of (name, '>i2', '>i4' or '>i8', values) columns (sales_copy.fixed_rows).
    Without `rows`, the first column holds an array of them."""
    count = rows if rows is not None else len(cast(np.ndarray, columns[0][2]))
    return sales_copy.HEADER + sales_copy.fixed_rows(columns, count) + sales_copy.TRAILER


def copy_chunks(columns: list[tuple[str, str, np.ndarray]]) -> Iterator[bytes]:
    """copy_data of at most COPY_ROWS rows at a time: PostgreSQL starts on the first while numpy
    builds the next."""
    rows = len(columns[0][2])
    for low in range(0, rows, COPY_ROWS):
        yield copy_data([(name, kind, values[low : low + COPY_ROWS]) for name, kind, values in columns])


def _sums(cells: np.ndarray, size: int | None, moves: Moves) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Moves per cell, and each measure summed per cell, in integers."""
    sums = {}
    for name, values in moves.measures.items():
        # bincount adds weights as float64: exact while every sum stays below 2**53
        if int(np.abs(values).sum()) >= 2**53:
            raise ValueError(f"seeded {name} too large to be summed exactly")
        sums[name] = np.bincount(cells, weights=values, minlength=size or 0).round().astype(np.int64)
    return np.bincount(cells, minlength=size or 0), sums


def _measure_columns(sums: dict[str, np.ndarray], where) -> list[tuple[str, str, np.ndarray]]:
    return [(name, ">i8", sums[name][where]) for name in MEASURES]


def running(days: SeededDays, key_ids: np.ndarray, keys: int, key_name: str, moves: Moves) -> Iterator[bytes]:
    """Running totals per key and day, from each key's first move to `days.through`."""
    counts, sums = _sums((key_ids - 1) * days.count + days.index, keys * days.count, moves)
    started = np.cumsum(counts.reshape(keys, days.count), axis=1) > 0
    totals = {name: np.cumsum(s.reshape(keys, days.count), axis=1) for name, s in sums.items()}
    # day by day, as the worker adds them: a report reads one day's rows, which then share a few
    # hundred pages instead of one page each
    day, key = np.nonzero(started.T)
    return copy_chunks(
        [
            ("day", ">i4", days.pg_days(day)),
            (key_name, ">i4", key + 1),
            *((name, ">i8", totals[name][key, day]) for name in MEASURES),
        ]
    )


def tables(days: SeededDays, moves: Moves, items: int, stores: int) -> Iterator[tuple[str, list[str], bytes]]:
    """Every FILLED table's name, columns and binary COPY data (in chunks: a table may come
    several times), the largest first (see RollupData)."""
    day = ("day", ">i4", days.index, days.count)
    hour = ("hour", ">i2", days.hour, 24)
    store = ("store_id", ">i4", moves.store_ids - 1, stores)
    item = ("item_id", ">i4", moves.item_ids - 1, items)
    one_based = {"store_id", "item_id"}

    def sparse(keys: list[tuple[str, str, np.ndarray, int]]) -> tuple[list[str], Callable[[], Iterator[bytes]]]:
        return [name for name, _, _, _ in keys], lambda: _sparse_rows(days, moves, keys, one_based)

    def running_of(key_name: str, key_ids: np.ndarray, keys: int) -> tuple[list[str], Callable[[], Iterator[bytes]]]:
        return ["day", key_name], lambda: running(days, key_ids, keys, key_name, moves)

    layouts = {
        "store_item_daily": sparse([store, day, item]),
        "store_hourly": sparse([store, day, hour]),
        "item_running": running_of("item_id", moves.item_ids, items),
        "daily_totals": sparse([day, store]),
        "store_running": running_of("store_id", moves.store_ids, stores),
        "hourly_totals": sparse([day, hour]),
        "item_totals": sparse([item]),
    }
    for table, (columns, chunks) in layouts.items():
        for data in chunks():
            yield table, columns + list(MEASURES), data


def _sparse_rows(
    days: SeededDays, moves: Moves, keys: list[tuple[str, str, np.ndarray, int]], one_based: set[str]
) -> Iterator[bytes]:
    """A rollup's rows, one per combination of `keys` ((column, kind, 0-based values, how many
    values)) that had a move."""
    cell = np.zeros(len(moves.times_us), dtype=np.int64)
    for _, _, values, size in keys:
        cell = cell * size + values
    unique, inverse = np.unique(cell, return_inverse=True)
    _, sums = _sums(inverse, None, moves)
    columns = []
    for name, kind, _, size in keys[::-1]:
        unique, value = np.divmod(unique, size)
        if name == "day":
            value = days.pg_days(value)
        elif name in one_based:
            value = value + 1
        columns.append((name, kind, value))
    return copy_chunks([*columns[::-1], *_measure_columns(sums, slice(None))])


class RollupData:
    """FILLED's COPY data, built by numpy in a thread from the moment `start` returns, while the
    seeder's connection loads the sales; `copy_into` loads each chunk as it is ready. At 10
    million sales the numpy side takes about 20 s, and so does PostgreSQL's: one after the
    other they took 41 s."""

    def __init__(self, moves: Moves, zone: zoneinfo.ZoneInfo, through: dt.date | None, items: int, stores: int):
        self._loop = asyncio.get_running_loop()
        self._built: asyncio.Queue[tuple[str, list[str], bytes] | None] = asyncio.Queue()
        self._stop = threading.Event()
        self._days: SeededDays | None = None
        self._builder = self._loop.run_in_executor(None, self._build, moves, zone, through, items, stores)

    @classmethod
    async def start(cls, conn: asyncpg.Connection, moves: Moves, items: int, stores: int) -> RollupData:
        # the zone the rollups are cut in, whatever the caller was configured with
        zone, through = await conn.fetchrow("SELECT timezone, running_through FROM report_settings")
        return cls(moves, zoneinfo.ZoneInfo(zone), through, items, stores)

    def _build(self, moves: Moves, zone: zoneinfo.ZoneInfo, through: dt.date | None, items: int, stores: int) -> None:
        try:
            if len(moves.times_us) == 0:
                return
            self._days = SeededDays(moves.times_us, zone, through)
            for table in tables(self._days, moves, items, stores):
                if self._stop.is_set():
                    return
                self._loop.call_soon_threadsafe(self._built.put_nowait, table)
        finally:
            self._loop.call_soon_threadsafe(self._built.put_nowait, None)

    async def copy_into(self, conn: asyncpg.Connection, freeze: bool) -> None:
        """Fill FILLED, inside the seeder's transaction, after it emptied them; sets
        running_through (which never goes back)."""
        while (table := await self._built.get()) is not None:
            name, columns, data = table
            await conn.copy_to_table(name, source=memoryview(data), columns=columns, format="binary", freeze=freeze)
        await self._builder  # its exception, if it failed
        if self._days is not None:
            await conn.execute("UPDATE report_settings SET running_through = $1", self._days.through)

    async def stop(self) -> None:
        """Wait for the thread (told to stop after its current table, if copy_into did not end)."""
        self._stop.set()
        with contextlib.suppress(Exception):  # copy_into raised it already, or the load failed first
            await self._builder
