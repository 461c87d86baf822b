"""Sale ids reserved in blocks: enough in hand to ride out an outage, and no storm of retries."""

from __future__ import annotations

import asyncio
import socket

import pytest

from api import ids as ids_module
from api.ids import IdAllocator, IdsUnavailable
from shared.db import create_pool


async def test_a_full_block_stays_in_hand(database_url):
    pool = await create_pool(database_url, max_size=2)
    allocator = IdAllocator(pool, min_block=1_000)
    taken = []
    for _ in range(1_500):
        taken += await allocator.take(1)
        if allocator._refill:
            await allocator._refill  # let each background fetch land, as time would
    assert len(set(taken)) == 1_500 and taken == sorted(taken)
    assert len(allocator._ids) >= 1_000  # a block's worth left, not half of one
    await allocator.close()
    await pool.close()


async def test_a_process_holds_ids_before_its_first_sale(database_url):
    """Prefetched at start: the first sales need no PostgreSQL (here the pool is gone)."""
    pool = await create_pool(database_url, max_size=1)
    allocator = IdAllocator(pool, min_block=1_000)
    allocator.prefetch()
    await allocator._refill
    await pool.close()
    taken = await allocator.take(999)
    assert len(set(taken)) == 999
    await allocator.close()


async def test_a_refused_fetch_is_retried_at_most_once_a_second(monkeypatch):
    with socket.socket() as sock:  # a port nobody listens on: PostgreSQL is away
        sock.bind(("127.0.0.1", 0))
        dead_url = f"postgresql://postgres@127.0.0.1:{sock.getsockname()[1]}/none"
    pool = await create_pool(dead_url, min_size=0, max_size=1)
    allocator = IdAllocator(pool)
    fetches = 0
    real_fetch = allocator._fetch

    async def counted_fetch(count):
        nonlocal fetches
        fetches += 1
        await real_fetch(count)

    monkeypatch.setattr(allocator, "_fetch", counted_fetch)
    monkeypatch.setattr(ids_module, "RETRY_SECONDS", 0.3)
    for _ in range(20):
        with pytest.raises(IdsUnavailable, match="cannot reserve sale ids"):
            await allocator.take(1)
    assert fetches == 1
    await asyncio.sleep(0.35)
    with pytest.raises(IdsUnavailable):
        await allocator.take(1)
    assert fetches == 2
    await allocator.close()
    await pool.close()


def test_blocks_cover_two_minutes_and_shrink_by_half_at_most():
    allocator = IdAllocator(pool=None, min_block=1_000, max_block=100_000)

    def window(used: int) -> int:
        allocator._window_start -= 5.0  # as if a 5-second window had passed
        allocator._note_use(used)
        return allocator._block

    assert window(500) == pytest.approx(12_000, rel=0.01)  # 100 sales/s, two minutes' worth
    assert window(0) == pytest.approx(6_000, rel=0.01)  # idle: half, not the minimum at once
    assert window(0) == pytest.approx(3_000, rel=0.01)
    assert window(50_000) == 100_000  # capped
