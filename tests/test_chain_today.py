"""The chain's today kept in memory from the writers' deltas (api.chain_today): equal to the tables
after every commit, each counted once whether its NOTIFY comes before, during or after the read;
and the chain-wide reports over periods that hold today equal a recount while it takes deltas."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import zoneinfo

import pytest

from api import metrics
from api.chain_today import ChainToday
from api.report_cache import ReportCache
from shared import report_changes
from tests import recount
from tests.conftest import CITUS
from tests.test_stores_today import ITEM_PRICE, _sales, _writer, observing
from worker import writer

pytestmark = pytest.mark.skipif(CITUS, reason="on Citus the writers send no deltas: every change drops the day")


@pytest.fixture
async def chain_in_memory(database_url, db):
    """(ChainToday, ...: see tests.test_stores_today.observing)."""
    async with observing(database_url, db, ChainToday) as observed:
        yield observed


async def _get(chain: ChainToday, cache: ReportCache, day: dt.date):
    since = cache.ticket()
    return await chain.get(day, lambda: cache.caught_up(since))


def _as_read(day) -> tuple:
    """What the chain's day says: its totals, stores' units, items' units, hours' units."""
    return (
        day.totals(),
        {store_id: m[1] for store_id, m in day.stores.items()},
        {item_id: units for item_id, (_, units) in day.items.items()},
        {hour: cell[1] for hour, cell in day.hours.items()},
    )


async def _in_tables(db, day: dt.date) -> tuple:
    """The same, from the tables (recounted from the sales)."""
    totals = await recount.totals(db, day, day)
    stores = await db.fetch("SELECT store_id, units FROM daily_totals WHERE day = $1", day)
    items = await db.fetch(
        "SELECT item_id, sum(quantity)::bigint AS units FROM sales WHERE sale_time::date = $1 GROUP BY item_id", day
    )
    hours = await db.fetch(
        "SELECT extract(hour FROM sale_time)::int AS hour, sum(quantity)::bigint AS units FROM sales "
        "WHERE sale_time::date = $1 GROUP BY 1",
        day,
    )
    return (
        {m: totals[m] for m in ("income", "units", "sales", "returns", "refunds", "discounts")},
        {r["store_id"]: r["units"] for r in stores},
        {r["item_id"]: r["units"] for r in items},
        {r["hour"]: r["units"] for r in hours},
    )


async def writer_batch(conn, rows) -> None:
    await writer.write_batch(conn, rows, citus=False)


def _counting_reads(chain: ChainToday) -> list:
    reads: list = []
    read_day = chain._read_day
    chain._read_day = lambda *args: reads.append(args) or read_day(*args)  # type: ignore[method-assign]
    return reads


async def test_the_chain_read_once_then_kept_up_to_date_by_the_writers_deltas(database_url, db, chain_in_memory):
    chain, cache, _pool, today = chain_in_memory
    conn = await _writer(database_url)
    try:
        await writer_batch(conn, _sales(1, 1, 3))
        assert _as_read(await _get(chain, cache, today)) == await _in_tables(db, today)
        reads = _counting_reads(chain)
        for quantity in (1, 2, 5):
            await writer_batch(conn, _sales(1, 2, quantity) + _sales(2, 1, 1))
            day = await _get(chain, cache, today)
            assert _as_read(day) == await _in_tables(db, today)
        assert _as_read(day)[0]["units"] == 3 + 8 + 3
        assert reads == []  # no query: the deltas said it all
    finally:
        await conn.close()


async def test_a_commit_the_read_saw_is_not_added_again_when_its_deltas_come_during_the_read(
    database_url, db, chain_in_memory
):
    chain, cache, pool, today = chain_in_memory
    conn = await _writer(database_url)
    try:
        async with pool.acquire():  # the read waits for the pool's only connection
            asked = asyncio.ensure_future(_get(chain, cache, today))
            await asyncio.sleep(0.05)
            await writer_batch(conn, _sales(2, 2, 4))  # committed: its deltas come now
            await cache.caught_up(cache.ticket())  # heard of, while the read still waits
            assert not asked.done()
        assert _as_read(await asked) == await _in_tables(db, today)
        assert (await asked).totals()["units"] == 4
    finally:
        await conn.close()


async def test_a_commit_the_read_did_not_see_is_added_when_its_deltas_come_during_the_read(db, chain_in_memory):
    chain, cache, pool, today = chain_in_memory
    async with db.transaction():  # in progress while the day is read: its deltas are said by hand
        xid = int(await db.fetchval("SELECT pg_current_xact_id()::text"))
        async with pool.acquire():
            asked = asyncio.ensure_future(_get(chain, cache, today))
            await asyncio.sleep(0.05)
            chain.on_deltas(xid, [(today, 9, 1, 2, 6 * ITEM_PRICE, 6, 1, 0)])  # heard while the read waits
        day = await asked
    assert not day.snapshot.sees(xid)  # in progress when read: its deltas are in
    assert day.totals()["units"] == 6 and day.items == {2: [6, 6]} and day.hours == {9: [6 * ITEM_PRICE, 6, 1]}


async def test_deltas_heard_after_the_read_of_a_commit_it_saw_are_not_added(db, chain_in_memory):
    chain, cache, _pool, today = chain_in_memory
    async with db.transaction():
        xid = int(await db.fetchval("SELECT pg_current_xact_id()::text"))
    day = await _get(chain, cache, today)  # read after that commit
    chain.on_deltas(xid, [(today, 9, 1, 2, 6 * ITEM_PRICE, 6, 1, 0)])  # its NOTIFY late
    assert day.totals()["units"] == 0 and day.items == {} and day.hours == {}


async def test_a_change_without_deltas_drops_the_day_and_it_is_read_again(
    database_url, db, chain_in_memory, monkeypatch
):
    chain, cache, _pool, today = chain_in_memory
    conn = await _writer(database_url)
    try:
        await writer_batch(conn, _sales(1, 1, 2))
        await _get(chain, cache, today)
        monkeypatch.setattr(report_changes, "MAX_DELTA_SALES", 1)  # a "large" batch: no deltas
        await writer_batch(conn, _sales(2, 2, 3, count=2))
        reads = _counting_reads(chain)
        assert _as_read(await _get(chain, cache, today)) == await _in_tables(db, today)
        assert len(reads) == 1
    finally:
        await conn.close()


async def test_a_new_day_starts_from_the_tables(database_url, chain_in_memory):
    chain, cache, _pool, today = chain_in_memory
    conn = await _writer(database_url)
    try:
        await writer_batch(conn, _sales(1, 1, 2))
        assert (await _get(chain, cache, today)).totals()["units"] == 2
        tomorrow = today + dt.timedelta(days=1)
        assert (await _get(chain, cache, tomorrow)).totals()["units"] == 0
        assert await _get(chain, cache, today) is None  # asked just before midnight: the caller queries
    finally:
        await conn.close()


def _reads() -> float:
    return metrics.CHAIN_DAYS.labels("read")._value.get()


async def test_chain_reports_through_today_match_a_recount_while_the_day_takes_deltas(client, seed, db, drain):
    """The chain-wide reports of periods that hold today, asked, then asked again after each of
    several commits: each answer equals a recount, and the day was read once."""
    await seed(items=25, stores=6, sales=3000)
    today = dt.datetime.now(dt.UTC).date()
    month = today.replace(day=1)
    year = (today - dt.timedelta(days=364), today)
    reads_before = _reads()
    for round_ in range(4):
        if round_:
            for n in range(5):
                response = await client.post(
                    "/sales/",
                    json={"item_id": 1 + (n * 7 + round_) % 25, "store_id": 1 + n % 6, "quantity": round_ + n},
                )
                assert response.status == 202, await response.text()
            await drain()
        for first, last in (
            (month, today),
            year,
            (today, today),
            (today - dt.timedelta(days=3), today + dt.timedelta(days=3)),
        ):
            q = f"from={first}&to={last}"
            assert await _json(client, f"/stores/top/?{q}&cnt=4") == await recount.top_stores_in(db, first, last, 4)
            assert await _json(client, f"/items/top/?{q}&cnt=5") == await recount.top_items_in(db, first, last, 5)
            assert await _json(client, f"/reports/totals/?{q}") == await recount.totals(db, first, last)
            assert await _json(client, f"/reports/hours/?{q}") == await recount.hours(db, first, last)
        assert await _json(client, "/stores/top/?cnt=3") == await recount.top_stores(db, month, 3)
        trend = await _json(client, "/reports/trend/?months=2")
        assert (trend[-1]["income"], trend[-1]["units"], trend[-1]["sales"]) == (await recount.month_totals(db))[month]
    assert _reads() - reads_before == 1  # then the deltas said it all


async def _json(client, url):
    response = await client.get(url)
    assert response.status == 200, await response.text()
    return await response.json()


def test_a_transactions_deltas_reach_the_observers_once_all_its_chunks_came():
    class Heard:
        def __init__(self):
            self.deltas: list = []
            self.changes: list = []

        def on_change(self, change):
            self.changes.append(change)

        def on_deltas(self, xid, deltas):
            self.deltas.append((xid, deltas))

    cache = ReportCache("postgresql://unused", zoneinfo.ZoneInfo("UTC"))
    heard = Heard()
    cache.observe(heard)

    def chunk(xid: int, hour: int) -> str:
        return json.dumps({"xid": str(xid), "chunks": 2, "rows": [["2026-12-06", hour, 1, 2, 500, 2, 1, 0]]})

    cache._on_notification(None, 0, report_changes.DELTAS_CHANNEL, chunk(7, 10))
    assert heard.deltas == []  # half a transaction is not shown
    cache._on_notification(None, 0, report_changes.DELTAS_CHANNEL, chunk(7, 11))
    day = dt.date(2026, 12, 6)
    assert heard.deltas == [(7, [(day, 10, 1, 2, 500, 2, 1, 0), (day, 11, 1, 2, 500, 2, 1, 0)])]
    cache._on_notification(None, 0, report_changes.DELTAS_CHANNEL, '{"xid": "8", "rows": []}')
    assert heard.changes == [None]  # unreadable: anything may have changed
