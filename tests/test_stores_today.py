"""Today's rows of the stores asked about, kept in memory from the writers' deltas (api.stores_today):
every commit counted once, whether its NOTIFY comes before, during or after a store is read."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import zoneinfo

import asyncpg
import pytest

from api.report_cache import ReportCache
from api.stores_today import Snapshot, StoresToday
from shared import report_changes
from shared.db import create_pool
from tests.conftest import CITUS
from worker import writer

pytestmark = pytest.mark.skipif(CITUS, reason="on Citus the writers send no deltas: every change drops its stores")

ITEM_PRICE = 250


def test_a_snapshot_sees_what_committed_before_it_and_nothing_after():
    snapshot = Snapshot.parse("100:105:101,103")
    assert [x for x in range(98, 107) if snapshot.sees(x)] == [98, 99, 100, 102, 104]
    assert Snapshot.parse("7:7:").sees(6) and not Snapshot.parse("7:7:").sees(7)


@contextlib.asynccontextmanager
async def observing(database_url: str, db, make_observer):
    """(make_observer(pool) on a pool of one connection, its ReportCache listening, today in UTC),
    over two items and two stores."""
    await db.execute("INSERT INTO item (id, name, price) VALUES (1, 'tea', $1), (2, 'milk', $1)", ITEM_PRICE)
    await db.execute("INSERT INTO store (id, address) VALUES (1, 'one'), (2, 'two')")
    pool = await create_pool(database_url, min_size=1, max_size=1)
    cache = ReportCache(database_url, zoneinfo.ZoneInfo("UTC"))
    observer = make_observer(pool)
    cache.observe(observer)
    await cache.start()
    try:
        yield observer, cache, pool, dt.datetime.now(dt.UTC).date()
    finally:
        await cache.close()
        await pool.close()


@pytest.fixture
async def today_in_memory(database_url, db):
    """(StoresToday, ...: see `observing`)."""
    async with observing(database_url, db, StoresToday) as observed:
        yield observed


async def _get(stores_today: StoresToday, cache: ReportCache, store_id: int, day: dt.date):
    since = cache.ticket()
    return await stores_today.get(store_id, day, lambda: cache.caught_up(since))


async def _in_table(db, store_id: int, day: dt.date) -> tuple[int, dict[int, int]]:
    units = await db.fetchval("SELECT units FROM daily_totals WHERE store_id = $1 AND day = $2", store_id, day)
    items = await db.fetch(
        "SELECT item_id, units FROM store_item_daily WHERE store_id = $1 AND day = $2", store_id, day
    )
    return units or 0, {r["item_id"]: r["units"] for r in items if r["units"]}


def _as_read(answer) -> tuple[int, dict[int, int]]:
    return (answer.measures or {}).get("units", 0), {i: u for i, u in zip(answer.items.ids, answer.items.units) if u}


_next_id = iter(range(1, 10**6))


def _sales(store_id: int, item_id: int, quantity: int, count: int = 1) -> list[tuple]:
    now_us = int(dt.datetime.now(dt.UTC).timestamp() * 1_000_000)
    return [
        (next(_next_id), now_us, item_id, store_id, ITEM_PRICE, quantity, None, now_us, ITEM_PRICE)
        for _ in range(count)
    ]


async def _writer(database_url: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(database_url, server_settings=writer.SESSION_SETTINGS)
    await writer.prepare_connection(conn)
    return conn


async def test_a_store_read_then_kept_up_to_date_by_the_writers_deltas(database_url, db, today_in_memory):
    stores_today, cache, _pool, today = today_in_memory
    conn = await _writer(database_url)
    try:
        await writer.write_batch(conn, _sales(1, 1, 3), citus=False)
        assert _as_read(await _get(stores_today, cache, 1, today)) == (3, {1: 3})
        reads = []
        read_store = stores_today._read_store
        stores_today._read_store = lambda *args: reads.append(args) or read_store(*args)  # type: ignore[method-assign]
        for quantity in (1, 2, 5):
            await writer.write_batch(conn, _sales(1, 2, quantity) + _sales(2, 1, 1), citus=False)
            answer = await _get(stores_today, cache, 1, today)
            assert _as_read(answer) == await _in_table(db, 1, today)
        assert _as_read(answer) == (11, {1: 3, 2: 8})
        assert reads == []  # no query: the deltas said it all
    finally:
        await conn.close()


async def test_a_commit_the_read_saw_is_not_added_again_when_its_deltas_come_during_the_read(
    database_url, db, today_in_memory
):
    stores_today, cache, pool, today = today_in_memory
    conn = await _writer(database_url)
    try:
        async with pool.acquire():  # the read waits for the pool's only connection
            asked = asyncio.ensure_future(_get(stores_today, cache, 1, today))
            await asyncio.sleep(0.05)
            await writer.write_batch(conn, _sales(1, 1, 4), citus=False)  # committed: its deltas come now
            await cache.caught_up(cache.ticket())  # heard of, while the read still waits
            assert not asked.done()
        assert _as_read(await asked) == await _in_table(db, 1, today) == (4, {1: 4})
    finally:
        await conn.close()


async def test_a_commit_the_read_did_not_see_is_added_when_its_deltas_come_during_the_read(
    database_url, db, today_in_memory
):
    stores_today, cache, pool, today = today_in_memory
    async with db.transaction():  # by hand, unannounced: its deltas are said below
        xid = await db.fetchval(
            "SELECT pg_current_xact_id()::text FROM (SELECT set_config('sales.reports_announced', 'on', true)) s"
        )
        await db.execute(
            "INSERT INTO daily_totals (day, store_id, income, units, sales) VALUES ($1, 1, $2, 6, 1)",
            today,
            6 * ITEM_PRICE,
        )
        await db.execute(
            "INSERT INTO store_item_daily (day, store_id, item_id, income, units, sales) VALUES ($1, 1, 2, $2, 6, 1)",
            today,
            6 * ITEM_PRICE,
        )
        async with pool.acquire():
            asked = asyncio.ensure_future(_get(stores_today, cache, 1, today))
            await asyncio.sleep(0.05)
            stores_today.on_deltas(int(xid), [(today, 12, 1, 2, 6 * ITEM_PRICE, 6, 1, 0)])  # heard while the read waits
        assert _as_read(await asked) == (6, {2: 6})  # its snapshot had the transaction in progress
    assert await _in_table(db, 1, today) == (6, {2: 6})


async def test_a_change_without_deltas_drops_the_store_and_it_is_read_again(
    database_url, db, today_in_memory, monkeypatch
):
    stores_today, cache, _pool, today = today_in_memory
    conn = await _writer(database_url)
    try:
        await writer.write_batch(conn, _sales(1, 1, 2), citus=False)
        await _get(stores_today, cache, 1, today)
        await _get(stores_today, cache, 2, today)
        monkeypatch.setattr(report_changes, "MAX_DELTA_SALES", 1)  # a "large" batch: its stores only
        await writer.write_batch(conn, _sales(1, 2, 3, count=2), citus=False)
        reads = []
        read_store = stores_today._read_store
        stores_today._read_store = lambda *args: reads.append(args[0]) or read_store(*args)  # type: ignore[method-assign]
        assert _as_read(await _get(stores_today, cache, 1, today)) == await _in_table(db, 1, today) == (8, {1: 2, 2: 6})
        assert _as_read(await _get(stores_today, cache, 2, today)) == (0, {})
        assert reads == [1]  # store 2 untouched: kept
    finally:
        await conn.close()


async def test_a_new_day_starts_from_what_the_table_holds(database_url, db, today_in_memory):
    stores_today, cache, _pool, today = today_in_memory
    conn = await _writer(database_url)
    try:
        await writer.write_batch(conn, _sales(1, 1, 2), citus=False)
        assert _as_read(await _get(stores_today, cache, 1, today)) == (2, {1: 2})
        tomorrow = today + dt.timedelta(days=1)
        assert _as_read(await _get(stores_today, cache, 1, tomorrow)) == (0, {})
        assert await _get(stores_today, cache, 1, today) is None  # asked just before midnight: the caller queries
    finally:
        await conn.close()


async def test_a_writer_says_what_a_small_batch_added_in_notifies_within_the_size_limit(database_url, db):
    await db.execute(
        "INSERT INTO item (id, name, price) SELECT g, 'item ' || g, $1 FROM generate_series(1, 300) g", ITEM_PRICE
    )
    await db.execute("INSERT INTO store (id, address) VALUES (1, 'one'), (2, 'two')")
    heard: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    listener = await asyncpg.connect(database_url)
    conn = await _writer(database_url)
    try:
        for channel in (report_changes.CHANNEL, report_changes.DELTAS_CHANNEL):
            await listener.add_listener(channel, lambda _c, _p, channel, payload: heard.put_nowait((channel, payload)))
        rows = [row for item_id in range(1, 201) for row in _sales(1 + item_id % 2, item_id, 2)]
        await writer.write_batch(conn, rows, citus=False)
        await listener.execute("SELECT 1")
        said = [heard.get_nowait() for _ in range(heard.qsize())]
    finally:
        await listener.close()
        await conn.close()
    change, *chunks = said
    assert change[0] == report_changes.CHANNEL and json.loads(change[1])["deltas"] is True
    assert {channel for channel, _ in chunks} == {report_changes.DELTAS_CHANNEL}
    assert len(chunks) == 4 and all(len(payload) < 8000 for _, payload in chunks)  # 64 rows a NOTIFY
    payloads = [json.loads(payload) for _, payload in chunks]
    assert len({p["xid"] for p in payloads}) == 1
    added = sorted(tuple(row) for p in payloads for row in p["rows"])
    moments = [dt.datetime.fromtimestamp(row[1] / 1_000_000, dt.UTC) for row in rows]
    assert added == sorted(
        (moment.date().isoformat(), moment.hour, row[3], row[2], 2 * ITEM_PRICE, 2, 1, 0)
        for moment, row in zip(moments, rows, strict=True)
    )
