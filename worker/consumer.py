"""Draining the Redis stream into PostgreSQL.

A long-lived task in the arq worker process: XREADGROUP a batch of entries, write all their
sales in one transaction (worker.writer), then acknowledge and delete the entries. An entry
is acknowledged only after its transaction committed, so a crash at any point leaves it
pending; entries pending on a consumer that stopped answering are taken over with
XAUTOCLAIM once idle for `reclaim_idle_ms`. Database trouble never drops a batch: it is
retried with backoff, for as long as it takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable

import asyncpg
import msgspec
import redis.asyncio as redis
from redis.exceptions import RedisError, ResponseError

from shared import chain_fold, worker_stats
from shared.queue import ACK_SCRIPT, GROUP, RELEASE_RETURNED_SCRIPT, QueueKeys
from worker import return_writer, writer
from worker.gc_paused import gc_paused

log = logging.getLogger(__name__)

_rows_decoder = msgspec.msgpack.Decoder(list[tuple[int, int, int, int, int, int, str | None, int]])
_returns_decoder = msgspec.msgpack.Decoder(list[tuple[int, int, int, int, int, int, int, int, str | None, int]])
RECLAIM_EVERY_SECONDS = 2.0
# Sales per transaction at most: entries read together are written in chunks of up to this
# many. Under a backlog of 1,000-sale batches, 200 entries were 200,000-400,000 sales in one
# transaction and the worker peaked at 316 MB; past 100,000 a transaction costs no less per
# sale (python -m bench.writer).
MAX_SALES_PER_TRANSACTION = 100_000
MAX_BACKOFF_SECONDS = 5.0
TRANSIENT_REDIS = (RedisError, OSError, asyncio.TimeoutError)


class StreamConsumer:
    def __init__(
        self,
        client: redis.Redis,
        pool: asyncpg.Pool,
        keys: QueueKeys,
        name: str,
        *,
        batch_entries: int = 200,
        reclaim_idle_ms: int = 15_000,
        block_ms: int = 1000,
        linger_ms: int = 0,
        fold_interval_ms: int = chain_fold.FOLD_INTERVAL_MS,
    ):
        self._redis = client
        self._pool = pool
        self._keys = keys
        self.name = name
        self._batch_entries = batch_entries
        self._reclaim_idle_ms = reclaim_idle_ms
        self._block_ms = block_ms
        self._linger_s = linger_ms / 1000
        self._ack = client.register_script(ACK_SCRIPT)
        self._release_returned = client.register_script(RELEASE_RETURNED_SCRIPT)
        self._stopping = asyncio.Event()
        self._last_reclaim = 0.0
        self.batches_written = 0
        self._citus: bool | None = None  # sales distributed by Citus (asked once)
        self._folds = chain_fold.Folds(pool, fold_interval_ms)

    def stop(self) -> None:
        """Finish the batch in hand, then return from run()."""
        self._stopping.set()

    async def ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(self._keys.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                await self.ensure_group()
                while not self._stopping.is_set():
                    entries = await self._next_entries()
                    if entries and self._linger_s and len(entries) < self._batch_entries:
                        entries += await self._top_up(self._batch_entries - len(entries))
                    if entries:
                        await self._process(entries)
                backoff = 0.1
            except TRANSIENT_REDIS as exc:
                log.warning("redis unavailable (%s); retrying in %.1f s", exc, backoff)
                await self._sleep(backoff)
                backoff = min(MAX_BACKOFF_SECONDS, backoff * 2)

    async def run_until_empty(self) -> int:
        """Process everything currently queued, then return (tests, replays, burst mode)."""
        await self.ensure_group()
        while entries := await self._next_entries(block=False):
            await self._process(entries)
        self._last_reclaim = 0.0
        while entries := await self._reclaim(min_idle_ms=0):
            await self._process(entries)
        await self._folds.drain()
        return self.batches_written

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _next_entries(self, block: bool = True) -> list:
        if time.monotonic() - self._last_reclaim >= RECLAIM_EVERY_SECONDS:
            self._last_reclaim = time.monotonic()
            reclaimed = await self._reclaim(self._reclaim_idle_ms)
            if reclaimed:
                log.info("took over %d entries left pending by a stopped consumer", len(reclaimed))
                return reclaimed
        return await self._read_new(self._batch_entries, block)

    async def _top_up(self, count: int) -> list:
        """Not a backlog: let the batch grow a little before paying for a transaction."""
        await self._sleep(self._linger_s)
        if self._stopping.is_set():
            return []
        try:
            return await self._read_new(count, block=False)
        except TRANSIENT_REDIS as exc:  # write what is in hand; the rest waits in the stream
            log.warning("could not top up the batch (%s)", exc)
            return []

    async def _read_new(self, count: int, block: bool) -> list:
        response = await self._redis.xreadgroup(
            GROUP, self.name, {self._keys.stream: ">"}, count=count, block=self._block_ms if block else None
        )
        return response[0][1] if response else []

    async def _reclaim(self, min_idle_ms: int) -> list:
        try:
            response = await self._redis.xautoclaim(
                self._keys.stream,
                GROUP,
                self.name,
                min_idle_time=min_idle_ms,
                start_id="0-0",
                count=self._batch_entries,
            )
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                await self.ensure_group()
                return []
            raise
        return [entry for entry in response[1] if entry[1]]

    async def _process(self, entries: list) -> None:
        for chunk in _chunks(entries, MAX_SALES_PER_TRANSACTION):
            await self._process_chunk(chunk)

    async def _process_chunk(self, entries: list) -> None:
        rows: list[tuple] = []
        returns: list[tuple] = []  # an entry holds sales (field d) or returns (field r)
        acks: list = []
        undecodable = []
        with gc_paused():
            for entry_id, fields in entries:
                if not fields:  # deleted meanwhile (purged by /clear/)
                    acks += (entry_id, 0)
                    continue
                try:
                    if b"r" in fields:
                        returns.extend(_returns_decoder.decode(fields[b"r"]))
                    else:
                        rows.extend(_rows_decoder.decode(fields[b"d"]))
                except (msgspec.DecodeError, KeyError) as exc:
                    undecodable.append((entry_id, fields, exc))
                acks += (entry_id, int(fields.get(b"n", 0)))
        for entry_id, fields, error in undecodable:
            await self._park_undecodable(entry_id, fields, error)
        result = writer.BatchResult()
        if rows:
            result = await self._write_until_done(
                lambda conn: writer.write_batch(conn, rows, citus=self._citus), f"{len(rows)} sales", acks[::2]
            )
        if returns:  # their sales were stored before the API accepted them
            returned = await self._write_until_done(
                lambda conn: return_writer.write_returns(conn, returns), f"{len(returns)} returns", acks[::2]
            )
            await self._release_reservations(returned.dead_rows)
            result = writer.BatchResult(
                result.written + returned.written, result.duplicates + returned.duplicates, result.dead + returned.dead
            )
        await self._acknowledge(acks)
        self.batches_written += 1
        await self._record(len(rows) + len(returns), result)
        await self._folds.after_commit()

    async def _write_until_done(
        self, write: Callable[[asyncpg.Connection], Awaitable[writer.BatchResult]], what: str, entry_ids: list
    ) -> writer.BatchResult:
        backoff = 0.1
        while True:
            try:
                async with self._pool.acquire() as conn:
                    if self._citus is None:
                        self._citus = await writer.is_citus(conn)
                    return await write(conn)
            except Exception as exc:  # noqa: BLE001 - whatever it is, the batch must not be dropped
                log.warning("writing %s failed (%s); retrying in %.1f s", what, exc, backoff)
                await self._bump_retries()
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(MAX_BACKOFF_SECONDS, backoff * 2)
                await self._keep_claim(entry_ids)

    async def _keep_claim(self, entry_ids: list) -> None:
        """Reset the idle time of entries we are still working on, so nobody takes them over."""
        with contextlib.suppress(*TRANSIENT_REDIS):
            await self._redis.xclaim(
                self._keys.stream, GROUP, self.name, min_idle_time=0, message_ids=entry_ids, justid=True
            )

    async def _release_reservations(self, dead_returns: list[tuple]) -> None:
        """Give back what returns filed in dead_letter had reserved of their sales in Redis, or
        later returns of those sales would be refused for units nobody took back. Only the write
        that filed a letter releases it, so a redelivered entry releases nothing twice; should
        this fail (Redis away), the reservation lapses with its key (IDEMPOTENCY_TTL_SECONDS)."""
        if not dead_returns:
            return
        try:
            await self._release_returned(
                keys=[self._keys.returned(row[1]) for row in dead_returns], args=[row[6] for row in dead_returns]
            )
        except TRANSIENT_REDIS as exc:
            log.warning("could not give back the reservations of %d dead returns (%s)", len(dead_returns), exc)

    async def _acknowledge(self, acks: list) -> None:
        backoff = 0.1
        while True:  # the rows are committed; an ack lost now only means a harmless redelivery
            try:
                await self._ack(keys=[self._keys.stream, self._keys.depth], args=[GROUP, *acks])
                return
            except TRANSIENT_REDIS as exc:
                if self._stopping.is_set():
                    log.warning("could not acknowledge %d entries (%s); they will be redelivered", len(acks) // 2, exc)
                    return
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF_SECONDS, backoff * 2)

    async def _park_undecodable(self, entry_id, fields, exc: Exception) -> None:
        log.error("entry %s cannot be decoded (%s); moved to dead_letter", entry_id, exc)
        raw = {k.decode(errors="replace"): v.hex() for k, v in fields.items()}
        async with self._pool.acquire() as conn:
            await conn.execute(
                writer.INSERT_DEAD_LETTER,
                None,
                {"stream_entry": str(entry_id), "fields_hex": raw},
                f"undecodable queue entry: {exc}",
            )

    async def _bump_retries(self) -> None:
        with contextlib.suppress(*TRANSIENT_REDIS):
            # redis-py types the asyncio client's HINCRBY as its sync one's too: Awaitable[int] | int
            await self._redis.hincrby(self._keys.worker_stats, "retries", 1)  # type: ignore[misc]

    async def _record(self, size: int, result: writer.BatchResult) -> None:
        fields = worker_stats.batch_fields(size, result.written, result.duplicates, result.dead)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for name, value in fields.items():
                    pipe.hincrby(self._keys.worker_stats, name, value)
                await pipe.execute()
        except TRANSIENT_REDIS as exc:
            log.warning("could not record worker stats: %s", exc)


def _chunks(entries: list, max_sales: int) -> list[list]:
    """The entries in order, cut where the next entry would pass `max_sales` (by its `n` field);
    an entry bigger than that is a chunk of its own."""
    chunks: list[list] = [[]]
    sales = 0
    for entry in entries:
        count = _entry_sales(entry)
        if chunks[-1] and sales + count > max_sales:
            chunks.append([])
            sales = 0
        chunks[-1].append(entry)
        sales += count
    return chunks if chunks[0] else []


def _entry_sales(entry) -> int:
    fields = entry[1]
    try:
        return int(fields.get(b"n", 0)) if fields else 0
    except ValueError:  # a malformed entry: parked as undecodable when processed
        return 0
