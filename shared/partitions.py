"""Monthly partitions of `sales` (UTC months), made before any sale needs one.

The SQL function sales_partition(month) (migration 005) makes a month's partition if it is
missing; on Citus the new partition is distributed like its parent. The partitions of the
current month and the next two exist at all times (migration, then the worker's daily cron),
so the worker asks only for batches holding a sale outside the current month: sales from
tills that were offline, or from a month that was archived since.
"""
from __future__ import annotations

import datetime as dt

import asyncpg
import numpy as np

AHEAD_MONTHS = 2
ENSURE = "SELECT sales_partition(month) FROM unnest($1::date[]) AS month ORDER BY month"


def month_start(moment: dt.datetime | dt.date) -> dt.date:
    return dt.date(moment.year, moment.month, 1)


def add_months(month: dt.date, count: int) -> dt.date:
    index = month.year * 12 + month.month - 1 + count
    return dt.date(index // 12, index % 12 + 1, 1)


def months_between(start: dt.datetime, end: dt.datetime) -> list[dt.date]:
    """The UTC months from the one holding `start` to the one holding `end`."""
    month, last = (month_start(m.astimezone(dt.timezone.utc)) for m in (start, end))
    months = []
    while month <= last:
        months.append(month)
        month = add_months(month, 1)
    return months


def months_of(times_us: np.ndarray) -> list[dt.date]:
    """The distinct UTC months (first days) of Unix-microsecond times."""
    months = np.unique(np.asarray(times_us, dtype=np.int64).astype("datetime64[us]").astype("datetime64[M]"))
    return [m.astype("datetime64[D]").astype(dt.date) for m in months]


def months_outside_current(times_us: np.ndarray, now: dt.datetime | None = None) -> list[dt.date]:
    """The batch's months when any sale lies outside the current UTC month, else []."""
    now = now or dt.datetime.now(dt.timezone.utc)
    start = dt.datetime(now.year, now.month, 1, tzinfo=dt.timezone.utc)
    end = dt.datetime.combine(add_months(start.date(), 1), dt.time(), dt.timezone.utc)
    low, high = int(start.timestamp() * 1_000_000), int(end.timestamp() * 1_000_000)
    if len(times_us) == 0 or (times_us.min() >= low and times_us.max() < high):
        return []
    return months_of(times_us)


async def ensure(conn: asyncpg.Connection, months: list[dt.date]) -> None:
    """Make the partitions of `months` (first days) that are missing. Outside a transaction
    that writes sales: making a partition locks the whole table until commit."""
    if months:
        await conn.execute(ENSURE, sorted(set(months)))


async def ensure_ahead(conn: asyncpg.Connection, now: dt.datetime | None = None) -> None:
    """The current UTC month's partition and the next AHEAD_MONTHS'."""
    current = month_start((now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc))
    await ensure(conn, [add_months(current, n) for n in range(AHEAD_MONTHS + 1)])
