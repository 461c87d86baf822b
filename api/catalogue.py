"""In-memory copy of items (with prices) and stores, so a sale is checked without a query.

Kept current three ways: a LISTEN on `catalogue_changed` (fired by triggers on item and
store), a reload when a sale names an id we do not know (at most every `miss_reload_interval`
seconds, so bad input cannot hammer the database), and a periodic full reload as a safety net.
If PostgreSQL is down, the last copy keeps serving.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import asyncpg

log = logging.getLogger(__name__)


class Catalogue:
    def __init__(self, pool: asyncpg.Pool, *, refresh_interval: float = 30.0, miss_reload_interval: float = 0.5):
        self._pool = pool
        self._refresh_interval = refresh_interval
        self._miss_reload_interval = miss_reload_interval
        self.item_prices: dict[int, int] = {}
        self.store_ids: frozenset[int] = frozenset()
        self._loaded_at = 0.0
        self._reload_task: asyncio.Task | None = None
        self._listener: asyncpg.Connection | None = None
        self._refresher: asyncio.Task | None = None

    async def start(self) -> None:
        await self.reload()
        self._refresher = asyncio.create_task(self._refresh_forever())

    async def close(self) -> None:
        if self._refresher:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        await self._close_listener()

    async def _load(self) -> None:
        async with self._pool.acquire() as conn:
            items = await conn.fetch("SELECT id, price FROM item")
            stores = await conn.fetch("SELECT id FROM store")
        self.item_prices = {r["id"]: r["price"] for r in items}
        self.store_ids = frozenset(r["id"] for r in stores)
        self._loaded_at = time.monotonic()

    async def reload(self) -> None:
        """Reload now; concurrent callers share one query."""
        if self._reload_task is None or self._reload_task.done():
            self._reload_task = asyncio.create_task(self._load())
        await asyncio.shield(self._reload_task)

    async def knows(self, item_ids: set[int], store_ids: set[int]) -> bool:
        """True when every id is known, reloading once if some are not."""
        if self._all_known(item_ids, store_ids):
            return True
        if time.monotonic() - self._loaded_at >= self._miss_reload_interval or (
            self._reload_task and not self._reload_task.done()
        ):
            try:
                await self.reload()
            except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as exc:
                log.warning("catalogue reload failed, using the cached copy: %s", exc)
        return self._all_known(item_ids, store_ids)

    def _all_known(self, item_ids: set[int], store_ids: set[int]) -> bool:
        return item_ids <= self.item_prices.keys() and store_ids <= self.store_ids

    def _on_notify(self, *_args) -> None:
        # A new task so the listener callback never blocks; reload() coalesces bursts.
        asyncio.get_running_loop().create_task(self._reload_quietly())

    async def _reload_quietly(self) -> None:
        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncio.TimeoutError):
            await self.reload()

    async def _ensure_listener(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        conn = await self._pool.acquire()
        try:
            await conn.add_listener("catalogue_changed", self._on_notify)
        except BaseException:
            await self._pool.release(conn)
            raise
        self._listener = conn
        await self.reload()  # changes made while we were not listening

    async def _close_listener(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.remove_listener("catalogue_changed", self._on_notify)
            with contextlib.suppress(Exception):
                await self._pool.release(conn)

    async def _refresh_forever(self) -> None:
        while True:
            try:
                await self._ensure_listener()
                if time.monotonic() - self._loaded_at >= self._refresh_interval:
                    await self.reload()
            except (OSError, asyncpg.PostgresError, asyncio.TimeoutError, asyncpg.InterfaceError) as exc:
                log.warning("catalogue refresh failed: %s", exc)
                await self._close_listener()
            await asyncio.sleep(min(self._refresh_interval, 2.0))
