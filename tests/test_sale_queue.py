"""The group commit itself: every put() is answered, whatever the timing."""
from __future__ import annotations

import asyncio

import pytest

from api.sale_queue import SaleQueue
from shared.queue import QueuedSale


def _sale(n: int) -> QueuedSale:
    return QueuedSale(n, 1, 1, 1, 100, 1, None, 1)


@pytest.mark.parametrize("max_in_flight", [1, 2, 4])
async def test_a_put_right_after_a_flush_is_still_flushed(redis_client, queue_keys, max_in_flight):
    # A sequential client resumes before the finished flusher's done-callbacks have run:
    # its next put() must still find a flusher, or it waits forever.
    queue = SaleQueue(redis_client, queue_keys, max_depth=10_000, idempotency_ttl=60, max_in_flight=max_in_flight)
    for n in range(50):
        async with asyncio.timeout(2):  # no extra task between us and the queue
            [stored] = await queue.put([_sale(n)])
        assert stored.id == n
    await queue.close()
    assert await redis_client.get(queue_keys.depth) == b"50"


async def test_concurrent_puts_all_answered_once(redis_client, queue_keys):
    queue = SaleQueue(redis_client, queue_keys, max_depth=10_000, idempotency_ttl=60)
    results = await asyncio.wait_for(asyncio.gather(*(queue.put([_sale(n)]) for n in range(500))), 10)
    assert sorted(r[0].id for r in results) == list(range(500))
    await queue.close()
    assert await redis_client.get(queue_keys.depth) == b"500"
