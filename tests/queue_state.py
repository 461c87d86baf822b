"""What the queue holds, over all its partitions (shared.queue)."""

from __future__ import annotations

import contextlib

from redis.exceptions import ResponseError

from shared.queue import GROUP, Partition, QueueKeys, depth_and_oldest, every_stream


async def queued_entries(client, keys: QueueKeys) -> int:
    """Stream entries in every partition."""
    async with client.pipeline(transaction=False) as pipe:
        for partition in every_stream(keys):
            pipe.xlen(partition.stream)
        return sum(await pipe.execute())


async def queued_sales(client, keys: QueueKeys) -> int:
    """The partitions' depth counters added up (what backpressure and /health/ read)."""
    depth, _ = await depth_and_oldest(client, keys)
    return depth


async def queued(client, keys: QueueKeys) -> list[tuple[Partition, bytes, dict]]:
    """Every entry of every partition: (its partition, id, fields)."""
    found = []
    for partition in every_stream(keys):
        found += [(partition, entry_id, fields) for entry_id, fields in await client.xrange(partition.stream)]
    return found


async def read_as(client, keys: QueueKeys, consumer: str) -> list[tuple[Partition, bytes, dict]]:
    """Read every new entry as `consumer` (a worker that will crash), leaving them pending on it."""
    read = []
    for partition in keys.all_partitions:
        with contextlib.suppress(ResponseError):  # BUSYGROUP
            await client.xgroup_create(partition.stream, GROUP, id="0", mkstream=True)
        for _, entries in await client.xreadgroup(GROUP, consumer, {partition.stream: ">"}) or []:
            read += [(partition, entry_id, fields) for entry_id, fields in entries]
    return read


async def pending(client, keys: QueueKeys) -> int:
    """Entries delivered to a consumer and not acknowledged, in every partition and the previous release's stream."""
    total = 0
    for partition in every_stream(keys):
        with contextlib.suppress(ResponseError):  # no stream or group yet
            total += (await client.xpending(partition.stream, GROUP))["pending"]
    return total


async def consumers(client, keys: QueueKeys) -> dict[str, int]:
    """Each consumer (worker) known to any partition's group, with its entries pending there."""
    found: dict[str, int] = {}
    for partition in every_stream(keys):
        with contextlib.suppress(ResponseError):  # no stream or group (yet)
            for consumer in await client.xinfo_consumers(partition.stream, GROUP):
                name = consumer["name"].decode() if isinstance(consumer["name"], bytes) else consumer["name"]
                found[name] = found.get(name, 0) + consumer["pending"]
    return found
