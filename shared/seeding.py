"""Demo data: items, stores and sales spread over the 12 months ending with the current one.

Used by GET/POST /create/ and by `python -m shared.seed`. Sales are generated with numpy and
loaded with a binary COPY FREEZE into each monthly partition (made first; on Citus one COPY
into the distributed parent);
the primary and foreign keys of sales are dropped for the load and added back (validated) at
the end, which is PostgreSQL's own advice for bulk loads: 3 million sales loaded in 12 s
instead of 17. Everything happens in one transaction: readers see the old data or the new,
never half of it. The same code seeds a Citus coordinator (COPY spreads the rows over the
shards; the keys are dropped and added on every shard).
"""
from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import AsyncIterator, Callable

import asyncpg
import numpy as np

from shared import citus, partitions, rollups, sales_copy
from shared.sale_ids import BLOCK, reserve_blocks

CHUNK = 250_000
DATA_TABLES = ("sales, sale_keys, dead_letter, store_monthly, item_totals, daily_totals, store_monthly_archived, "
               "item_totals_archived, daily_totals_archived, archived_months, item, store")
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


def sale_times_us(count: int, now: dt.datetime, tz: zoneinfo.ZoneInfo, rng: np.random.Generator) -> np.ndarray:
    """`count` sorted sale times (Unix µs): an equal share in each month, the current one up to now."""
    starts = month_starts(now, tz)
    bounds = [int(s.timestamp() * 1_000_000) for s in starts] + [int(now.timestamp() * 1_000_000)]
    shares = np.full(len(starts), count // len(starts))
    shares[: count % len(starts)] += 1
    parts = [rng.integers(bounds[i], max(bounds[i] + 1, bounds[i + 1]), size=int(n)) for i, n in enumerate(shares)]
    times = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    times.sort()
    return times


async def _reserve_ids(conn: asyncpg.Connection, count: int) -> np.ndarray:
    starts = np.array(await reserve_blocks(conn, -(-count // BLOCK)) if count else [], dtype=np.int64)
    return (starts[:, None] + np.arange(BLOCK, dtype=np.int64)).ravel()[:count]


async def _sale_chunks(ids: np.ndarray, times: np.ndarray, item_prices: np.ndarray, stores: int,
                       rng: np.random.Generator, progress: Progress | None) -> AsyncIterator[bytes]:
    count = len(ids)
    yield sales_copy.HEADER
    for lo in range(0, count, CHUNK):
        hi = min(count, lo + CHUNK)
        item_ids = rng.integers(1, len(item_prices) + 1, size=hi - lo)
        store_ids = rng.integers(1, stores + 1, size=hi - lo)
        yield sales_copy.unkeyed_rows(ids[lo:hi], times[lo:hi], item_ids, store_ids, item_prices[item_ids - 1],
                                      quantities=1, accepted_us=times[lo:hi])
        if progress:
            progress(hi - lo)
    yield sales_copy.TRAILER


async def _copy_by_month(conn: asyncpg.Connection, ids: np.ndarray, times: np.ndarray, item_prices: np.ndarray,
                         stores: int, rng: np.random.Generator, progress: Progress | None) -> None:
    """One COPY FREEZE per monthly partition: they were emptied in this transaction, so the
    rows can be written frozen, and the rollup rebuild and ANALYZE that read them next do not
    write every page again to set hint bits (FREEZE is refused on the partitioned parent)."""
    times = np.sort(times)  # the ids stay in order: which sale gets which moment is random anyway
    months = partitions.months_of(times)
    starts = [int(dt.datetime.combine(m, dt.time(), dt.timezone.utc).timestamp() * 1_000_000) for m in months]
    bounds = [*np.searchsorted(times, starts[1:]).tolist(), len(times)]
    low = 0
    for month, high in zip(months, bounds):
        partition = await conn.fetchval("SELECT sales_partition($1)", month)
        await conn.copy_to_table(partition, columns=sales_copy.COLUMNS, format="binary", freeze=True,
                                 source=_sale_chunks(ids[low:high], times[low:high], item_prices, stores, rng, progress))
        low = high


async def _keys(conn: asyncpg.Connection, table: str) -> list[tuple[str, str]]:
    """The primary key, then the foreign keys of `table`: (name, definition)."""
    return [(r["conname"], r["definition"]) for r in await conn.fetch(
        "SELECT conname, pg_get_constraintdef(oid) AS definition FROM pg_constraint "
        "WHERE conrelid = $1::regclass AND contype IN ('p', 'f') AND conparentid = 0 "
        "ORDER BY contype DESC, conname", table)]


async def clear(conn: asyncpg.Connection) -> None:
    """Empty every table (inside the caller's transaction). Sale ids keep counting up."""
    await conn.execute(f"TRUNCATE {DATA_TABLES}")
    # setval, not ALTER SEQUENCE ... RESTART: Citus cannot alter a distributed sequence
    await conn.execute("SELECT setval('item_id_seq', 1, false), setval('store_id_seq', 1, false)")
    await conn.execute(NOTIFY_ALL_CHANGED)


async def seed(conn: asyncpg.Connection, *, items: int = 50, stores: int = 50, sales: int = 3600,
               tz: zoneinfo.ZoneInfo, now: dt.datetime | None = None, seed: int | None = None,
               progress: Progress | None = None) -> dict[str, int]:
    """Replace all data with `items` items, `stores` stores and `sales` sales."""
    if items < 1 or stores < 1 or sales < 0:
        raise ValueError("need at least one item and one store, and no negative sale count")
    now = now or dt.datetime.now(dt.timezone.utc)
    rng = np.random.default_rng(seed)
    prices = rng.integers(100, 5_000, size=items, dtype=np.int64)
    await partitions.ensure(conn, partitions.months_between(month_starts(now, tz)[0], now))
    async with conn.transaction():
        await clear(conn)
        await conn.copy_records_to_table(
            "item", columns=["name", "price"],
            records=((f"item-{i}", int(p)) for i, p in enumerate(prices, start=1)))
        await conn.copy_records_to_table(
            "store", columns=["address"], records=((f"store-{i}",) for i in range(1, stores + 1)))
        keys = await _keys(conn, "sales")
        for name, _ in keys[::-1]:
            await conn.execute(f'ALTER TABLE sales DROP CONSTRAINT "{name}"')
        ids = await _reserve_ids(conn, sales)
        times = sale_times_us(sales, now, tz, rng)
        if await citus.has_citus(conn):  # the coordinator spreads one COPY over the shards
            await conn.copy_to_table("sales", columns=sales_copy.COLUMNS, format="binary",
                                     source=_sale_chunks(ids, times, prices, stores, rng, progress))
        else:
            await _copy_by_month(conn, ids, times, prices, stores, rng, progress)
        for name, definition in keys:
            await conn.execute(f'ALTER TABLE sales ADD CONSTRAINT "{name}" {definition}')
        await rollups.rebuild(conn)
    await conn.execute("ANALYZE sales")
    return {"items": items, "stores": stores, "sales": sales}
