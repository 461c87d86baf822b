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


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("catalogue reload failed: %s", task.exception())


class Catalogue:
    def __init__(self, pool: asyncpg.Pool, database_url: str, *, refresh_interval: float = 30.0, miss_reload_interval: float = 0.5):
        self._pool = pool
        self._database_url = database_url
        self._refresh_interval = refresh_interval
        self._miss_reload_interval = miss_reload_interval
        self.item_prices: dict[int, int] = {}
        self.store_ids: frozenset[int] = frozenset()
        self._loaded_at = 0.0
        self._reload_started = 0.0
        self._reload_task: asyncio.Task | None = None
        self._listener: asyncpg.Connection | None = None
        self._refresher: asyncio.Task | None = None

    async def start(self) -> None:
        await self.reload()
        self._refresher = asyncio.create_task(self._refresh_forever())

    async def close(self) -> None:
        for task in (self._refresher, self._reload_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        await self._close_listener()

    async def _load(self) -> None:
        async with self._pool.acquire() as conn:
            items = await conn.fetch("SELECT id, price FROM item")
            stores = await conn.fetch("SELECT id FROM store")
        self.item_prices = {r["id"]: r["price"] for r in items}
        self.store_ids = frozenset(r["id"] for r in stores)
        self._loaded_at = time.monotonic()

    def _start_reload(self) -> asyncio.Task:
        if self._reload_task is None or self._reload_task.done():
            self._reload_started = time.monotonic()
            self._reload_task = asyncio.create_task(self._load())
            self._reload_task.add_done_callback(_log_failure)
        return self._reload_task

    async def reload(self) -> None:
        """Reload now; concurrent callers share one query."""
        await asyncio.shield(self._start_reload())

    async def reload_after_change(self) -> None:
        """Reload with a query that begins now, after a change the caller has committed."""
        await self._reload_started_after(time.monotonic())

    async def _reload_started_after(self, moment: float) -> None:
        """Wait for a reload that began after `moment`, starting at most one per interval."""
        while self._reload_started < moment:
            running = self._reload_task is not None and not self._reload_task.done()
            wait = self._miss_reload_interval - (time.monotonic() - self._reload_started)
            if running:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._reload_task)
            elif wait > 0:
                await asyncio.sleep(wait)
            else:
                self._start_reload()
        await asyncio.shield(self._reload_task)

    async def knows(self, item_ids: set[int], store_ids: set[int]) -> bool:
        """True when every id is known, after a fresh reload if some were not.

        Unknown ids are rare (a new item, or bad input); they wait for a reload that began
        after they arrived, and reloads happen at most every `miss_reload_interval` seconds.
        """
        if self._all_known(item_ids, store_ids):
            return True
        try:
            await self._reload_started_after(time.monotonic())
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError) as exc:
            log.warning("catalogue reload failed, using the cached copy: %s", exc)
        return self._all_known(item_ids, store_ids)

    def _all_known(self, item_ids: set[int], store_ids: set[int]) -> bool:
        return item_ids <= self.item_prices.keys() and store_ids <= self.store_ids

    def _on_notify(self, *_args) -> None:
        self._start_reload()  # the listener callback must not block

    async def _ensure_listener(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        # Its own connection, not a pooled one: it lives as long as the process.
        conn = await asyncpg.connect(self._database_url, timeout=5)
        try:
            await conn.add_listener("catalogue_changed", self._on_notify)
        except BaseException:
            await conn.close()
            raise
        self._listener = conn
        await self.reload()  # changes made while we were not listening

    async def _close_listener(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)
            conn.terminate()

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
