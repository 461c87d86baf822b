"""Draining the queue's partitions into PostgreSQL.

A long-lived task in the arq worker process: XREADGROUP a batch of entries from the partitions
this worker holds (worker.leases), write all their sales in one transaction (worker.writer),
then acknowledge and delete the entries. An entry is acknowledged only after its transaction
committed, so a crash at any point leaves it pending. A partition taken over from another
worker (stopped, or dead and its lease lapsed) has its pending entries claimed at once, and
the worker's own left pending (an acknowledgement lost) are claimed again once idle for
`reclaim_idle_ms`. Database trouble never drops a batch: it is retried with backoff, for as
long as it takes, and the leases are renewed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable

import asyncpg
import msgspec
import redis.asyncio as redis
from redis.exceptions import RedisError, ResponseError

from shared import chain_fold, worker_stats
from shared.queue import ACK_SCRIPT, GROUP, RELEASE_RETURNED_SCRIPT, Partition, QueueKeys, decode_sale_rows
from worker import return_writer, writer
from worker.gc_paused import gc_paused
from worker.leases import Leases

log = logging.getLogger(__name__)

_returns_decoder = msgspec.msgpack.Decoder(list[tuple[int, int, int, int, int, int, int, int, str | None, int]])
RECLAIM_EVERY_SECONDS = 2.0
# Sales per transaction at most: entries read together are written in chunks of up to this
# many. Under a backlog of 1,000-sale batches, 200 entries were 200,000-400,000 sales in one
# transaction and the worker peaked at 316 MB; past 100,000 a transaction costs no less per
# sale (python -m bench.writer).
MAX_SALES_PER_TRANSACTION = 100_000
MAX_BACKOFF_SECONDS = 5.0
TRANSIENT_REDIS = (RedisError, OSError, asyncio.TimeoutError)

Entry = tuple[Partition, bytes, dict]  # (its partition, entry id, fields)


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
        self._leases = Leases(client, keys, name, reclaim_idle_ms)
        self._drain_unpartitioned = False  # the stream of a release before partitions still holds sales
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
        """The consumer group on every partition's stream (made empty if missing)."""
        await self._ensure_groups(self._keys.all_partitions)

    async def _ensure_groups(self, partitions: list[Partition], make_stream: bool = True) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for partition in partitions:
                pipe.xgroup_create(partition.stream, GROUP, id="0", mkstream=make_stream)
            replies = await pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, Exception) and "BUSYGROUP" not in str(reply):
                raise reply

    async def run(self) -> None:
        backoff = 0.1
        try:
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
        finally:
            with contextlib.suppress(*TRANSIENT_REDIS):  # else the leases lapse in their own time
                await self._leases.leave()

    async def run_until_empty(self) -> int:
        """Process everything currently queued in the partitions no other worker holds, then
        give them back (tests, replays, burst mode)."""
        await self.ensure_group()
        await self._leases.take_all_free()
        await self._check_unpartitioned()
        try:
            while entries := await self._reclaim(self._streams(), min_idle_ms=0):
                await self._process(entries)
            while entries := await self._read_new(self._batch_entries, block=False):
                await self._process(entries)
            while entries := await self._reclaim(self._streams(), min_idle_ms=0):
                await self._process(entries)
            await self._folds.drain()
        finally:
            await self._leases.leave()
        return self.batches_written

    @property
    def partitions_held(self) -> set[int]:
        return set(self._leases.held)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _streams(self) -> list[Partition]:
        """The streams read now: the partitions held, and the one of a release before
        partitions while it holds sales (drained by the holder of partition 0)."""
        held = [self._keys.partition(index) for index in sorted(self._leases.held)]
        return [*held, self._keys.unpartitioned] if self._drain_unpartitioned else held

    async def _next_entries(self, block: bool = True) -> list[Entry]:
        if self._leases.due:
            taken = await self._leases.refresh()
            await self._check_unpartitioned()
            if taken:
                log.info("took over partitions %s (now holding %s)", sorted(taken), sorted(self._leases.held))
                # pending on the worker that held them before: it stopped, or its lease lapsed
                claimed = await self._reclaim([self._keys.partition(index) for index in sorted(taken)], 0)
                if claimed:
                    return claimed
        if time.monotonic() - self._last_reclaim >= RECLAIM_EVERY_SECONDS:
            self._last_reclaim = time.monotonic()
            reclaimed = await self._reclaim(self._streams(), self._reclaim_idle_ms)
            if reclaimed:
                log.info("claimed again %d entries left pending", len(reclaimed))
                return reclaimed
        if not self._streams():  # more workers than partitions: wait for a share
            await self._sleep(self._block_ms / 1000)
            return []
        return await self._read_new(self._batch_entries, block)

    async def _check_unpartitioned(self) -> None:
        unpartitioned = self._keys.unpartitioned
        self._drain_unpartitioned = 0 in self._leases.held and bool(await self._redis.xlen(unpartitioned.stream))
        if self._drain_unpartitioned:
            await self._ensure_groups([unpartitioned], make_stream=False)

    async def _top_up(self, count: int) -> list[Entry]:
        """Not a backlog: let the batch grow a little before paying for a transaction."""
        await self._sleep(self._linger_s)
        if self._stopping.is_set():
            return []
        try:
            return await self._read_new(count, block=False)
        except TRANSIENT_REDIS as exc:  # write what is in hand; the rest waits in the stream
            log.warning("could not top up the batch (%s)", exc)
            return []

    async def _read_new(self, count: int, block: bool) -> list[Entry]:
        """About `count` entries over the partitions held; under a backlog (a partition gave all it
        was asked for), more, up to a transaction's worth of sales: the partitions cut a batch
        request of many stores into an entry each, and a read of `count` entries then held a
        tenth of the sales it did before (bench.batch wrote 102,000 sales/s instead of 195,000)."""
        streams = self._streams()
        if not streams:
            return []
        by_key = {partition.stream.encode(): partition for partition in streams}
        per_stream = max(1, -(-count // len(streams)))  # COUNT is per stream
        read: list[Entry] = []
        sales = 0
        while True:
            response = await self._redis.xreadgroup(
                GROUP,
                self.name,
                {partition.stream: ">" for partition in streams},
                count=per_stream,
                block=self._block_ms if block and not read else None,
            )
            got = [(by_key[key], entry_id, fields) for key, entries in response or [] for entry_id, fields in entries]
            read += got
            sales += sum(map(_entry_sales, got))
            backlog = any(len(entries) == per_stream for _, entries in response or [])
            if not backlog or sales >= MAX_SALES_PER_TRANSACTION:
                return read
            # Ask for the rest at once (at the sales per entry seen so far), growing at most
            # eightfold a round: a few round trips instead of one per `count` entries.
            wanted = (MAX_SALES_PER_TRANSACTION - sales) * len(read) / max(sales, 1) / len(streams)
            per_stream = max(1, min(per_stream * 8, math.ceil(wanted)))

    async def _reclaim(self, partitions: list[Partition], min_idle_ms: int) -> list[Entry]:
        claimed: list[Entry] = []
        for partition in partitions:
            try:
                response = await self._redis.xautoclaim(
                    partition.stream,
                    GROUP,
                    self.name,
                    min_idle_time=min_idle_ms,
                    start_id="0-0",
                    count=self._batch_entries,
                )
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    await self._ensure_groups([partition], make_stream=partition.index is not None)
                    continue
                raise
            claimed += [(partition, entry_id, fields) for entry_id, fields in response[1] if fields]
            if len(claimed) >= self._batch_entries:
                break
        return claimed

    async def _process(self, entries: list[Entry]) -> None:
        for chunk in _chunks(entries, MAX_SALES_PER_TRANSACTION):
            await self._process_chunk(chunk)

    async def _process_chunk(self, entries: list[Entry]) -> None:
        rows: list[tuple] = []
        returns: list[tuple] = []  # an entry holds sales (field d) or returns (field r)
        acks: dict[Partition, list] = {}  # per partition: (entry id, sale count) pairs
        undecodable = []
        with gc_paused():
            for partition, entry_id, fields in entries:
                if not fields:  # deleted meanwhile (purged by /clear/)
                    acks.setdefault(partition, []).extend((entry_id, 0))
                    continue
                try:
                    if b"r" in fields:
                        returns.extend(_returns_decoder.decode(fields[b"r"]))
                    else:
                        rows.extend(decode_sale_rows(fields[b"d"]))
                except (msgspec.DecodeError, KeyError) as exc:
                    undecodable.append((entry_id, fields, exc))
                acks.setdefault(partition, []).extend((entry_id, int(fields.get(b"n", 0))))
        for entry_id, fields, error in undecodable:
            await self._park_undecodable(entry_id, fields, error)
        result = writer.BatchResult()
        if rows:
            result = await self._write_until_done(
                lambda conn: writer.write_batch(conn, rows, citus=self._citus), f"{len(rows)} sales", acks
            )
        if returns:  # their sales were stored before the API accepted them
            returned = await self._write_until_done(
                lambda conn: return_writer.write_returns(conn, returns), f"{len(returns)} returns", acks
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
        self,
        write: Callable[[asyncpg.Connection], Awaitable[writer.BatchResult]],
        what: str,
        in_hand: dict[Partition, list],
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
                await self._keep_claim(in_hand)

    async def _keep_claim(self, in_hand: dict[Partition, list]) -> None:
        """Keep the entries we are still working on, and their partitions: reset the entries'
        idle time and renew the leases (none given up while a batch is in hand)."""
        with contextlib.suppress(*TRANSIENT_REDIS):
            if self._leases.due:
                await self._leases.refresh(give_up=False)
            for partition, acks in in_hand.items():
                await self._redis.xclaim(
                    partition.stream, GROUP, self.name, min_idle_time=0, message_ids=acks[::2], justid=True
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

    async def _acknowledge(self, acks: dict[Partition, list]) -> None:
        backoff = 0.1
        while True:  # the rows are committed; an ack lost now only means a harmless redelivery
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for partition, pairs in acks.items():
                        await self._ack(keys=[partition.stream, partition.depth], args=[GROUP, *pairs], client=pipe)
                    await pipe.execute()
                return
            except TRANSIENT_REDIS as exc:
                if self._stopping.is_set():
                    entries = sum(len(pairs) // 2 for pairs in acks.values())
                    log.warning("could not acknowledge %d entries (%s); they will be redelivered", entries, exc)
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


def _chunks(entries: list[Entry], max_sales: int) -> list[list[Entry]]:
    """The entries in order, cut where the next entry would pass `max_sales` (by its `n` field);
    an entry bigger than that is a chunk of its own."""
    chunks: list[list[Entry]] = [[]]
    sales = 0
    for entry in entries:
        count = _entry_sales(entry)
        if chunks[-1] and sales + count > max_sales:
            chunks.append([])
            sales = 0
        chunks[-1].append(entry)
        sales += count
    return chunks if chunks[0] else []


def _entry_sales(entry: Entry) -> int:
    fields = entry[2]
    try:
        return int(fields.get(b"n", 0)) if fields else 0
    except ValueError:  # a malformed entry: parked as undecodable when processed
        return 0
