"""A till whose clock fell back (issue 21): one batch of 1,000 sales dated long ago, over 1,000
items, on the real processes. Before, it was answered 202, then made the worker write a running
row for every day since 2000 for every item (3.3 GB) and held a fresh sale up for 40 s.

Now, with the default MAX_SALE_AGE_DAYS, a batch dated 2000-01-02 is refused with 422 (nothing
queued) and the oldest batch the rule accepts costs what any batch does; with a limit that lets
2000 through, the batch dated 2000-01-02 costs no more. Either way the database grows < 50 MB,
a fresh sale posted right after it is in the reports within 1 s, and every report equals a
recount.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid

import aiohttp
import asyncpg
import pytest

from shared import rollups
from tests import recount
from tests.queue_state import queued_sales
from tests.recount import NO_DRIFT

from .conftest import KEYS, STORES, wait_stored

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

BATCH = 1_000
FIRST_ITEM = 101  # the batch's items: 101..1100, beside the fixture's 20
FRESH_ITEM = 1
GROWTH_LIMIT = 50 * 1024 * 1024


def _batch(moment: dt.datetime, prefix: str) -> list[dict]:
    return [
        {
            "item_id": FIRST_ITEM + n,
            "store_id": 1 + n % STORES,
            "sale_time": moment.isoformat(),
            "idempotency_key": f"{prefix}-{n}",
        }
        for n in range(BATCH)
    ]


async def _units_today(session: aiohttp.ClientSession, base_url: str) -> int:
    today = dt.datetime.now(dt.UTC).date()
    async with session.get(f"{base_url}/reports/totals/?from={today}&to={today}") as response:
        assert response.status == 200, await response.text()
        return (await response.json())["units"]


async def _fresh_sale_seen_after(session: aiohttp.ClientSession, base_url: str, timeout: float = 10) -> float:
    """Post a sale of now; seconds from its 202 until /reports/totals/ counts it."""
    before = await _units_today(session, base_url)
    async with session.post(
        f"{base_url}/sales/",
        json={"item_id": FRESH_ITEM, "store_id": 1, "quantity": 7, "idempotency_key": uuid.uuid4().hex},
    ) as response:
        assert response.status == 202, await response.text()
    answered = time.monotonic()
    while time.monotonic() - answered < timeout:
        if await _units_today(session, base_url) == before + 7:
            return time.monotonic() - answered
        await asyncio.sleep(0.02)
    raise AssertionError(f"a fresh sale was not in the reports {timeout} s after its 202")


async def _footprint(conn: asyncpg.Connection) -> tuple[int, int]:
    """(database bytes, rows of the running totals and their late twins)."""
    size = await conn.fetchval("SELECT pg_database_size(current_database())")
    rows = 0
    for running in rollups.RUNNING:
        rows += await conn.fetchval(f"SELECT count(*) FROM {running.table}")
        rows += await conn.fetchval(f"SELECT count(*) FROM {running.late}")
    return size, rows


async def _reports_equal_a_recount(session, base_url: str, conn, day: dt.date) -> None:
    today = dt.datetime.now(dt.UTC).date()
    for first, last in (
        (day, day),
        (day.replace(day=1), today),
        (today - dt.timedelta(days=6), today),
        (dt.date(1, 1, 1), today),
    ):
        q = f"from={first}&to={last}"
        async with session.get(f"{base_url}/items/top/?{q}&cnt=1000") as response:
            assert await response.json() == await recount.top_items_in(conn, first, last, 1000), q
        async with session.get(f"{base_url}/stores/top/?{q}&cnt=1000") as response:
            assert await response.json() == await recount.top_stores_in(conn, first, last, 1000), q
        async with session.get(f"{base_url}/reports/totals/?{q}") as response:
            assert await response.json() == await recount.totals(conn, first, last), q


@pytest.mark.parametrize("max_age_days", [None, 10_000], ids=["default-limit", "limit-past-2000"])
async def test_a_batch_dated_years_back_costs_what_a_batch_of_today_does(
    make_stack, redis_client, database_url, record, max_age_days
):
    env = {} if max_age_days is None else {"MAX_SALE_AGE_DAYS": max_age_days}
    stack = make_stack(**env)
    conn = await asyncpg.connect(database_url, timeout=30)
    try:
        await conn.execute(
            "INSERT INTO item (id, name, price) SELECT n, 'item-' || n, 100 + n % 900 "
            "FROM generate_series($1::int, $2::int) n",
            FIRST_ITEM,
            FIRST_ITEM + BATCH - 1,
        )
        await stack.start_api()
        await stack.start_worker(redis_client)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            base = stack.base_url
            await _fresh_sale_seen_after(session, base)  # today's running rows exist, as while tills sell
            size_before, rows_before = await _footprint(conn)

            year_2000 = dt.datetime(2000, 1, 2, 12, tzinfo=dt.UTC)
            async with session.post(f"{base}/sales/batch/", json=_batch(year_2000, "y2k")) as response:
                status, answer = response.status, await response.json()
            if max_age_days is None:  # refused up front, each sale saying why, nothing queued
                assert status == 422, answer
                assert len(answer["errors"]) == BATCH
                assert all(
                    "MAX_SALE_AGE_DAYS" in e["error"] and "2000-01-02T12:00:00+00:00" in e["error"]
                    for e in answer["errors"]
                )
                assert await queued_sales(redis_client, KEYS) <= 1  # the fresh sale's, until its ack
                oldest = dt.datetime.now(dt.UTC) - dt.timedelta(days=399)  # the oldest it takes
                async with session.post(f"{base}/sales/batch/", json=_batch(oldest, "old")) as response:
                    status, answer = response.status, await response.json()
                day = oldest.date()
            else:
                day = year_2000.date()
            assert status == 202, answer
            posted = time.monotonic()
            fresh_seen = await _fresh_sale_seen_after(session, base)
            await wait_stored(database_url, [s["id"] for s in answer])
            written = time.monotonic() - posted  # from the batch's 202 to all of it in sales
            size_after, rows_after = await _footprint(conn)
            assert size_after - size_before < GROWTH_LIMIT, (size_before, size_after)
            assert rows_after - rows_before <= 2 * BATCH + 2 * STORES, (rows_before, rows_after)
            assert fresh_seen < 1.0, fresh_seen
            assert await rollups.drift(conn) == NO_DRIFT
            await _reports_equal_a_recount(session, base, conn, day)
        record(
            batch_day=day,
            growth_bytes=size_after - size_before,
            rollup_rows_added=rows_after - rows_before,
            fresh_sale_seen_s=round(fresh_seen, 3),
            batch_written_within_s=round(written, 2),
        )
    finally:
        await conn.close()
