"""Report results kept in memory until PostgreSQL says the data under them changed.

Triggers on the rollups (every worker commit) and on item and store send a NOTIFY at commit;
this process LISTENs on its own connection and drops every cached result when one arrives.

A report is never older than the request asking for it: before answering from memory, a
request waits for a round trip on the listening connection that began after it arrived.
PostgreSQL delivers a session's pending notifications before it answers that session's next
query, so by then every commit that preceded the request has been heard of. Concurrent
requests share one round trip (as sales share a Redis write), which is what makes the cache
pay under load: 64 clients cost one tiny query per round trip, not 64 report queries.

While the listening connection is down, nothing is cached and every request queries.
Under steady ingestion every worker commit clears the cache, so report traffic then costs one
query per report and commit (in each process) rather than one per request.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Awaitable, Callable, Hashable

import asyncpg

from api.live_table import DB_ERRORS

log = logging.getLogger(__name__)

CHANNELS = ("reports_changed", "catalogue_changed")
LISTENING_QUERY = "SELECT count(*) FROM pg_listening_channels()"
SYNC_TIMEOUT_SECONDS = 2.0


def _rows(value: Any) -> int:
    """What a result counts against max_rows: its rows (a store's page: its days and items)."""
    if isinstance(value, list):
        return len(value)
    if isinstance(value, dict):
        return 1 + sum(len(v) for v in value.values() if isinstance(v, list))
    return 1


class ReportCache:
    def __init__(self, database_url: str, *, max_rows: int = 50_000, reconnect_interval: float = 1.0):
        self._database_url = database_url
        self._max_rows = max_rows  # bounds the memory: a result counts as its number of rows
        self._rows = 0
        self._reconnect_interval = reconnect_interval
        self._entries: dict[Hashable, Any] = {}
        self._computing: dict[Hashable, asyncio.Future] = {}
        self._generation = 0  # bumped by every change heard of; results of an older one are dropped
        self._conn: asyncpg.Connection | None = None
        self._next_sync: asyncio.Future | None = None  # the round trip that starts after the current one
        self._syncing = False
        self._keeper: asyncio.Task | None = None

    async def start(self) -> None:
        with contextlib.suppress(*DB_ERRORS):
            await self._listen()
        self._keeper = asyncio.create_task(self._keep_listening())

    async def close(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(BaseException):
                await self._keeper
        await self._drop_connection()

    async def get(self, key: Hashable, compute: Callable[[], Awaitable[Any]]) -> Any:
        """The cached result for `key`, or `compute()`'s (shared by concurrent callers)."""
        if not await self._caught_up():
            return await compute()
        generation = self._generation
        if key in self._entries:
            return self._entries[key]
        future = self._computing.get(key)
        if future is None:
            future = asyncio.ensure_future(self._compute(key, compute, generation))
            self._computing[key] = future
        return await asyncio.shield(future)

    async def _compute(self, key: Hashable, compute: Callable[[], Awaitable[Any]], generation: int) -> Any:
        try:
            value = await compute()
        finally:
            if self._computing.get(key) is not None and self._generation == generation:
                del self._computing[key]
        if self._generation == generation:  # nothing changed while it ran
            rows = _rows(value)
            while self._entries and self._rows + rows > self._max_rows:  # the oldest go first
                self._rows -= _rows(self._entries.pop(next(iter(self._entries))))
            if rows <= self._max_rows:
                self._entries[key] = value
                self._rows += rows
        return value

    def _invalidate(self, *_args) -> None:
        self._generation += 1
        self._entries.clear()
        self._rows = 0
        self._computing.clear()  # results in flight may predate the change: nobody new waits for them

    # -- being sure every change committed before a request has been heard of

    async def _caught_up(self) -> bool:
        if self._conn is None:
            return False
        future = self._next_sync
        if future is None:
            future = self._next_sync = asyncio.get_running_loop().create_future()
            if not self._syncing:
                self._start_sync()
        return await asyncio.shield(future)

    def _start_sync(self) -> None:
        future, self._next_sync = self._next_sync, None
        self._syncing = True
        asyncio.ensure_future(self._sync(future))

    async def _sync(self, future: asyncio.Future) -> None:
        ok, broken = False, None
        conn = self._conn
        try:
            if conn is not None:
                # Any query would do; this one also notices a session that stopped listening
                # (a transaction-mode pooler in between would make it lose its LISTENs).
                listening = await conn.fetchval(LISTENING_QUERY, timeout=SYNC_TIMEOUT_SECONDS)
                ok = conn is self._conn and listening == len(CHANNELS)
                if not ok and conn is self._conn:
                    broken = f"listening on {listening} of {len(CHANNELS)} channels"
        except DB_ERRORS as exc:
            broken = str(exc) or type(exc).__name__
        finally:
            self._syncing = False
            if not future.done():
                future.set_result(ok)  # the waiting requests query at once if not ok
            if self._next_sync is not None:
                self._start_sync()
        if broken is not None:
            log.warning("report cache stops caching until it listens again: %s", broken)
            await self._drop_connection()

    # -- the listening connection

    async def _listen(self) -> None:
        conn = await asyncpg.connect(self._database_url, timeout=5)
        try:
            for channel in CHANNELS:
                await conn.add_listener(channel, self._invalidate)
        except BaseException:
            await conn.close()
            raise
        conn.add_termination_listener(self._on_terminated)
        self._invalidate()  # changes made while nobody listened
        self._conn = conn

    def _on_terminated(self, conn) -> None:
        if conn is self._conn:  # not an older connection we let go of
            self._conn = None
            self._invalidate()

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        self._invalidate()
        if conn is not None:
            conn.remove_termination_listener(self._on_terminated)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)
            conn.terminate()

    async def _keep_listening(self) -> None:
        while True:
            await asyncio.sleep(self._reconnect_interval)
            if self._conn is None or self._conn.is_closed():
                self._conn = None
                try:
                    await self._listen()
                except DB_ERRORS as exc:
                    log.debug("report cache cannot listen yet: %s", exc)
