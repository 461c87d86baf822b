"""Queue partitions shared out among workers by leases (worker.leases), on the real Redis."""

from __future__ import annotations

import asyncio
import dataclasses

from shared import rollups
from shared.queue import GROUP, QueuedSale, sale_encoder
from tests.queue_state import queued_entries, queued_sales
from tests.recount import NO_DRIFT
from worker.consumer import StreamConsumer
from worker.leases import Leases, wanted


def test_every_partition_has_exactly_one_wanted_holder_and_shares_are_fair():
    for count in range(1, 10):
        members = [f"worker-{i}" for i in range(count)]
        shares = [wanted(members, name, 16) for name in reversed(members)]  # any order: same answer
        assert set().union(*shares) == set(range(16))
        assert sum(len(share) for share in shares) == 16
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert wanted(["a", "b"], "c", 16) == set()  # not (yet) a member


async def test_a_joining_worker_gets_its_share_and_nobody_holds_a_partition_twice(redis_client, queue_keys):
    first = Leases(redis_client, queue_keys, "worker-a", lease_ms=10_000)
    second = Leases(redis_client, queue_keys, "worker-b", lease_ms=10_000)
    assert await first.refresh() == set(range(16))  # alone: everything, all taken now

    # The newcomer wants half, but gets only what the first one has let go.
    assert await second.refresh() == set()
    assert second.held == set()
    await first.refresh()  # sees two members: gives back the newcomer's half
    assert first.held == wanted(["worker-a", "worker-b"], "worker-a", 16)
    taken = await second.refresh()
    assert taken == second.held == wanted(["worker-a", "worker-b"], "worker-b", 16)
    assert first.held.isdisjoint(second.held) and first.held | second.held == set(range(16))
    holders = await redis_client.mget([queue_keys.lease(p) for p in range(16)])
    assert {p for p, h in enumerate(holders) if h == b"worker-b"} == second.held

    # A worker keeps what it holds while a batch is in hand, whatever the membership says.
    third = Leases(redis_client, queue_keys, "worker-c", lease_ms=10_000)
    await third.refresh()
    kept = set(first.held)
    await first.refresh(give_up=False)
    assert first.held == kept

    # Leaving gives everything back at once.
    await second.leave()
    await third.leave()
    assert await redis_client.zrange(queue_keys.writers, 0, -1) == [b"worker-a"]
    assert await first.refresh() == set(range(16)) - kept
    assert first.held == set(range(16))


async def test_a_dead_workers_partitions_move_when_its_lease_lapses(redis_client, queue_keys):
    dead = Leases(redis_client, queue_keys, "dead", lease_ms=300)
    live = Leases(redis_client, queue_keys, "live", lease_ms=300)
    await dead.refresh()
    await live.refresh()
    assert live.held == set()  # the dead one still holds everything
    await asyncio.sleep(0.4)  # its membership and leases lapse
    assert await live.refresh() == set(range(16))
    assert await redis_client.zrange(queue_keys.writers, 0, -1) == [b"live"]


async def test_two_consumers_write_every_sale_once_each_from_its_own_partitions(
    client, seed, db, redis_client, queue_keys, worker_pool
):
    await seed(items=3, stores=8)
    answers = []
    for store in range(1, 9):
        response = await client.post(
            "/sales/batch/", json=[{"item_id": i + 1, "store_id": store, "quantity": store} for i in range(3)]
        )
        assert response.status == 202
        answers += await response.json()
    assert len(answers) == 24
    consumers = [
        StreamConsumer(redis_client, worker_pool, queue_keys, name, reclaim_idle_ms=600, block_ms=50, linger_ms=0)
        for name in ("one", "two")
    ]
    tasks = [asyncio.create_task(c.run()) for c in consumers]
    try:
        for _ in range(200):  # both hold their half within a refresh (200 ms) of the other joining
            drained = await queued_sales(redis_client, queue_keys) == 0
            if drained and all(len(c.partitions_held) == 8 for c in consumers):
                break
            await asyncio.sleep(0.05)
        assert drained
        assert [len(c.partitions_held) for c in consumers] == [8, 8]
        assert consumers[0].partitions_held.isdisjoint(consumers[1].partitions_held)
    finally:
        for consumer in consumers:
            consumer.stop()
        await asyncio.gather(*tasks)
    assert await db.fetchval("SELECT count(*) FROM sales") == 24
    assert sorted(r["id"] for r in await db.fetch("SELECT id FROM sales")) == sorted(a["id"] for a in answers)
    assert await rollups.drift(db) == NO_DRIFT
    assert await redis_client.zcard(queue_keys.writers) == 0  # both left when stopped
    assert await redis_client.exists(*(queue_keys.lease(p) for p in range(16))) == 0


async def test_the_stream_of_a_release_before_partitions_is_drained(
    seed, db, drain, redis_client, queue_keys, settings
):
    """After an upgrade, sales queued by the previous release (one stream, `<prefix>stream`)
    are still written: by the worker that holds partition 0."""
    await seed(items=2, stores=3)
    legacy = queue_keys.unpartitioned
    sales = [QueuedSale(9_000 + i, 1_700_000_000_000_000, i % 2 + 1, i % 3 + 1, 100, 1, None, 0) for i in range(6)]
    await redis_client.xgroup_create(legacy.stream, GROUP, id="0", mkstream=True)
    await redis_client.xadd(legacy.stream, {"n": 6, "d": sale_encoder.encode(sales)})
    await redis_client.incrby(legacy.depth, 6)
    assert await queued_sales(redis_client, queue_keys) == 6  # /health/ and /metrics count it

    await drain()
    assert sorted(r["id"] for r in await db.fetch("SELECT id FROM sales")) == [s.id for s in sales]
    assert await queued_entries(redis_client, queue_keys) == 0
    assert await queued_sales(redis_client, queue_keys) == 0
    assert await rollups.drift(db) == NO_DRIFT


def test_partitions_setting_is_checked():
    import pytest

    from shared.settings import Settings

    assert Settings.from_env({}).queue_keys.partitions == 16
    assert Settings.from_env({"QUEUE_PARTITIONS": "64"}).queue_keys.partitions == 64
    with pytest.raises(ValueError, match="QUEUE_PARTITIONS must be between 1 and 1024, got 0"):
        Settings.from_env({"QUEUE_PARTITIONS": "0"})
    keys = dataclasses.replace(Settings().queue_keys, partitions=4)
    assert keys.partition(keys.partition_of(7)).stream == "sales:{p3}:stream"
    assert keys.max_depth_per_partition(10) == 3
