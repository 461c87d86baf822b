"""Accepting returns: find the sale, check what is left of it, queue the return.

The rule for a return whose sale is not stored yet (still queued, or PostgreSQL away): the API
looks the sale up in PostgreSQL for up to `wait_seconds` (the queue normally drains within
milliseconds). If it is still not there, the answer is 409 with Retry-After while sales queued
before the request are still in the queue (it may be one of them), and once they have all
left it, 404 (no sale will ever have that id) or 422 with why, if the sale went to dead_letter.
A sale is never refused for being late, and a return never waits in a queue for a sale that
may not come.

What is left of a sale is checked twice: here, atomically with the queueing, against a
per-sale counter in Redis that every accepted return adds to (queued ones included; it
starts from the database's figure), so two returns sent together cannot both take the last
unit; and by the worker, in the transaction that writes the return (worker.return_writer),
against `sale_returned`, which nothing gets past.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Annotated, cast

import asyncpg
import msgspec
import redis.asyncio as redis
from redis.exceptions import RedisError

from api import metrics
from api.catalogue import Catalogue
from api.errors import ServiceUnavailable
from api.ids import IdAllocator, IdsUnavailable
from api.moments import iso_utc, to_us
from api.sale_queue import remembered, script_then_wait
from api.sale_times import SaleTimeLimits
from api.sales import QUEUE_FULL, REPLICAS_BEHIND
from api.validation import ReturnIn
from shared.queue import RETURNS_SCRIPT, QueuedReturn, QueueKeys, depth_and_oldest, entry_ms, script_keys

SALE = "SELECT id, item_id, store_id, price, quantity, sale_time FROM sales WHERE id = ANY($1::bigint[])"
RETURNED = "SELECT sale_id, returned FROM sale_returned WHERE sale_id = ANY($1::bigint[])"
# dead_letter.sale_id is a return's own id in a return's letter
DEAD_SALE = (
    "SELECT sale_id, reason FROM dead_letter WHERE sale_id = ANY($1::bigint[]) AND replayed_at IS NULL "
    "AND sale->>'kind' IS DISTINCT FROM 'return'"
)
POLL_SECONDS = 0.05

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(QueuedReturn)


class ReturnRefused(Exception):
    """Returns that cannot be accepted: index -> (status, message, extra fields)."""

    def __init__(self, errors: dict[int, tuple[int, str, dict]]):
        super().__init__("; ".join(message for _, message, _ in errors.values()))
        self.errors = errors

    @property
    def status(self) -> int:
        """409 if any is only early (retry), else the one status, else 422."""
        statuses = {status for status, _, _ in self.errors.values()}
        return 409 if 409 in statuses else statuses.pop() if len(statuses) == 1 else 422


@dataclasses.dataclass(frozen=True)
class DeadLettered:
    """A sale the worker could not store (it is in dead_letter), and why."""

    reason: str


class NotWrittenYet:
    """A sale not in PostgreSQL (yet) while sales are still queued: it may be one of them."""


NOT_WRITTEN_YET = NotWrittenYet()


@dataclasses.dataclass(frozen=True)
class StoredSale:
    id: int
    item_id: int
    store_id: int
    price: int
    quantity: int
    sale_time_us: int
    returned: int  # as the database has it


class ReturnAnswer(msgspec.Struct):
    """An accepted return (or the earlier one with the same key)."""

    id: int
    sale_id: int
    return_time: Annotated[str, msgspec.Meta(extra_json_schema={"format": "date-time"})]
    store_id: int
    item_id: int
    quantity: int
    refund: Annotated[int, msgspec.Meta(description="The price the sale was charged x quantity")]


def return_answer(queued: QueuedReturn) -> ReturnAnswer:
    return ReturnAnswer(
        queued.id,
        queued.sale_id,
        iso_utc(queued.return_time_us),
        queued.store_id,
        queued.item_id,
        queued.quantity,
        queued.price * queued.quantity,
    )


def _return_us(ret: ReturnIn, sale: StoredSale, accepted_us: int) -> int:
    """When the return happened: as given, else now, though never before its sale (whose
    sale_time may be a few seconds ahead of this clock: api.validation.FUTURE_SKEW)."""
    return to_us(ret.return_time) if ret.return_time else max(accepted_us, sale.sale_time_us)


class ReturnsIntake:
    def __init__(
        self,
        pool: asyncpg.Pool,
        client: redis.Redis,
        keys: QueueKeys,
        ids: IdAllocator,
        catalogue: Catalogue,
        *,
        max_depth: int,
        idempotency_ttl: int,
        replicas: int = 0,
        replica_wait_ms: int = 500,
        wait_seconds: float = 1.0,
        times: SaleTimeLimits,
    ):
        self._pool = pool
        self._redis = client
        self._script = client.register_script(RETURNS_SCRIPT)
        self._keys = keys
        self._ids = ids
        self._catalogue = catalogue
        self._max_depth = keys.max_depth_per_partition(max_depth)
        self._ttl = idempotency_ttl
        self._replicas = replicas
        self._replica_wait_ms = replica_wait_ms
        self._wait_seconds = wait_seconds
        self._times = times

    async def accept(
        self, returns: list[tuple[int, ReturnIn]], accepted_us: int, only_store: int | None = None
    ) -> list[QueuedReturn]:
        """Queue every (sale id, return) or none; raises ReturnRefused (or ServiceUnavailable).
        `only_store`: the one store the caller may record returns in (a POS key's)."""
        sales = await self._stored_sales(sorted({sale_id for sale_id, _ in returns}))
        stored = cast(dict[int, StoredSale], sales)  # read only for sales _check found stored
        await self._catalogue.knows(set(), {ret.store_id for _, ret in returns if ret.store_id is not None})
        errors: dict[int, tuple[int, str, dict]] = {}
        retries: dict[int, str] = {}  # index -> its idempotency key in Redis, of keyed returns dated too far back
        for index, (sale_id, ret) in enumerate(returns):
            problem = self._check(sale_id, ret, sales.get(sale_id), accepted_us)
            if problem is None and only_store is not None and (ret.store_id or stored[sale_id].store_id) != only_store:
                problem = (
                    403,
                    f"this key records returns in store {only_store} only, not in store "
                    f"{ret.store_id or stored[sale_id].store_id}",
                    {},
                )
            if problem is None:
                return_us = _return_us(ret, stored[sale_id], accepted_us)
                if too_old := self._times.too_old("return_time", return_us, accepted_us):
                    problem = (422, too_old, {})
                    if ret.idempotency_key:
                        store_id = ret.store_id or stored[sale_id].store_id
                        retries[index] = self._keys.return_idempotency(store_id, ret.idempotency_key)
            if problem is not None:
                errors[index] = problem
        for index, known in zip(retries, await remembered(self._redis, list(retries.values()))):
            if known:  # accepted before under this key: the queueing script answers that return
                del errors[index]
        if errors:
            raise ReturnRefused(errors)
        try:
            ids = await self._ids.take(len(returns))
        except IdsUnavailable as exc:
            raise ServiceUnavailable("the database is unavailable and no ids are left; retry shortly", 5) from exc
        queued = []
        for return_id, (sale_id, ret) in zip(ids, returns):
            sale = stored[sale_id]
            queued.append(
                QueuedReturn(
                    id=return_id,
                    sale_id=sale_id,
                    return_time_us=_return_us(ret, sale, accepted_us),
                    store_id=ret.store_id or sale.store_id,
                    item_id=sale.item_id,
                    price=sale.price,
                    quantity=ret.quantity,
                    sold=sale.quantity,
                    idempotency_key=ret.idempotency_key,
                    accepted_at_us=accepted_us,
                )
            )
        answered = await self._enqueue(queued, stored)
        metrics.RETURNS_ACCEPTED.inc(len(queued))
        return answered

    def _check(
        self, sale_id: int, ret: ReturnIn, sale: StoredSale | DeadLettered | NotWrittenYet | None, accepted_us: int
    ) -> tuple[int, str, dict] | None:
        if isinstance(sale, DeadLettered):
            return 422, f"sale {sale_id} was not stored: {sale.reason}", {}
        if sale is None:
            return 404, f"no such sale: {sale_id}", {}
        if isinstance(sale, NotWrittenYet):  # NOT_WRITTEN_YET
            return 409, f"sale {sale_id} is not written yet (it is still queued); retry shortly", {}
        if ret.store_id is not None and ret.store_id not in self._catalogue.store_ids:
            return 422, f"unknown store_id {ret.store_id}", {}
        return_us = _return_us(ret, sale, accepted_us)
        if return_us < sale.sale_time_us:
            return 422, f"return_time is before sale {sale_id} was made ({iso_utc(sale.sale_time_us)})", {}
        remaining = sale.quantity - sale.returned
        # a keyed return may be the retry of one stored already, which took its units: the
        # script answers that one, or checks what is left itself
        if ret.quantity > remaining and not ret.idempotency_key:
            return 422, self._too_many(sale_id, ret.quantity, remaining), {"remaining": remaining}
        return None

    @staticmethod
    def _too_many(sale_id: int, quantity: int, remaining: int) -> str:
        return f"sale {sale_id} has {remaining} unit(s) left to return, not {quantity}"

    async def _stored_sales(self, sale_ids: list[int]) -> dict[int, StoredSale | DeadLettered | NotWrittenYet]:
        """Each sale as stored; NOT_WRITTEN_YET for one not written while it may still be
        queued; DeadLettered for one in dead_letter; missing for one that does not exist."""
        deadline = time.monotonic() + self._wait_seconds
        arrived_ms = None
        while True:
            # the queue first: once every entry queued before this request arrived has left the
            # stream (acknowledged after its commit), every sale the till can name is written
            # or filed in dead_letter; under steady traffic that takes a poll or two
            now_ms, oldest_ms = await self._queue_clock_and_oldest()
            arrived_ms = arrived_ms or now_ms
            found = await self._read_sales(sale_ids)
            missing = [s for s in sale_ids if s not in found]
            if not missing:
                return found
            if oldest_ms is None or oldest_ms > arrived_ms:
                async with self._pool.acquire() as conn:
                    for row in await conn.fetch(DEAD_SALE, missing):
                        found[row["sale_id"]] = DeadLettered(row["reason"])
                return found
            if time.monotonic() >= deadline:
                return {**found, **dict.fromkeys(missing, NOT_WRITTEN_YET)}
            await asyncio.sleep(POLL_SECONDS)

    async def _queue_clock_and_oldest(self) -> tuple[int, int | None]:
        """Redis's clock and the moment the oldest entry of any partition was queued (ms; None
        if all are empty): entry ids are those moments, on the same clock."""
        try:
            (seconds, micros), _, oldest = await depth_and_oldest(self._redis, self._keys, with_time=True)
        except (TimeoutError, RedisError, OSError) as exc:
            raise ServiceUnavailable(f"the sales queue (Redis) is unavailable: {exc}; retry shortly") from exc
        return seconds * 1000 + micros // 1000, entry_ms(oldest) if oldest else None

    async def _read_sales(self, sale_ids: list[int]) -> dict[int, StoredSale | DeadLettered | NotWrittenYet]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(SALE, sale_ids)
            returned = {r["sale_id"]: r["returned"] for r in await conn.fetch(RETURNED, sale_ids)} if rows else {}
        return {
            r["id"]: StoredSale(
                r["id"],
                r["item_id"],
                r["store_id"],
                r["price"],
                r["quantity"],
                to_us(r["sale_time"]),
                returned.get(r["id"], 0),
            )
            for r in rows
        }

    async def _enqueue(self, queued: list[QueuedReturn], sales: dict[int, StoredSale]) -> list[QueuedReturn]:
        places: dict[int, int] = {}  # partition -> its place among the script's KEYS (1-based)
        args: list = [self._max_depth, self._ttl, len(queued)]
        for ret in queued:
            idem = self._keys.return_idempotency(ret.store_id, ret.idempotency_key) if ret.idempotency_key else ""
            args += (
                self._keys.returned(ret.sale_id),
                idem,
                ret.quantity,
                ret.sold,
                sales[ret.sale_id].returned,
                _encoder.encode(ret),
                places.setdefault(self._keys.partition_of(ret.store_id), len(places) + 1),
            )
        keys = script_keys([self._keys.partition(partition) for partition in places])
        try:
            answer, confirmed = await self._run_script(keys, args)
        except (TimeoutError, RedisError, OSError) as exc:
            raise ServiceUnavailable(f"the sales queue (Redis) is unavailable: {exc}; retry shortly") from exc
        if answer[0] == 0:
            raise ServiceUnavailable(QUEUE_FULL, 2)
        if answer[0] == 1:  # another return took what was left meanwhile
            refused = answer[1:]
            raise ReturnRefused(
                {
                    int(index) - 1: (
                        422,
                        self._too_many(queued[int(index) - 1].sale_id, queued[int(index) - 1].quantity, int(left)),
                        {"remaining": int(left)},
                    )
                    for index, left in zip(refused[::2], refused[1::2])
                }
            )
        if confirmed < self._replicas:
            raise ServiceUnavailable(REPLICAS_BEHIND)
        return [_decoder.decode(earlier) if earlier else ret for ret, earlier in zip(queued, answer[1:])]

    async def _run_script(self, keys: list[str], args: list) -> tuple[list, int]:
        """The script (and, with replicas, WAIT in the same round trip): (answer, replicas that confirmed)."""
        if not self._replicas:
            return await self._script(keys=keys, args=args), 0
        return await script_then_wait(self._redis, self._script, keys, args, self._replicas, self._replica_wait_ms)
