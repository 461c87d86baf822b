"""Which queue partitions this worker consumes: one worker per partition at a time.

The way a Kafka consumer group assigns partitions, with Redis keys for the group. Each live
worker keeps a membership in `QueueKeys.writers` (scored with the Redis time at which it lapses)
and a lease per partition it holds (`QueueKeys.lease`: its name, with an expiry). At every
refresh a worker renews its membership, reads the live members in name order, and wants
partition p when p mod (members) is its own place among them: a fair share, the same answer in
every worker. It gives up the leases it holds but no longer wants and takes (SET NX) or renews
the ones it wants; a partition another worker still holds stays with it until that worker lets
it go at its own refresh (or its lease lapses, if it died). So a partition never has two holders
at once, a new worker gets its share within one refresh interval, and a dead worker's partitions
move within the lease time (WORKER_RECLAIM_IDLE_MS).

Every command touches one key, so this works unchanged on a Redis Cluster.
"""

from __future__ import annotations

import time

import redis.asyncio as redis

from shared.queue import QueueKeys

# KEYS: the members sorted set. ARGV: this worker's name, the lease time (ms). Renews the
# membership, forgets lapsed members, answers the live ones (sorted by name).
JOIN_SCRIPT = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""

# KEYS: a lease. ARGV: this worker's name, the lease time (ms). 1: renewed, 2: taken now, 0: held
# by another worker.
TAKE_SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
end
if holder then
    return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 2
"""

# KEYS: a lease. ARGV: this worker's name. Lets it go, if it is still this worker's.
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


def wanted(members: list[str], name: str, partitions: int) -> set[int]:
    """The partitions `name` should hold among `members` (every worker computes the same)."""
    if name not in members:
        return set()
    place, count = sorted(members).index(name), len(members)
    return {p for p in range(partitions) if p % count == place}


class Leases:
    def __init__(self, client: redis.Redis, keys: QueueKeys, name: str, lease_ms: int):
        self._redis = client
        self._keys = keys
        self._name = name
        self._lease_ms = lease_ms
        self._join = client.register_script(JOIN_SCRIPT)
        self._take = client.register_script(TAKE_SCRIPT)
        self._release = client.register_script(RELEASE_SCRIPT)
        self.held: set[int] = set()
        self._refreshed_at = float("-inf")

    @property
    def due(self) -> bool:
        """A third of the lease time since the last refresh: renew well before anything lapses."""
        return time.monotonic() - self._refreshed_at >= self._lease_ms / 3000

    async def refresh(self, give_up: bool = True) -> set[int]:
        """Renew the membership and take this worker's fair share, keeping what it holds unless
        `give_up`; the partitions taken now (their pending entries are the previous holder's,
        to be claimed at once)."""
        started = time.monotonic()
        joined = await self._join(keys=[self._keys.writers], args=[self._name, self._lease_ms])
        members = [m.decode() if isinstance(m, bytes) else m for m in joined]
        share = wanted(members, self._name, self._keys.partitions)
        return await self._hold(share if give_up else share | self.held, started)

    async def take_all_free(self) -> set[int]:
        """Every partition no other worker holds (draining the queue once: tests, replays)."""
        return await self._hold(set(range(self._keys.partitions)), time.monotonic())

    async def _hold(self, wanted_now: set[int], started: float) -> set[int]:
        given_up = sorted(self.held - wanted_now)
        asked = sorted(wanted_now)
        async with self._redis.pipeline(transaction=False) as pipe:
            for partition in given_up:
                await self._release(keys=[self._keys.lease(partition)], args=[self._name], client=pipe)
            for partition in asked:
                await self._take(keys=[self._keys.lease(partition)], args=[self._name, self._lease_ms], client=pipe)
            answers = (await pipe.execute())[len(given_up) :]
        self.held = {p for p, answer in zip(asked, answers) if answer}
        self._refreshed_at = started
        return {p for p, answer in zip(asked, answers) if answer == 2}

    async def leave(self) -> None:
        """Give every partition back and leave the group: the others take them over at their
        next refresh instead of after the lease time."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self._keys.writers, self._name)
            for partition in sorted(self.held):
                await self._release(keys=[self._keys.lease(partition)], args=[self._name], client=pipe)
            await pipe.execute()
        self.held = set()
        self._refreshed_at = float("-inf")
