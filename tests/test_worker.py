"""The worker: sales written once whatever the redeliveries, bad rows dead-lettered, dead consumers' entries
taken over."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid

from arq import create_pool as create_arq_pool
from arq.connections import RedisSettings
from arq.worker import func

from shared import chain_fold, rollups
from shared.queue import QueueKeys, decode_sale_rows
from shared.sale_ids import reserve_blocks
from tests import recount
from tests.conftest import REDIS_URL
from tests.queue_state import pending, queued, queued_entries, queued_sales, read_as
from tests.recount import NO_DRIFT
from worker import writer
from worker.consumer import StreamConsumer
from worker.leases import Leases
from worker.settings import ResilientWorker, forget_stopped_consumers


async def _post_batch(client, sales):
    response = await client.post("/sales/batch/", json=sales)
    assert response.status == 202, await response.text()
    return await response.json()


async def _stored_ids(db) -> list[int]:
    return [r["id"] for r in await db.fetch("SELECT id FROM sales ORDER BY id")]


async def _snapshot(db):
    await chain_fold.fold(db, wait=True)  # the chain-wide rollups with every delta in them
    return (
        [tuple(r) for r in await db.fetch("SELECT * FROM sales ORDER BY id")],
        [tuple(r) for r in await db.fetch("SELECT * FROM store_monthly ORDER BY 1, 2")],
        [tuple(r) for r in await db.fetch("SELECT * FROM item_totals ORDER BY 1")],
        [tuple(r) for r in await db.fetch("SELECT * FROM daily_totals ORDER BY 1, 2")],
        [tuple(r) for r in await db.fetch("SELECT * FROM store_item_daily ORDER BY 1, 2, 3")],
        [tuple(r) for r in await db.fetch("SELECT * FROM store_running ORDER BY 1, 2")],
        [tuple(r) for r in await db.fetch("SELECT * FROM item_running ORDER BY 1, 2")],
    )


async def test_drain_writes_queued_sales(client, seed, db, drain, redis_client, queue_keys):
    await seed(items=4, stores=3)
    answers = await _post_batch(
        client, [{"item_id": i % 4 + 1, "store_id": i % 3 + 1, "quantity": i + 1} for i in range(10)]
    )
    single = await client.post("/sales/", json={"item_id": 2, "store_id": 2})
    answers.append(await single.json())
    assert await _stored_ids(db) == []
    assert await queued_entries(redis_client, queue_keys) == 4  # the batch: one per store (partition); the single

    await drain()
    assert await _stored_ids(db) == sorted(a["id"] for a in answers)
    assert await db.fetchval("SELECT sum(quantity) FROM sales") == sum(range(1, 11)) + 1
    assert await queued_entries(redis_client, queue_keys) == 0
    assert await queued_sales(redis_client, queue_keys) == 0
    assert await rollups.drift(db) == NO_DRIFT
    assert await (await client.get("/items/top/")).json() == await recount.top_items(db)


async def test_write_batch_twice_stores_each_sale_once(seed, db, worker_pool):
    await seed(items=3, stores=2)
    prices = {r["id"]: r["price"] for r in await db.fetch("SELECT id, price FROM item")}
    [start] = await reserve_blocks(db, 1)
    now_us = int(time.time() * 1_000_000)
    rows = [
        (
            start + i,
            now_us - i * 86_400_000_000,
            i % 3 + 1,
            i % 2 + 1,
            prices[i % 3 + 1],
            i + 1,
            f"k-{i}" if i % 2 else None,
            now_us,
            prices[i % 3 + 1],
        )
        for i in range(40)
    ]

    async with worker_pool.acquire() as conn:
        first = await writer.write_batch(conn, rows)
        assert (first.written, first.duplicates, first.dead) == (40, 0, 0)
        snapshot = await _snapshot(db)
        second = await writer.write_batch(conn, rows)
        assert (second.written, second.duplicates, second.dead) == (0, 40, 0)
        # A batch overlapping the first: only the new rows count.
        extra = (start + 40, now_us, 1, 1, prices[1], 5, None, now_us, prices[1])
        third = await writer.write_batch(conn, [*rows[10:20], extra])
        assert (third.written, third.duplicates, third.dead) == (1, 10, 0)

    after = (await _snapshot(db))[0]
    assert after[:40] == snapshot[0] and after[40][0] == start + 40
    assert await db.fetchval("SELECT count(*) FROM sales") == 41
    assert await db.fetchval("SELECT sum(quantity) FROM sales") == sum(range(1, 41)) + 5
    assert await rollups.drift(db) == NO_DRIFT
    assert await db.fetchval("SELECT count(*) FROM dead_letter") == 0


async def test_readded_stream_entry_is_stored_once(client, seed, db, drain, redis_client, queue_keys):
    await seed(items=3, stores=3)
    answers = await _post_batch(
        client, [{"item_id": i % 3 + 1, "store_id": 3 - i % 3, "quantity": 2} for i in range(6)]
    )
    entries = await queued(redis_client, queue_keys)
    assert len(entries) == 3  # one per store's partition
    await drain()
    snapshot = await _snapshot(db)
    assert len(snapshot[0]) == 6

    # The same entries delivered again (as after a lost acknowledgement), twice over.
    for _ in range(2):
        for partition, _, fields in entries:
            await redis_client.xadd(partition.stream, fields)
            await redis_client.incrby(partition.depth, int(fields[b"n"]))
    await drain()
    assert await _snapshot(db) == snapshot
    assert await rollups.drift(db) == NO_DRIFT
    assert await queued_entries(redis_client, queue_keys) == 0
    assert await queued_sales(redis_client, queue_keys) == 0
    assert sorted(a["id"] for a in answers) == await _stored_ids(db)
    stats = await redis_client.hgetall(queue_keys.worker_stats)
    assert int(stats[b"duplicates"]) == 12 and int(stats[b"sales_written"]) == 6


async def test_entry_written_but_not_acknowledged_is_not_counted_again(
    client, seed, db, drain, redis_client, queue_keys, worker_pool
):
    """A worker that committed a batch and died before XACK: the next one redelivers it."""
    await seed(items=2, stores=2)
    await _post_batch(client, [{"item_id": 1, "store_id": 2, "quantity": 3}, {"item_id": 2, "store_id": 1}])
    read = await read_as(redis_client, queue_keys, "crashed")
    rows = [row for _, _, fields in read for row in decode_sale_rows(fields[b"d"])]
    async with worker_pool.acquire() as conn:
        result = await writer.write_batch(conn, rows)
    assert result.written == 2
    snapshot = await _snapshot(db)

    await drain()  # takes the pending entry over and processes it again
    assert await _snapshot(db) == snapshot
    assert await rollups.drift(db) == NO_DRIFT
    assert await queued_entries(redis_client, queue_keys) == 0
    assert await pending(redis_client, queue_keys) == 0


async def test_row_whose_item_was_deleted_goes_to_dead_letter_and_the_rest_is_stored(
    client, seed, db, drain, redis_client, queue_keys
):
    await seed(items=3, stores=2)
    answers = await _post_batch(
        client,
        [
            {"item_id": 1, "store_id": 1, "quantity": 2},
            {"item_id": 2, "store_id": 2, "quantity": 4},
            {"item_id": 3, "store_id": 2},
        ],
    )
    assert await queued_entries(redis_client, queue_keys) == 2  # one per store's partition, read as one batch
    await db.execute("DELETE FROM item WHERE id = 2")

    await drain()
    assert await _stored_ids(db) == sorted([answers[0]["id"], answers[2]["id"]])
    [dead] = await db.fetch("SELECT * FROM dead_letter")
    assert dead["sale_id"] == answers[1]["id"]
    assert dead["replayed_at"] is None
    assert "item" in dead["reason"] and "foreign key" in dead["reason"]
    assert await db.fetchval("SELECT jsonb_typeof(sale) FROM dead_letter") == "object"
    sale = json.loads(dead["sale"])
    assert (sale["id"], sale["item_id"], sale["store_id"], sale["quantity"]) == (answers[1]["id"], 2, 2, 4)
    assert dt.datetime.fromisoformat(sale["sale_time"]) == dt.datetime.fromisoformat(answers[1]["sale_time"])
    assert await rollups.drift(db) == NO_DRIFT
    assert await queued_entries(redis_client, queue_keys) == 0
    assert await queued_sales(redis_client, queue_keys) == 0
    stats = await redis_client.hgetall(queue_keys.worker_stats)
    assert int(stats[b"dead_letters"]) == 1 and int(stats[b"sales_written"]) == 2

    text = await (await client.get("/metrics")).text()
    assert "\nworker_dead_letters_total 1.0" in text
    assert "\ndead_letters_pending 1.0" in text


async def test_undecodable_entry_goes_to_dead_letter(client, seed, db, drain, redis_client, queue_keys):
    await seed()
    await _post_batch(client, [{"item_id": 1, "store_id": 1}])
    await redis_client.xadd(queue_keys.partition(0).stream, {"n": 1, "d": b"\xc1 not msgpack"})
    await redis_client.incrby(queue_keys.partition(0).depth, 1)
    await _post_batch(client, [{"item_id": 2, "store_id": 2}])
    await drain()
    assert await db.fetchval("SELECT count(*) FROM sales") == 2
    [dead] = await db.fetch("SELECT * FROM dead_letter")
    assert "undecodable" in dead["reason"]
    assert await queued_entries(redis_client, queue_keys) == 0
    assert await queued_sales(redis_client, queue_keys) == 0


async def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_partitions_of_a_dead_worker_are_taken_over_once(client, seed, db, redis_client, queue_keys, worker_pool):
    """A worker that read entries and died: its leases lapse, and a live worker takes its
    partitions over and claims those entries at once, writing each sale once."""
    await seed(items=3, stores=3)
    answers = []
    for i in range(3):  # three entries, in three partitions
        answers += await _post_batch(client, [{"item_id": i + 1, "store_id": 3 - i, "quantity": i + 1}] * 4)
    dead = Leases(redis_client, queue_keys, "dead-worker", lease_ms=1500)
    await dead.refresh()
    assert dead.held == set(range(queue_keys.partitions))  # alone: every partition
    assert len(await read_as(redis_client, queue_keys, "dead-worker")) == 3

    live = StreamConsumer(redis_client, worker_pool, queue_keys, "live", reclaim_idle_ms=1500, block_ms=50)
    task = asyncio.create_task(live.run())
    try:
        # While the dead worker's leases last, its partitions are left alone.
        await asyncio.sleep(0.5)
        assert await _stored_ids(db) == []
        assert await pending(redis_client, queue_keys) == 3
        # Once they lapse: taken over, written, acknowledged.
        await _wait_for(lambda: _count_is(db, 12), 10, "the dead worker's sales")
        await _wait_for(lambda: _stream_empty(redis_client, queue_keys), 5, "the acknowledgements")
        assert live.partitions_held == set(range(queue_keys.partitions))
    finally:
        live.stop()
        await asyncio.wait_for(task, 5)
    assert await _stored_ids(db) == sorted(a["id"] for a in answers)
    assert await db.fetchval("SELECT sum(quantity) FROM sales") == 4 * (1 + 2 + 3)
    assert await rollups.drift(db) == NO_DRIFT
    assert await pending(redis_client, queue_keys) == 0
    assert await queued_sales(redis_client, queue_keys) == 0
    # A stopped worker gives its partitions back and leaves the group.
    # The dead worker's membership lapsed (the live one dropped it); the live one left on stop.
    assert await redis_client.zcard(queue_keys.writers) == 0
    assert not any([await redis_client.exists(queue_keys.lease(p)) for p in range(queue_keys.partitions)])


async def _count_is(db, n):
    return await db.fetchval("SELECT count(*) FROM sales") == n


async def _stream_empty(redis_client, queue_keys):
    return await queued_entries(redis_client, queue_keys) == 0


async def test_copied_batch_is_stored_as_queued_and_cut_at_local_midnight(seed, db, worker_pool):
    # Sales a microsecond and a second either side of a local month start, in a zone 5:45 ahead
    # of UTC: the batch's sums by whole second must cut days and months as the rollups' recount does.
    await seed(items=3, stores=2)
    await rollups.ensure_timezone(db, "Asia/Kathmandu")
    prices = {r["id"]: r["price"] for r in await db.fetch("SELECT id, price FROM item")}
    [start] = await reserve_blocks(db, 1)
    month_start = dt.datetime(2026, 3, 1, tzinfo=__import__("zoneinfo").ZoneInfo("Asia/Kathmandu"))
    edge_us = int(month_start.timestamp()) * 1_000_000
    times = [edge_us + delta for delta in (-1_000_000, -1, 0, 1, 999_999, 1_000_000)] * 4
    now_us = int(time.time() * 1_000_000)
    rows = [
        (
            start + i,
            t,
            i % 3 + 1,
            i % 2 + 1,
            prices[i % 3 + 1],
            i % 5 + 1,
            f"key-é-{i}" if i % 7 == 0 else None,
            now_us - i,
            prices[i % 3 + 1],
        )
        for i, t in enumerate(times)
    ]
    async with worker_pool.acquire() as conn:
        result = await writer.write_batch(conn, rows)
    assert (result.written, result.duplicates, result.dead) == (len(rows), 0, 0)
    stored = await db.fetch(
        "SELECT id, (extract(epoch FROM sale_time) * 1000000)::bigint AS t, item_id, store_id, "
        "price, quantity, idempotency_key, "
        "(extract(epoch FROM accepted_at) * 1000000)::bigint AS a, list_price "
        "FROM sales ORDER BY id"
    )
    assert [tuple(r) for r in stored] == rows
    assert await rollups.drift(db) == NO_DRIFT
    days = {
        r["day"]: r["sales"] for r in await db.fetch("SELECT day, sum(sales) AS sales FROM daily_totals GROUP BY day")
    }
    assert days == {dt.date(2026, 2, 28): 8, dt.date(2026, 3, 1): 16}


def test_entries_are_cut_into_transactions_by_their_sale_counts():
    from worker.consumer import _chunks

    partition = QueueKeys().partition(0)
    counts = [3, 4, 9, 1, 1, 2]
    entries = [(partition, f"{i}-0".encode(), {b"n": str(n).encode(), b"d": b""}) for i, n in enumerate(counts)]
    assert [[e[1] for e in chunk] for chunk in _chunks(entries, 7)] == [
        [b"0-0", b"1-0"],
        [b"2-0"],
        [b"3-0", b"4-0", b"5-0"],
    ]  # the 9-sale entry alone
    assert _chunks([], 7) == []
    purged, malformed = (partition, b"6-0", {}), (partition, b"7-0", {b"n": b"x"})
    assert len(_chunks([*entries, purged, malformed], 7)[-1]) == 5  # purged / malformed: 0 sales


async def test_a_read_bigger_than_a_transaction_is_written_in_several(
    client, seed, db, redis_client, queue_keys, worker_pool, monkeypatch
):
    from worker import consumer as consumer_module

    await seed(items=3, stores=3)
    answers = []
    for i in range(5):  # five entries of 4 sales
        answers += await _post_batch(client, [{"item_id": i % 3 + 1, "store_id": 1, "quantity": i + 1}] * 4)
    monkeypatch.setattr(consumer_module, "MAX_SALES_PER_TRANSACTION", 8)
    consumer = StreamConsumer(redis_client, worker_pool, queue_keys, "chunked")
    assert await consumer.run_until_empty() == 3  # 8 + 8 + 4 sales
    assert await _stored_ids(db) == sorted(a["id"] for a in answers)
    assert await rollups.drift(db) == NO_DRIFT
    assert await queued_entries(redis_client, queue_keys) == 0 and await queued_sales(redis_client, queue_keys) == 0


async def test_a_job_cancelled_by_shutdown_does_not_fail_the_worker_process():
    """SIGTERM cancels running jobs. One cancelled inside arq's own bookkeeping (its first Redis
    pipeline, before the job's function runs) used to raise out of close(): exit code 1 (seen in CI)."""
    pool = await create_arq_pool(RedisSettings.from_dsn(REDIS_URL))
    worker = ResilientWorker(
        functions=[func(forget_stopped_consumers)],
        redis_pool=pool,
        handle_signals=False,
        queue_name=f"test-close-{uuid.uuid4().hex[:12]}",
    )
    awaiting_redis = asyncio.Event()

    async def job_starting() -> None:
        awaiting_redis.set()
        await asyncio.sleep(30)

    job = asyncio.create_task(job_starting())
    worker.tasks["job-id"] = job
    await awaiting_redis.wait()
    await worker.close()  # cancels the job, as handle_sig does on SIGTERM
    assert job.cancelled()
