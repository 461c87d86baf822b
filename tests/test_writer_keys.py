"""The worker checks the foreign keys of a batch once per distinct id, not once per row:
integrity must be exactly what PostgreSQL's own per-row checks give."""

from __future__ import annotations

import time

import asyncpg
import pytest

from shared.queue import full_rows
from tests.conftest import CITUS
from worker import writer


def _rows(ids, item_id, store_id, price=100):
    now = int(time.time() * 1_000_000)
    return [(i, now, item_id, store_id, price, 1, None, now, price) for i in ids]


async def test_batch_is_written_and_the_session_keeps_its_row_checks(db, seed, database_url):
    await seed(items=2, stores=2)
    conn = await asyncpg.connect(database_url, server_settings=writer.SESSION_SETTINGS)
    await writer.prepare_connection(conn)
    result = await writer.write_batch(conn, _rows(range(10_001, 10_101), 1, 2))
    assert (result.written, result.dead) == (100, 0)
    assert await conn.fetchval("SHOW session_replication_role") == "origin"
    # the foreign keys still hold for anything written outside the worker's batches
    try:
        await conn.execute("INSERT INTO sales (item_id, store_id, price) VALUES (99, 1, 1)")
        raise AssertionError("a sale for a missing item was accepted")
    except asyncpg.ForeignKeyViolationError:
        pass
    await conn.close()


async def test_missing_parent_takes_the_checked_path(db, seed, database_url):
    await seed(items=3, stores=2)
    await db.execute("DELETE FROM item WHERE id = 3")
    conn = await asyncpg.connect(database_url, server_settings=writer.SESSION_SETTINGS)
    await writer.prepare_connection(conn)
    rows = _rows(range(20_001, 20_050), 1, 1) + _rows([20_050], 3, 1) + _rows(range(20_051, 20_100), 2, 2)
    result = await writer.write_batch(conn, rows)
    await conn.close()
    assert (result.written, result.dead) == (98, 1)
    assert await db.fetchval("SELECT count(*) FROM sales WHERE item_id NOT IN (SELECT id FROM item)") == 0
    reason = await db.fetchval("SELECT reason FROM dead_letter WHERE sale_id = 20050")
    assert "item" in reason


@pytest.mark.skipif(
    CITUS,
    reason="the batch-wide foreign key lock is the single-node path; "
    "on Citus the worker nodes check each row (worker.writer)",
)
async def test_referenced_item_cannot_be_deleted_while_a_batch_holds_it(db, seed, database_url):
    await seed(items=2, stores=1)
    conn = await asyncpg.connect(database_url, server_settings=writer.SESSION_SETTINGS)
    await writer.prepare_connection(conn)
    async with conn.transaction():
        await conn.fetchval(writer.LOCK_PARENTS_AND_SKIP_ROW_CHECKS, [2], [1], "")
        # another session trying to delete item 2 now waits for us, as with a per-row check
        other = await asyncpg.connect(database_url)
        try:
            await other.execute("SET lock_timeout = '200ms'")
            try:
                await other.execute("DELETE FROM item WHERE id = 2")
                raise AssertionError("the item was deleted under the batch")
            except asyncpg.LockNotAvailableError:
                pass
        finally:
            await other.close()
        await conn.fetch(writer.INSERT_ROWS, *zip(*full_rows(_rows([30_001], 2, 1))))
    await conn.close()
    assert await db.fetchval("SELECT count(*) FROM sales WHERE id = 30001") == 1


async def test_redelivered_bad_row_is_filed_once(db, seed, database_url):
    await seed(items=2, stores=1)
    await db.execute("DELETE FROM item WHERE id = 2")
    conn = await asyncpg.connect(database_url, server_settings=writer.SESSION_SETTINGS)
    await writer.prepare_connection(conn)
    rows = _rows([40_001], 1, 1) + _rows([40_002], 2, 1)
    first = await writer.write_batch(conn, rows)
    second = await writer.write_batch(conn, rows)  # the ack was lost: the same batch again
    await conn.close()
    assert (first.written, first.dead, second.written, second.duplicates, second.dead) == (1, 1, 0, 2, 0)
    assert await db.fetchval("SELECT count(*) FROM dead_letter WHERE sale_id = 40002") == 1
