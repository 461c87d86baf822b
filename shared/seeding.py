"""Demo data: items, stores and sales over the 12 months ending with the current one, up to now,
every day alike at shop hours (see `sale_times_us`).

Used by GET/POST /create/ and by `python -m shared.seed`. Sales are generated with numpy and
loaded with a binary COPY FREEZE into each monthly partition (made first; on Citus one COPY
into the distributed parent);
the primary and foreign keys of sales are dropped for the load and added back (validated) at
the end, which is PostgreSQL's own advice for bulk loads: 3 million sales loaded in 12 s
instead of 17. About 2% of the sales come back within two weeks (`returns_of`). Every rollup
but the months is summed by numpy from the same arrays (shared.seeded_rollups) and loaded the
same way; the months are summed from the days by SQL (shared.rollups.rebuild). Everything
happens in one transaction: readers see the old data or the new, never half of it. The same
code seeds a Citus coordinator (COPY spreads the rows over the shards; the keys are dropped and
added on every shard).
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import AsyncIterator, Callable

import asyncpg
import numpy as np

from shared import citus, partitions, rollups, sales_copy, seeded_rollups
from shared.sale_ids import BLOCK, reserve_blocks

CHUNK = 250_000
DATA_TABLES = (
    "sales, sale_keys, till_progress, returns, sale_returned, dead_letter, store_monthly, item_totals, daily_totals, "
    "store_item_daily, hourly_totals, store_hourly, store_running, item_running, store_running_late, "
    "item_running_late, chain_deltas, store_monthly_archived, "
    "item_totals_archived, daily_totals_archived, store_item_daily_archived, hourly_totals_archived, "
    "store_hourly_archived, archived_months, item_price, item, store"
)
CATALOGUE_IN_READING_ORDER = "LOCK TABLE item, store, item_price, archived_months IN ACCESS EXCLUSIVE MODE"
# Catalogue and rollups are replaced: every API process reloads and drops its cached reports.
# (Triggers say so on plain PostgreSQL; Citus's reference and distributed tables have none.)
NOTIFY_ALL_CHANGED = "SELECT pg_notify('catalogue_changed', ''), pg_notify('reports_changed', '')"

Progress = Callable[[int], None]


def month_starts(now: dt.datetime, tz: zoneinfo.ZoneInfo, months: int = 12) -> list[dt.datetime]:
    """Local midnights starting the `months` months that end with the current one."""
    local = now.astimezone(tz)
    year, month = local.year, local.month
    starts = []
    for _ in range(months):
        starts.append(dt.datetime(year, month, 1, tzinfo=tz))
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return starts[::-1]


# Sales per local hour of the day (relative weights; 0: closed). Stores open 08:00-22:00, with a
# lunch peak (12-14) and a bigger evening peak (17-19) on weekdays; Saturdays and Sundays are
# flatter and later, with most of the day from late morning to early evening.
# local hour:     0   1   2   3   4   5   6   7   8   9  10  11  12  13  14  15  16  17  18  19  20  21  22  23
WEEKDAY_HOURS = (0, 0, 0, 0, 0, 0, 0, 0, 2, 3, 4, 5, 8, 8, 5, 4, 6, 10, 12, 9, 5, 3, 0, 0)
WEEKEND_HOURS = (0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 4, 6, 8, 9, 8, 7, 7, 9, 10, 8, 6, 4, 0, 0)
WEEKEND_FACTOR = 1.3  # a Saturday or Sunday sells this many times a weekday
_HOUR_US = 3_600_000_000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _profiles() -> np.ndarray:
    """[weekday, weekend] x 24 hours: each day's expected share of one weekday's sales."""
    weekday, weekend = np.array(WEEKDAY_HOURS, dtype=np.float64), np.array(WEEKEND_HOURS, dtype=np.float64)
    return np.stack([weekday / weekday.sum(), weekend / weekend.sum() * WEEKEND_FACTOR])


def sale_times_us(count: int, now: dt.datetime, tz: zoneinfo.ZoneInfo, rng: np.random.Generator) -> np.ndarray:
    """`count` sorted sale times (Unix µs) from local midnight of `month_starts(now, tz)[0]` up to `now`.

    Every day of that window has the same expected number of sales, times WEEKEND_FACTOR on
    Saturdays and Sundays; within a day the local hours (in `tz`) follow WEEKDAY_HOURS or
    WEEKEND_HOURS, uniform within each hour. Today counts only up to `now`: its share is cut
    there, not squeezed into the hours so far, and no sale is later than `now`. The count of
    each (day, hour) is one multinomial draw, so the total is exactly `count`.

    Local hours become UTC with each day's UTC offset at local noon, which is right for every
    open hour: DST changes at night (02:00 or 03:00, or midnight in a few zones), when stores
    are closed, so a day of 23 or 25 hours still sells from 08:00 to 22:00 local time.
    """
    if count <= 0:
        return np.empty(0, dtype=np.int64)
    first = month_starts(now, tz)[0].date()
    now_us = (now - _EPOCH) // dt.timedelta(microseconds=1)
    days = (now.astimezone(tz).date() - first).days + 1
    midnights, weekend = np.empty(days, dtype=np.int64), np.empty(days, dtype=bool)
    for i in range(days):
        noon = dt.datetime.combine(first + dt.timedelta(days=i), dt.time(12), tz)
        midnights[i] = int(noon.timestamp() * 1_000_000) - 12 * _HOUR_US  # Unix µs at local 00:00
        weekend[i] = noon.weekday() >= 5
    starts = (midnights[:, None] + np.arange(24, dtype=np.int64) * _HOUR_US).ravel()
    lengths = np.clip(now_us - starts, 0, _HOUR_US)  # full hours; today's are cut at now
    weights = _profiles()[weekend.astype(np.intp)].ravel() * (lengths / _HOUR_US)
    per_hour = rng.multinomial(count, weights / weights.sum())
    times = np.repeat(starts, per_hour)
    # u * (length - 1) rounds to at most length - 1 (an exact float): never past the hour, nor now
    times += (rng.random(count) * np.repeat(lengths - 1, per_hour)).astype(np.int64)
    times.sort()
    return times


RETURN_SHARE = 0.02  # of sales, some part of which comes back
RETURN_WITHIN_DAYS = 14


def returns_of(times: np.ndarray, now_us: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Which sales (indexes into `times`) come back, and when: the same time of day (plus up to
    half an hour) 0 to 13 days later, so at opening hours too; none later than now."""
    picked = np.flatnonzero(rng.random(len(times)) < RETURN_SHARE)
    later = rng.integers(0, RETURN_WITHIN_DAYS, size=len(picked)) * 86_400_000_000 + rng.integers(
        1, 1_800_000_000, size=len(picked)
    )
    return_times = times[picked] + later
    kept = return_times <= now_us
    return picked[kept], return_times[kept]


async def _copy_returns(
    conn: asyncpg.Connection,
    ids: np.ndarray,
    sale_ids: np.ndarray,
    times_us: np.ndarray,
    store_ids: np.ndarray,
    item_ids: np.ndarray,
    prices: np.ndarray,
) -> None:
    """The returns (of one unit: the seeder sells one of each) and what they take back of each sale."""
    if not len(ids):
        return
    i8, i4 = ">i8", ">i4"
    await conn.copy_to_table(
        "returns",
        format="binary",
        source=memoryview(
            seeded_rollups.copy_data(
                [
                    ("id", i8, ids),
                    ("sale_id", i8, sale_ids),
                    ("return_time", i8, times_us - sales_copy.PG_EPOCH_US),
                    ("store_id", i4, store_ids),
                    ("item_id", i4, item_ids),
                    ("price", i4, prices),
                    ("quantity", i4, 1),
                    ("idempotency_key", None, None),
                    ("accepted_at", i8, times_us - sales_copy.PG_EPOCH_US),
                ],
                rows=len(ids),
            )
        ),
        columns=[
            "id",
            "sale_id",
            "return_time",
            "store_id",
            "item_id",
            "price",
            "quantity",
            "idempotency_key",
            "accepted_at",
        ],
    )
    await conn.copy_to_table(
        "sale_returned",
        format="binary",
        columns=["sale_id", "sold", "returned"],
        source=memoryview(
            seeded_rollups.copy_data([("sale_id", i8, sale_ids), ("sold", i4, 1), ("returned", i4, 1)], rows=len(ids))
        ),
    )


async def _reserve_ids(conn: asyncpg.Connection, count: int) -> np.ndarray:
    starts = np.array(await reserve_blocks(conn, -(-count // BLOCK)) if count else [], dtype=np.int64)
    return (starts[:, None] + np.arange(BLOCK, dtype=np.int64)).ravel()[:count]


async def _sale_chunks(
    ids: np.ndarray,
    times: np.ndarray,
    item_ids: np.ndarray,
    store_ids: np.ndarray,
    prices: np.ndarray,
    progress: Progress | None,
) -> AsyncIterator[bytes]:
    """The sales as binary COPY data (`prices`: of each sale)."""
    count = len(ids)
    yield sales_copy.HEADER
    for lo in range(0, count, CHUNK):
        hi = min(count, lo + CHUNK)
        yield sales_copy.unkeyed_rows(
            ids[lo:hi],
            times[lo:hi],
            item_ids[lo:hi],
            store_ids[lo:hi],
            prices[lo:hi],
            quantities=1,
            accepted_us=times[lo:hi],
            list_prices=prices[lo:hi],  # seeded sales are charged their list price
        )
        if progress:
            progress(hi - lo)
    yield sales_copy.TRAILER


async def _copy_by_month(
    conn: asyncpg.Connection,
    ids: np.ndarray,
    times: np.ndarray,
    item_ids: np.ndarray,
    store_ids: np.ndarray,
    prices: np.ndarray,
    progress: Progress | None,
) -> None:
    """One COPY FREEZE per monthly partition (`times` sorted): they were emptied in this
    transaction, so the rows can be written frozen, and the rollup rebuild and ANALYZE that
    read them next do not write every page again to set hint bits (FREEZE is refused on the
    partitioned parent)."""
    months = partitions.months_of(times)
    starts = [int(dt.datetime.combine(m, dt.time(), dt.UTC).timestamp() * 1_000_000) for m in months]
    bounds = [*np.searchsorted(times, starts[1:]).tolist(), len(times)]
    low = 0
    for month, high in zip(months, bounds):
        partition = await conn.fetchval("SELECT sales_partition($1)", month)
        part = slice(low, high)
        await conn.copy_to_table(
            partition,
            columns=sales_copy.COLUMNS,
            format="binary",
            freeze=True,
            source=_sale_chunks(ids[part], times[part], item_ids[part], store_ids[part], prices[part], progress),
        )
        low = high


async def _keys(conn: asyncpg.Connection, table: str) -> list[tuple[str, str]]:
    """The primary key, then the foreign keys of `table`: (name, definition)."""
    return [
        (r["conname"], r["definition"])
        for r in await conn.fetch(
            "SELECT conname, pg_get_constraintdef(oid) AS definition FROM pg_constraint "
            "WHERE conrelid = $1::regclass AND contype IN ('p', 'f') AND conparentid = 0 "
            "ORDER BY contype DESC, conname",
            table,
        )
    ]


async def clear(conn: asyncpg.Connection) -> None:
    """Empty every table (inside the caller's transaction). Sale ids keep counting up."""
    await conn.execute(rollups.LOCK_RUNNING_EXCLUSIVE)  # first: writers take it before any table
    # Then the catalogue in the order an API process's reload reads it (api.catalogue): TRUNCATE
    # takes its tables in its list's order, and a reload holding item and store while it waited
    # for item_price deadlocked a /create/ (seen under load in the suite).
    await conn.execute(CATALOGUE_IN_READING_ORDER)
    await conn.execute(f"TRUNCATE {DATA_TABLES}")
    await conn.execute("UPDATE report_settings SET running_through = NULL")
    # setval, not ALTER SEQUENCE ... RESTART: Citus cannot alter a distributed sequence
    await conn.execute("SELECT setval('item_id_seq', 1, false), setval('store_id_seq', 1, false)")
    await conn.execute(NOTIFY_ALL_CHANGED)


async def seed(
    conn: asyncpg.Connection,
    *,
    items: int = 50,
    stores: int = 50,
    sales: int = 3600,
    tz: zoneinfo.ZoneInfo,
    now: dt.datetime | None = None,
    seed: int | None = None,
    progress: Progress | None = None,
) -> dict[str, int]:
    """Replace all data with `items` items, `stores` stores and `sales` sales."""
    if items < 1 or stores < 1 or sales < 0:
        raise ValueError("need at least one item and one store, and no negative sale count")
    now = now or dt.datetime.now(dt.UTC)
    now_us = (now - _EPOCH) // dt.timedelta(microseconds=1)
    rng = np.random.default_rng(seed)
    prices = rng.integers(100, 5_000, size=items, dtype=np.int64)
    await partitions.ensure(conn, partitions.months_between(month_starts(now, tz)[0], now))
    async with conn.transaction():
        await clear(conn)
        await conn.copy_records_to_table(
            "item", columns=["name", "price"], records=((f"item-{i}", int(p)) for i, p in enumerate(prices, start=1))
        )
        await conn.copy_records_to_table(
            "store", columns=["address"], records=((f"store-{i}",) for i in range(1, stores + 1))
        )
        # the keys go while the tables are loaded and come back (checked) at the end
        keys = [
            (table, name, definition)
            for table in ("sales", *sorted(seeded_rollups.FILLED))
            for name, definition in await _keys(conn, table)
        ]
        for table, name, _ in keys[::-1]:
            await conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
        times = sale_times_us(sales, now, tz, rng)  # sorted
        item_ids = rng.integers(1, items + 1, size=sales)
        store_ids = rng.integers(1, stores + 1, size=sales)
        sale_prices = prices[item_ids - 1]
        returned, return_times = returns_of(times, now_us, rng)
        # most come back to the store they were bought in, some to another one
        return_stores = np.where(
            rng.random(len(returned)) < 0.9, store_ids[returned], rng.integers(1, stores + 1, size=len(returned))
        )
        ones = np.ones(len(returned), dtype=np.int64)
        moves = seeded_rollups.Moves.of(
            (times, store_ids, item_ids, sale_prices, np.ones(len(times), dtype=np.int64)),
            (return_times, return_stores, item_ids[returned], sale_prices[returned], ones),
        )
        # numpy sums the rollups in a thread meanwhile: the sales COPY keeps PostgreSQL busy
        rollup_data = await seeded_rollups.RollupData.start(conn, moves, items, stores)
        try:
            ids = await _reserve_ids(conn, sales + len(returned))
            ids, return_ids = ids[:sales], ids[sales:]
            on_citus = await citus.has_citus(conn)
            if on_citus:  # the coordinator spreads one COPY over the shards
                await conn.copy_to_table(
                    "sales",
                    columns=sales_copy.COLUMNS,
                    format="binary",
                    source=_sale_chunks(ids, times, item_ids, store_ids, sale_prices, progress),
                )
            else:
                await _copy_by_month(conn, ids, times, item_ids, store_ids, sale_prices, progress)
            await _copy_returns(
                conn, return_ids, ids[returned], return_times, return_stores, item_ids[returned], sale_prices[returned]
            )
            await rollup_data.copy_into(conn, freeze=not on_citus)
        finally:
            await rollup_data.stop()
        for table, name, definition in keys:
            await conn.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
        await rollups.rebuild(conn, filled=seeded_rollups.FILLED)
    await conn.execute(
        "ANALYZE sales, returns, daily_totals, store_item_daily, hourly_totals, store_hourly, "
        "store_running, item_running"
    )
    return {"items": items, "stores": stores, "sales": sales, "returns": len(returned)}
