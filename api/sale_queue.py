"""Group commit of accepted sales into the Redis stream.

Requests hand their sales to `SaleQueue.put`; while Redis round trips are in flight, the
sales of every request that arrives meanwhile wait and go together in the next one (one
stream entry per queue partition they fall in; shared.queue). A request gets its answer only
after Redis has acknowledged its sales.

Up to `max_in_flight` round trips run at once: on a busy machine a round trip's latency is
mostly waiting for the CPU, and a single one in flight capped a process at about
(sales per flush) / (round trip) no matter how idle the process was.

With `replicas` > 0 (Redis with replicas), the script is followed by `WAIT replicas timeout`
in the same round trip, so the wait is paid once per flush: the flush's sales are answered
only once that many replicas hold them, and 503 otherwise (docs/guarantees.md).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Mapping, Sequence
from typing import cast

import redis.asyncio as redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError

from api import metrics
from api.errors import ServiceUnavailable
from shared.queue import (
    ENQUEUE_SCRIPT,
    TILL_WINDOW,
    QueuedSale,
    QueueKeys,
    encoded_back_to_back,
    sale_decoder,
    sale_encoder,
    script_keys,
)

log = logging.getLogger(__name__)

# Keeps one script call well inside Lua's argument limits; a single batch request (up to
# 1,000 sales) always fits alone.
MAX_SALES_PER_FLUSH = 2_000
# After Redis answered "full", requests are refused without asking it for this long.
FULL_HOLD_SECONDS = 0.1


class QueueUnavailable(Exception):
    """Redis could not take the sales; nothing of the request was queued."""


class QueueFull(Exception):
    """The backlog is over its limit; the client should retry later."""


class TillSalesStored(Exception):
    """Sales numbered by their till at or below its highest stored, and no longer in its window
    (ENQUEUE_SCRIPT): stored already; nothing of the request was queued. `highest`: position ->
    the till's highest number."""

    def __init__(self, highest: dict[int, int]):
        super().__init__(f"{len(highest)} sales of a till are stored already")
        self.highest = highest


class TillNumbersTaken(TillSalesStored):
    """Sales whose till numbers the till's window holds for other sales (two tills sending with
    one key, an old copy of a spool put back): nothing of the request was queued."""


# A request waiting for the next flush: its sales, the marks of its numbered ones, its answer.
Waiting = tuple[list[QueuedSale], Mapping[int, str], asyncio.Future]


def sales_mark(item_id: int, quantity: int, till_time_us: int | None, unit_price: int | None) -> str:
    """What a till's numbered sale is, kept with it in the till's window: a retry of the number
    must be the same sale (the same item, quantity, till's time and price charged)."""
    return ".".join("" if part is None else str(part) for part in (item_id, quantity, till_time_us, unit_price))


class ReplicasBehind(Exception):
    """Redis took the sales, but too few replicas confirmed them in time. They may still be
    written (they are in the stream); a retry with the same idempotency key gets the same sale."""


class SaleQueue:
    def __init__(
        self,
        client: redis.Redis,
        keys: QueueKeys,
        *,
        max_depth: int,
        idempotency_ttl: int,
        max_in_flight: int = 2,
        replicas: int = 0,
        replica_wait_ms: int = 500,
    ):
        self._client = client
        self._script = client.register_script(ENQUEUE_SCRIPT)
        self._replicas = replicas
        self._replica_wait_ms = replica_wait_ms
        self._keys = keys
        self._max_depth = keys.max_depth_per_partition(max_depth)
        self._idempotency_ttl = idempotency_ttl
        self._waiting: collections.deque[Waiting] = collections.deque()
        self._max_in_flight = max_in_flight
        self._active = 0  # flushers running; counted inside them, not by done-callbacks (those run late)
        self._flushers: set[asyncio.Task] = set()
        self._full_until = [0.0] * keys.partitions  # per partition

    async def remembered(
        self, sales: list[tuple[int, str | None, int | None, int | None, str]]
    ) -> list[QueuedSale | None]:
        """For each (store_id, idempotency key, till_id, till seq, mark) of a sale that carries
        a key or a till's number, the sale accepted under it, or None (a till's number taken by
        another sale, with another mark, included)."""
        lookups: list[tuple[str, str | None]] = []  # (Redis key, a till's slot in its window)
        for store_id, key, till_id, seq, _ in sales:
            if till_id is not None and seq is not None:
                lookups.append((self._keys.till(store_id, till_id), str(seq % TILL_WINDOW)))
            else:
                lookups.append((self._keys.idempotency(store_id, key or ""), None))
        if not lookups:
            return []
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, slot in lookups:
                    pipe.get(key) if slot is None else pipe.hget(key, slot)
                values = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            raise ServiceUnavailable(f"the sales queue (Redis) is unavailable: {exc}; retry shortly") from exc
        found: list[QueuedSale | None] = []
        for (_, _, _, seq, mark), (_, slot), value in zip(sales, lookups, values):
            if value is not None and slot is not None:  # "<seq>:<mark>:<sale>" when the slot holds that number
                number, _, value = value.partition(b":")
                kept_mark, _, value = value.partition(b":")
                value = value if (number, kept_mark) == (str(seq).encode(), mark.encode()) else None
            found.append(None if value is None else sale_decoder.decode(value))
        return found

    async def till_highest(self, store_id: int, till_id: int) -> int | None:
        """The highest number of the till's sales taken while Redis remembers it (None: it does not)."""
        try:
            # redis-py types its commands for sync and async clients alike
            highest = await cast(Awaitable[bytes | None], self._client.hget(self._keys.till(store_id, till_id), "hw"))
        except (RedisError, OSError, TimeoutError) as exc:
            raise ServiceUnavailable(f"the sales queue (Redis) is unavailable: {exc}; retry shortly") from exc
        return None if highest is None else int(highest)

    def looks_full(self) -> bool:
        """Redis said "full" a moment ago for every partition. A request can then be refused
        before its body is decoded: under overload, decoding batches only to refuse them took a
        core's worth of CPU from the worker that drains the queue. While only some partitions
        are full (their worker fell behind), the others' stores are still answered."""
        return time.monotonic() < min(self._full_until)

    async def put(self, sales: list[QueuedSale], marks: Mapping[int, str] | None = None) -> list[QueuedSale]:
        """Queue the sales; answers each one as stored (an earlier sale for a reused key or till
        number). `marks`: position -> what a till's numbered sale is (sales_mark)."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((sales, marks or {}, future))
        if self._active < self._max_in_flight:
            self._active += 1
            flusher = asyncio.create_task(self._flush_while_waiting())
            self._flushers.add(flusher)
            flusher.add_done_callback(self._flushers.discard)
        return await future

    async def _flush_while_waiting(self) -> None:
        try:
            while self._waiting:
                group: list[Waiting] = []
                size = 0
                while self._waiting and (not group or size + len(self._waiting[0][0]) <= MAX_SALES_PER_FLUSH):
                    group.append(self._waiting.popleft())
                    size += len(group[-1][0])
                await self._flush(group, size)
        finally:
            # No await between the last look at _waiting and this: a put() arriving now
            # sees a free slot and starts a flusher, so no sale is left waiting unflushed.
            self._active -= 1

    async def _flush(self, group: list[Waiting], size: int) -> None:
        places: dict[int, int] = {}  # partition -> its place among the script's KEYS (1-based)
        orders: list[Sequence[int]] = []  # per request, its sales' positions in the order sent
        args: list = [self._max_depth, self._idempotency_ttl, len(group)]
        for sales, marks, _ in group:
            by_partition = _by_partition(sales, self._keys.partitions)
            args.append(len(by_partition))
            for partition, positions in by_partition.items():
                part = sales if len(by_partition) == 1 else [sales[position] for position in positions]
                keyed = [position for position in positions if is_remembered(sales[position])]
                args += (places.setdefault(partition, len(places) + 1), len(part), len(keyed))
                for position in keyed:
                    args += self._remembered_args(sales[position], marks.get(position, ""))
                unkeyed = [sale for sale in part if not is_remembered(sale)] if keyed else part
                args.append(encoded_back_to_back(unkeyed))
            if len(by_partition) == 1:
                orders.append(range(len(sales)))
            else:
                orders.append([position for positions in by_partition.values() for position in positions])
        keys = script_keys([self._keys.partition(partition) for partition in places])
        try:
            if self._replicas:
                answers, confirmed = await self._enqueue_and_wait(keys, args)
            else:
                answers, confirmed = await self._script(keys=keys, args=args), 0
        except (TimeoutError, RedisError, OSError) as exc:
            log.warning("queueing %d sales failed: %s", size, exc)
            self._fail(group, QueueUnavailable(str(exc) or type(exc).__name__))
            return
        if confirmed < self._replicas:
            log.warning(
                "%d sales not confirmed by %d replica(s) within %d ms (%d did)",
                size,
                self._replicas,
                self._replica_wait_ms,
                confirmed,
            )
            self._fail(group, ReplicasBehind(confirmed))
            return
        metrics.FLUSH_SIZE.observe(size)
        *answers, full_places = answers
        partitions = list(places)
        for place in full_places:
            self._full_until[partitions[int(place) - 1]] = time.monotonic() + FULL_HOLD_SECONDS
        for (sales, _, future), order, answer in zip(group, orders, answers):
            if future.done():  # the client went away
                continue
            if answer == 0:
                future.set_exception(QueueFull())
            elif answer and answer[0] in (b"!", b"?"):
                problem = TillSalesStored if answer[0] == b"!" else TillNumbersTaken
                future.set_exception(problem(_stale_positions(sales, order, answer[1:])))
            else:
                future.set_result(_as_stored(sales, order, answer))

    def _remembered_args(self, sale: QueuedSale, mark: str) -> tuple:
        """A remembered sale's quintuple of ENQUEUE_SCRIPT's arguments."""
        if sale.till_id is not None and sale.till_seq is not None:
            key = self._keys.till(sale.store_id, sale.till_id)
            return key, str(sale.till_seq), str(sale.till_seq % TILL_WINDOW), mark, sale_encoder.encode(sale)
        return self._keys.idempotency(sale.store_id, sale.idempotency_key or ""), "", "", "", sale_encoder.encode(sale)

    async def _enqueue_and_wait(self, keys: list[str], args: list) -> tuple[list, int]:
        return await script_then_wait(self._client, self._script, keys, args, self._replicas, self._replica_wait_ms)

    @staticmethod
    def _fail(group: list[Waiting], exc: Exception) -> None:
        for _, _, future in group:
            if not future.done():
                future.set_exception(exc)

    async def close(self) -> None:
        await asyncio.gather(*self._flushers, return_exceptions=True)


async def script_then_wait(
    client: redis.Redis, script: AsyncScript, keys: list[str], args: list, replicas: int, wait_ms: int
) -> tuple[list, int]:
    """An enqueue script (KEYS: streams and depth counters), then WAIT, on one connection in one
    round trip: (its answer, replicas that hold every write of this connection so far)."""
    for first_try in (True, False):
        async with client.pipeline(transaction=False) as pipe:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
            # WAIT covers only this connection's own writes. A flush that only found earlier
            # sales (retries) writes nothing itself: this no-op write moves the connection past
            # every write made so far, those earlier sales' included.
            pipe.incrby(keys[1], 0)
            pipe.wait(replicas, wait_ms)
            answers, _, confirmed = await pipe.execute(raise_on_error=False)
        if first_try and isinstance(answers, NoScriptError):  # a new primary (failover) has no scripts
            await client.script_load(script.script)
            continue
        break
    for reply in (answers, confirmed):
        if isinstance(reply, Exception):
            raise reply
    return answers, confirmed


def _by_partition(sales: list[QueuedSale], partitions: int) -> Mapping[int, Sequence[int]]:
    """The positions of a request's sales per queue partition (store_id mod partitions). A till's
    batch, one store, is one partition: that case costs one pass and no list per partition."""
    places = [sale.store_id % partitions for sale in sales]
    if places.count(places[0]) == len(places):
        return {places[0]: range(len(sales))}
    by_partition: dict[int, list[int]] = {}
    for position, partition in enumerate(places):
        by_partition.setdefault(partition, []).append(position)
    return by_partition


def is_remembered(sale: QueuedSale) -> bool:
    """Whether a retry of the sale is recognised: it carries an idempotency key or a till's number."""
    return sale.idempotency_key is not None or sale.till_seq is not None


def _as_stored(sales: list[QueuedSale], order: Sequence[int], keyed_answers: list[bytes]) -> list[QueuedSale]:
    """Each sale as stored: itself, or the sale stored earlier under its idempotency key or
    till number (the answers come in `order`: the sales' positions as sent, grouped by
    partition)."""
    if not keyed_answers:
        return sales
    earlier = iter(keyed_answers)
    stored = list(sales)
    for position in order:
        sale = sales[position]
        found = next(earlier) if is_remembered(sale) else None
        if found:
            stored[position] = sale_decoder.decode(found)
    return stored


def _stale_positions(sales: list[QueuedSale], order: Sequence[int], stale: list) -> dict[int, int]:
    """Position -> the till's highest number, of the request's sales that the script found
    already stored and out of their till's window ((index among the remembered, highest) pairs)."""
    remembered = [position for position in order if is_remembered(sales[position])]
    return {remembered[int(index) - 1]: int(highest) for index, highest in zip(stale[::2], stale[1::2])}


async def remembered(client: redis.Redis, keys: list[str]) -> list[bool]:
    """Whether each idempotency key is remembered (remembered_values)."""
    return [value is not None for value in await remembered_values(client, keys)]


async def remembered_values(client: redis.Redis, keys: list[str]) -> list[bytes | None]:
    """What was accepted under each idempotency key (its Redis key, as the queueing scripts set
    it), encoded, or None. A refusal of a sale or return is waived for such a retry, and it is
    answered what was accepted then: a till whose answer was lost, and that retries after the
    sale grew too old (or its month was archived, or its item was deleted), must not be told 422
    for a sale that counts."""
    if not keys:
        return []
    try:
        return await client.mget(keys)
    except (RedisError, OSError, TimeoutError) as exc:
        raise ServiceUnavailable(f"the sales queue (Redis) is unavailable: {exc}; retry shortly") from exc
