"""Final sale ids, reserved from PostgreSQL's `sales_id_seq` in blocks (shared.sale_ids).

The API answers POST /sales/ with the id the sale will have in PostgreSQL, without a query
per sale. Blocks are sized to cover two minutes of the recent rate, and the next one is
fetched in the background as soon as fewer than a block's worth are left, so sales keep
flowing through a database outage of that long. The recent rate is this process's: with a
few keep-alive connections it can jump when the kernel's spread of connections over the
processes shifts, so a block shrinks by at most half per 5-second window. (A minute's worth,
fetched again at half a block, ran out during a 30-second outage under load in some runs.)
A process starts with at least 10,000 ids whatever its own rate: when the connections
shift, a process that had seen no traffic may take all of it at once, and with 1,000 it ran
out 7 s into an outage at 150 sales/s. Ids cost nothing; a gap of a few thousand at a
restart is harmless. While PostgreSQL is away, fetching is retried at most once a second.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time

import asyncpg

from shared.sale_ids import BLOCK, reserve_blocks

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0


class IdsUnavailable(Exception):
    """No ids left and PostgreSQL cannot give more right now."""


class IdAllocator:
    def __init__(
        self, pool: asyncpg.Pool, *, min_block: int = 10_000, max_block: int = 100_000, cover_seconds: float = 120.0
    ):
        self._pool = pool
        self._min_block = min_block
        self._max_block = max_block
        self._cover_seconds = cover_seconds
        self._ids: collections.deque[int] = collections.deque()
        self._block = min_block
        self._refill: asyncio.Task | None = None
        self._window_start = time.monotonic()
        self._used_in_window = 0
        self._last_failure: tuple[float, BaseException] | None = None

    def prefetch(self) -> None:
        """Reserve the first block now, in the background: a process that has served nothing yet
        must still hold ids if PostgreSQL goes away before its first sale (CI caught one
        answering 503 through a PostgreSQL outage while its twin, which had had traffic, did not)."""
        self._start_refill()

    async def take(self, count: int) -> list[int]:
        while len(self._ids) < count:
            await self._refill_now(count)
        ids = [self._ids.popleft() for _ in range(count)]
        self._note_use(count)
        if len(self._ids) < self._block and not self._failed_just_now():
            self._start_refill()
        return ids

    def _note_use(self, count: int) -> None:
        self._used_in_window += count
        elapsed = time.monotonic() - self._window_start
        if elapsed >= 5.0:
            rate = self._used_in_window / elapsed
            wanted = max(self._min_block, rate * self._cover_seconds, self._block / 2)
            self._block = int(min(self._max_block, wanted))
            self._window_start, self._used_in_window = time.monotonic(), 0

    def _failed_just_now(self) -> bool:
        return self._last_failure is not None and time.monotonic() - self._last_failure[0] < RETRY_SECONDS

    def _start_refill(self, at_least: int = 0) -> asyncio.Task:
        if self._refill is None or self._refill.done():
            self._refill = asyncio.create_task(self._fetch(max(self._block, at_least)))
            self._refill.add_done_callback(self._note_failure)
        return self._refill

    def _note_failure(self, task: asyncio.Task) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._last_failure = (time.monotonic(), exc)
            log.warning("reserving sale ids failed: %s", exc)

    async def _refill_now(self, at_least: int) -> None:
        failure = self._last_failure
        if failure is not None and self._failed_just_now():  # out of ids, and PostgreSQL just refused: no new try yet
            raise IdsUnavailable(f"cannot reserve sale ids: {failure[1]}")
        try:
            await asyncio.shield(self._start_refill(at_least))
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise IdsUnavailable(f"cannot reserve sale ids: {exc}") from exc

    async def _fetch(self, count: int) -> None:
        async with self._pool.acquire() as conn:
            starts = await reserve_blocks(conn, -(-count // BLOCK))
        for start in starts:
            self._ids.extend(range(start, start + BLOCK))

    async def close(self) -> None:
        if self._refill and not self._refill.done():
            self._refill.cancel()
            with contextlib.suppress(BaseException):
                await self._refill
