"""Chain-wide rollups through chain_deltas (migration 012): batches insert deltas, one session at
a time folds them in, and every report is exact whatever has been folded."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import pytest

from shared import chain_fold, retention, rollups
from shared.db import create_pool
from shared.sale_ids import reserve_blocks
from tests import recount
from tests.conftest import CITUS
from tests.recount import NO_DRIFT
from worker import return_writer, writer

DAY_US = 86_400_000_000


@pytest.fixture
async def worker_pool(settings):
    pool = await create_pool(settings.database_url, max_size=2, prepare=writer.prepare_connection)
    yield pool
    await pool.close()


async def _sales(db, sales: list[tuple[int, int, int, int]]) -> list[tuple]:
    """Queued rows of (days ago, item, store, quantity), as the worker gets them."""
    prices = {r["id"]: r["price"] for r in await db.fetch("SELECT id, price FROM item")}
    [start] = await reserve_blocks(db, 1)
    now_us = int(time.time() * 1_000_000)
    return [
        (start + i, now_us - days_ago * DAY_US - i, item, store, prices[item], quantity, None, now_us, prices[item])
        for i, (days_ago, item, store, quantity) in enumerate(sales)
    ]


async def _write(pool, rows) -> writer.BatchResult:
    async with pool.acquire() as conn:
        return await writer.write_batch(conn, rows)


async def _deltas(db) -> list[tuple]:
    return [tuple(r) for r in await db.fetch("SELECT * FROM chain_deltas ORDER BY day, hour, item_id, units")]


async def _json(client, url: str):
    response = await client.get(url)
    assert response.status == 200, await response.text()
    return await response.json()


async def _assert_reports_match_recount(client, db) -> None:
    today = dt.datetime.now(dt.UTC).date()
    assert await _json(client, "/items/top/?cnt=1000") == await recount.top_items(db, 1000)
    for first, last in (
        (today, today),
        (today - dt.timedelta(days=2), today - dt.timedelta(days=2)),
        (today - dt.timedelta(days=30), today - dt.timedelta(days=1)),
        (today - dt.timedelta(days=364), today),
    ):
        q = f"from={first}&to={last}"
        assert await _json(client, f"/items/top/?{q}&cnt=1000") == await recount.top_items_in(db, first, last, 1000)
        assert await _json(client, f"/reports/hours/?{q}") == await recount.hours(db, first, last)
    assert await rollups.drift(db) == NO_DRIFT


async def test_reports_are_exact_with_deltas_unfolded_and_after_folding(client, seed, db, worker_pool):
    await seed(items=6, stores=3, sales=400)
    rows = await _sales(db, [(0, 1, 1, 3), (0, 2, 2, 1), (2, 1, 3, 2), (2, 6, 1, 5), (20, 3, 2, 4), (0, 1, 2, 7)])
    assert (await _write(worker_pool, rows)).written == 6
    # and a return, which takes back through the deltas as well
    [return_id] = await reserve_blocks(db, 1)
    now_us = int(time.time() * 1_000_000)
    sold = rows[3]
    returned = (return_id, sold[0], now_us, 2, sold[2], sold[4], 2, sold[5], None, now_us)
    async with worker_pool.acquire() as conn:
        assert (await return_writer.write_returns(conn, [returned])).written == 1

    deltas = len(await _deltas(db))
    assert deltas > 0
    await _assert_reports_match_recount(client, db)  # the deltas counted where the rollups do not have them yet

    async with worker_pool.acquire() as conn:
        assert await chain_fold.fold(conn) == deltas
    assert await _deltas(db) == []
    await _assert_reports_match_recount(client, db)


async def test_a_second_fold_returns_at_once_while_one_is_in_progress(seed, db, worker_pool):
    await seed(items=3, stores=2)
    await _write(worker_pool, await _sales(db, [(0, 1, 1, 1), (0, 2, 2, 2)]))
    async with worker_pool.acquire() as first, worker_pool.acquire() as second:
        async with first.transaction():  # a fold not committed yet: its lock is held
            assert await chain_fold.fold(first) == 2
            started = time.monotonic()
            assert await asyncio.wait_for(chain_fold.fold(second), 5) == 0
            assert time.monotonic() - started < 1  # nobody waits
            assert len(await _deltas(second)) == 2  # still there for everyone else until it commits
        assert await chain_fold.fold(second) == 0
    assert await _deltas(db) == []
    assert await rollups.drift(db) == NO_DRIFT


async def test_a_redelivered_batch_adds_no_delta_twice(seed, db, worker_pool):
    await seed(items=3, stores=2)
    rows = await _sales(db, [(0, 1, 1, 2), (1, 2, 2, 3), (0, 3, 1, 1)])
    assert (await _write(worker_pool, rows)).written == 3
    deltas = await _deltas(db)
    # delivered again (lost ack): the INSERT ... ON CONFLICT path, which inserts nothing
    again = await _write(worker_pool, rows)
    assert (again.written, again.duplicates) == (0, 3)
    assert await _deltas(db) == deltas
    # overlapping a new sale: only that one adds a delta
    extra = await _sales(db, [(0, 2, 1, 4)])
    assert (await _write(worker_pool, [*rows, *extra])).written == 1
    assert len(await _deltas(db)) == len(deltas) + 1
    assert await rollups.drift(db) == NO_DRIFT

    # a batch with a row that can never be written goes row by row (bisection): the others add once
    [bad] = await _sales(db, [(0, 1, 1, 1)])
    bad = (*bad[:2], 999, *bad[3:])  # an item that does not exist
    good = await _sales(db, [(0, 3, 2, 6)])
    result = await _write(worker_pool, [*good, bad, *rows])
    assert (result.written, result.dead) == (1, 1)
    async with worker_pool.acquire() as conn:
        await chain_fold.fold(conn)
    assert await rollups.drift(db) == NO_DRIFT
    assert await db.fetchval("SELECT units FROM item_totals WHERE item_id = 3") == await db.fetchval(
        "SELECT sum(quantity) FROM sales WHERE item_id = 3"
    )


async def test_a_delta_older_than_the_running_window_lands_in_the_late_rows(client, seed, db, worker_pool):
    await seed(items=4, stores=2, sales=200)
    await db.execute("INSERT INTO item (id, name, price) VALUES (40, 'new', 100)")
    old, recent = await _sales(db, [(30, 40, 1, 3), (5, 40, 2, 2)])
    await _write(worker_pool, [old])
    await _write(worker_pool, [recent])
    # The running totals move on before the fold: the sale of 5 days ago is now past the window
    # too, so the fold gives it one late row (the rule applies where it lands, at the fold).
    await db.execute("SELECT running_extend((SELECT running_through FROM report_settings) + 4)")
    assert await db.fetchval("SELECT count(*) FROM item_running_late WHERE item_id = 40") == 0
    await _assert_reports_match_recount(client, db)
    async with worker_pool.acquire() as conn:
        assert await chain_fold.fold(conn) == 2
    assert [tuple(r) for r in await db.fetch("SELECT day, units FROM item_running_late WHERE item_id = 40")] == [
        ((dt.datetime.fromtimestamp(old[1] / 1e6, dt.UTC)).date(), 3),
        ((dt.datetime.fromtimestamp(recent[1] / 1e6, dt.UTC)).date(), 2),
    ]
    assert await db.fetchval("SELECT count(*) FROM item_running WHERE item_id = 40") == 0
    await _assert_reports_match_recount(client, db)


async def test_a_fold_keeps_cached_reports_and_a_worker_commit_drops_them(client, seed, db, worker_pool, drain):
    await seed(items=3, stores=2, sales=300)
    await _write(worker_pool, await _sales(db, [(0, 1, 1, 2), (0, 2, 2, 1)]))
    cached = await _json(client, "/items/top/")
    # Changed behind the cache's back (no NOTIFY): only a result kept in memory still shows the old figure.
    async with db.transaction():
        if not CITUS:
            await db.execute("ALTER TABLE item_totals DISABLE TRIGGER item_totals_changed")
        await db.execute("UPDATE item_totals SET units = units + 1000000 WHERE item_id = 3")
        if not CITUS:
            await db.execute("ALTER TABLE item_totals ENABLE ALWAYS TRIGGER item_totals_changed")
    async with worker_pool.acquire() as conn:
        assert await chain_fold.fold(conn) == 2
    assert await _json(client, "/items/top/") == cached  # the fold said nothing: answered from memory

    response = await client.post("/sales/", json={"item_id": 1, "store_id": 1})
    assert response.status == 202
    await drain()
    fresh = await _json(client, "/items/top/")
    assert fresh[0]["id"] == 3 and fresh[0]["sales_amount"] > 1_000_000  # computed again


async def test_a_delta_nobody_announced_still_empties_the_cache(client, seed, db):
    if CITUS:
        pytest.skip("no notify triggers on Citus: writers announce by themselves")
    await seed(items=3, stores=2, sales=300)
    cached = await _json(client, "/items/top/?cnt=1")
    await db.execute(
        "INSERT INTO chain_deltas (day, hour, item_id, income, units, sales) "
        "VALUES (current_date, 0, $1, 0, 1000000, 0)",
        cached[0]["id"] % 3 + 1,
    )
    assert (await _json(client, "/items/top/?cnt=1"))[0]["sales_amount"] >= 1_000_000


async def test_archiving_a_month_with_its_deltas_unfolded_keeps_every_figure(
    client, seed, db, worker_pool, database_url
):
    """Retention moves a month's share from its raw sales to the *_archived twins; the rollups
    themselves (and so their deltas) keep counting it, folded or not."""
    await seed(items=4, stores=2, sales=400)
    await _write(worker_pool, await _sales(db, [(200, 1, 1, 3), (200, 2, 2, 1), (0, 1, 2, 2)]))
    today = dt.datetime.now(dt.UTC).date()
    urls = ["/items/top/?cnt=1000", f"/items/top/?from={today - dt.timedelta(days=364)}&to={today}&cnt=1000"]
    urls.append(f"/reports/hours/?from={today - dt.timedelta(days=364)}&to={today}")
    before = [await _json(client, url) for url in urls]

    async def computed_again() -> list:
        await db.execute("SELECT pg_notify('reports_changed', '')")  # not from memory
        return [await _json(client, url) for url in urls]

    await retention.run(database_url, keep_months=3, directory=None, echo=lambda *_: None)
    assert await db.fetchval("SELECT count(*) FROM chain_deltas WHERE day < current_date - 150") > 0
    assert await rollups.drift(db) == NO_DRIFT
    assert await computed_again() == before
    async with worker_pool.acquire() as conn:
        assert await chain_fold.fold(conn) > 0
    assert await rollups.drift(db) == NO_DRIFT
    assert await computed_again() == before


async def _folded_within(db, seconds: float) -> float:
    """How long until chain_deltas is empty (fails after `seconds`)."""
    started = time.monotonic()
    while await _deltas(db):
        assert time.monotonic() - started < seconds, "the deltas were not folded"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_a_worker_folds_at_most_every_interval_and_once_after_its_last_commit(seed, db, worker_pool):
    await seed(items=3, stores=2)
    folds = chain_fold.Folds(worker_pool, interval_ms=2000)
    await _write(worker_pool, await _sales(db, [(0, 1, 1, 1)]))
    first_fold = time.monotonic()
    await folds.after_commit()  # the first fold: at once, in the background
    await _folded_within(db, 1.5)
    await _write(worker_pool, await _sales(db, [(0, 2, 1, 1)]))
    await folds.after_commit()  # too soon after the last: the next fold waits for the interval
    await asyncio.sleep(0.2)
    assert len(await _deltas(db)) == 1
    await _folded_within(db, 5)  # no commit since: it folds anyway
    assert time.monotonic() - first_fold >= 2
    assert await rollups.drift(db) == NO_DRIFT
