"""The group commit itself: every put() is answered, whatever the timing."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Connection
from redis.exceptions import DataError

from api.sale_queue import SaleQueue
from shared.queue import QueuedSale
from shared.redis_client import HiredisPackingConnection, connect_redis
from tests.queue_state import queued_sales


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
    assert await queued_sales(redis_client, queue_keys) == 50


async def test_concurrent_puts_all_answered_once(redis_client, queue_keys):
    queue = SaleQueue(redis_client, queue_keys, max_depth=10_000, idempotency_ttl=60)
    results = await asyncio.wait_for(asyncio.gather(*(queue.put([_sale(n)]) for n in range(500))), 10)
    assert sorted(r[0].id for r in results) == list(range(500))
    await queue.close()
    assert await queued_sales(redis_client, queue_keys) == 500


@pytest.mark.parametrize(
    "args",
    [
        ("SET", "k", "é"),
        ("SET", b"k", b"\x00\xff"),
        ("INCRBY", "k", 2**70),
        ("SET", "k", 0.1),
        ("SET", "k", memoryview(b"view")),
        ("CLIENT SETNAME", "name"),
        ("EVALSHA", "f" * 40, 2, "a", "b", *range(3000)),
    ],
)
def test_commands_are_encoded_as_redis_py_encodes_them(args):
    ours, theirs = HiredisPackingConnection(), Connection()
    assert b"".join(ours.pack_command(*args)) == b"".join(map(bytes, theirs.pack_command(*args)))


@pytest.mark.parametrize("value", [None, True, bytearray(b"x")])
def test_values_redis_py_refuses_are_still_refused(value):
    with pytest.raises(DataError):
        HiredisPackingConnection().pack_command("SET", "k", value)


async def test_the_product_client_packs_in_c_and_round_trips(settings, queue_keys):
    client = connect_redis(settings.redis_url)
    assert client.connection_pool.connection_class is HiredisPackingConnection
    key = queue_keys.prefix + "pack-check"
    await client.set(key, "é")
    assert await client.get(key) == "é".encode()
    await client.delete(key)
    await client.aclose()
