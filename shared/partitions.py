"""Monthly partitions of `sales` (UTC months), made before any sale needs one.

The SQL function sales_partition(month) (migration 005) makes a month's partition if it is
missing; on Citus the new partition is distributed like its parent. The partitions of the
current month and the next two exist at all times (migration, then the worker's hourly cron),
so the worker asks only for batches holding a sale outside the current month: sales from
tills that were offline, or from a month that was archived since.
"""

from __future__ import annotations

import datetime as dt

import asyncpg
import numpy as np

AHEAD_MONTHS = 2
ENSURE = "SELECT sales_partition(month) FROM unnest($1::date[]) AS month ORDER BY month"
ARCHIVED = "SELECT month FROM archived_months WHERE month = ANY($1::date[])"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def month_start(moment: dt.datetime | dt.date) -> dt.date:
    return dt.date(moment.year, moment.month, 1)


def add_months(month: dt.date, count: int) -> dt.date:
    index = month.year * 12 + month.month - 1 + count
    return dt.date(index // 12, index % 12 + 1, 1)


def months_between(start: dt.datetime, end: dt.datetime) -> list[dt.date]:
    """The UTC months from the one holding `start` to the one holding `end`."""
    month, last = (month_start(m.astimezone(dt.UTC)) for m in (start, end))
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
    now = now or dt.datetime.now(dt.UTC)
    start = dt.datetime(now.year, now.month, 1, tzinfo=dt.UTC)
    end = dt.datetime.combine(add_months(start.date(), 1), dt.time(), dt.UTC)
    low, high = int(start.timestamp() * 1_000_000), int(end.timestamp() * 1_000_000)
    if len(times_us) == 0 or (times_us.min() >= low and times_us.max() < high):
        return []
    return months_of(times_us)


def month_of_us(time_us: int) -> dt.date:
    """The UTC month (first day) of a Unix-microsecond time."""
    return month_start(_EPOCH + dt.timedelta(microseconds=int(time_us)))


async def ensure(conn: asyncpg.Connection, months: list[dt.date]) -> set[dt.date]:
    """Make the partitions of `months` (first days) that are missing, except for months that
    shared.retention archived: those are returned, not made again. Their sales are kept only
    in the archive file and the archived rollups, so a late or redelivered sale of such a
    month cannot be told from one already counted; the writer files it as a dead letter.
    Outside a transaction that writes sales: making a partition locks the table until commit."""
    if not months:
        return set()
    months = sorted(set(months))
    archived = {r["month"] for r in await conn.fetch(ARCHIVED, months)}
    live = [month for month in months if month not in archived]
    if live:
        await conn.execute(ENSURE, live)
    return archived


async def ensure_ahead(conn: asyncpg.Connection, now: dt.datetime | None = None) -> None:
    """The current UTC month's partition and the next AHEAD_MONTHS'."""
    current = month_start((now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC))
    await ensure(conn, [add_months(current, n) for n in range(AHEAD_MONTHS + 1)])
