"""The worker and the tills' sequence numbers: a till's sale is stored once whatever id the API
gave it, its till and number (and the till's time, when it ran ahead) in the row, and each
till's progress moved in the same transaction."""

from __future__ import annotations

import time

import asyncpg

from worker import writer

STORED = "SELECT id, till_id, till_seq, till_time, sale_time FROM sales ORDER BY id"


def _sale(sale_id, till_id=None, seq=None, *, key=None, till_time_us=None, now_us=None, store_id=1):
    now_us = now_us or int(time.time() * 1_000_000)
    return (sale_id, now_us, 1, store_id, 100, 1, key, now_us, 100, till_id, seq, till_time_us)


async def _progress(conn: asyncpg.Connection) -> list[tuple]:
    return [tuple(r) for r in await conn.fetch("SELECT store_id, till_id, last_seq FROM till_progress ORDER BY 1, 2")]


async def test_a_tills_sales_are_stored_with_their_numbers_and_its_progress(db, seed, worker_pool):
    await seed(items=1, stores=2)
    rows = [_sale(100 + n, till_id=7, seq=n) for n in range(1, 6)] + [
        _sale(200, store_id=2, till_id=9, seq=41),
        _sale(300),  # a sale of no till
    ]
    async with worker_pool.acquire() as conn:
        first = await writer.write_batch(conn, rows)
        assert (first.written, first.duplicates, first.dead) == (7, 0, 0)
        stored = await conn.fetch("SELECT id, till_id, till_seq, till_time FROM sales ORDER BY id")
        assert [tuple(r) for r in stored] == [
            *((100 + n, 7, n, None) for n in range(1, 6)),
            (200, 9, 41, None),
            (300, None, None, None),
        ]
        assert await _progress(conn) == [(1, 7, 5), (2, 9, 41)]
        # Delivered again (a lost ack): nothing more, the progress as it was.
        again = await writer.write_batch(conn, rows)
        assert (again.written, again.duplicates, again.dead) == (0, 7, 0)
        assert await _progress(conn) == [(1, 7, 5), (2, 9, 41)]


async def test_a_sale_numbered_below_the_tills_progress_under_a_new_id_is_not_counted(db, seed, worker_pool):
    """A Redis that lost its state takes a till's retry again, under a new id: the worker
    stores the till's sale once, and files the second with the reason."""
    await seed(items=1, stores=1)
    async with worker_pool.acquire() as conn:
        await writer.write_batch(conn, [_sale(100 + n, till_id=7, seq=n) for n in range(1, 4)])
        retried = [_sale(500, till_id=7, seq=3), _sale(501, till_id=7, seq=4), _sale(502, till_id=8, seq=1)]
        result = await writer.write_batch(conn, retried)
        assert (result.written, result.duplicates, result.dead) == (2, 0, 1)
        assert [r["id"] for r in await conn.fetch("SELECT id FROM sales ORDER BY id")] == [101, 102, 103, 501, 502]
        assert await _progress(conn) == [(1, 7, 4), (1, 8, 1)]
        letter = await conn.fetchrow("SELECT sale_id, sale, reason FROM dead_letter")
        assert (letter["sale_id"], letter["reason"]) == (500, "sale 3 of till 7 is stored already as sale 103")
        assert (letter["sale"]["till_id"], letter["sale"]["till_seq"], letter["sale"]["till_time"]) == (7, 3, None)
        assert await conn.fetchval("SELECT sum(sales) FROM store_monthly") == 5


async def test_the_same_number_twice_in_one_batch_is_stored_once(db, seed, worker_pool):
    await seed(items=1, stores=1)
    async with worker_pool.acquire() as conn:
        result = await writer.write_batch(conn, [_sale(100, till_id=7, seq=1), _sale(101, till_id=7, seq=1)])
        assert (result.written, result.dead) == (1, 1)
        assert await conn.fetchval("SELECT count(*) FROM sales") == 1


async def test_the_tills_time_is_kept_beside_the_servers(db, seed, worker_pool):
    """Packed on its own (a till time, a key) or with numpy (the till's usual sale): every
    column comes out as it went in, by COPY and by the INSERT path alike."""
    await seed(items=1, stores=1)
    now_us = int(time.time() * 1_000_000)
    ahead_us = now_us + 90_000_000
    rows = [
        _sale(100, till_id=7, seq=1, till_time_us=ahead_us, now_us=now_us),
        _sale(101, till_id=7, seq=2, now_us=now_us),
        _sale(102, key="k-1", now_us=now_us),
        _sale(103, till_id=8, seq=1, key="k-2", now_us=now_us),
        _sale(104, now_us=now_us),
    ]
    async with worker_pool.acquire() as conn:
        await writer.write_batch(conn, rows)
        copied = [tuple(r) for r in await conn.fetch(STORED)]
        await conn.execute("TRUNCATE sales, sale_keys, till_progress")
        inserted, lost = await writer.insert_rows(conn, rows)
        assert (inserted, lost) == (5, [])
        assert [tuple(r) for r in await conn.fetch(STORED)] == copied
    at = writer.row_json(rows[0])["till_time"]
    assert copied[0][3].isoformat() == at
    assert [(r[1], r[2], r[3] is not None) for r in copied] == [
        (7, 1, True),
        (7, 2, False),
        (None, None, False),
        (8, 1, False),
        (None, None, False),
    ]
    assert all(r[4].timestamp() * 1_000_000 == now_us for r in copied)


async def test_a_number_below_the_progress_that_was_never_stored_is_written(db, seed, worker_pool):
    """Numbers below a till's progress may be unstored (a sale refused, dead-lettered, a number
    given up): one replayed later is written, not taken for a duplicate."""
    await seed(items=1, stores=1)
    async with worker_pool.acquire() as conn:
        await writer.write_batch(conn, [_sale(101, till_id=7, seq=1), _sale(103, till_id=7, seq=3)])
        late = await writer.write_batch(conn, [_sale(102, till_id=7, seq=2)])
        assert (late.written, late.duplicates, late.dead) == (1, 0, 0)
        assert await conn.fetchval("SELECT array_agg(till_seq ORDER BY till_seq) FROM sales") == [1, 2, 3]
        assert await _progress(conn) == [(1, 7, 3)]
