"""A small table kept in memory and reloaded when PostgreSQL says it changed.

Kept current two ways: a LISTEN on a channel (fired by triggers on the table), and a periodic
full reload as a safety net in case a notification is missed. If PostgreSQL is down, the last
copy keeps serving. Subclasses say what to load (`_load`) and on which `channel`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import asyncpg

from shared import db

log = logging.getLogger(__name__)

# How often an idle listening connection is asked for a round trip (and how long it may take).
LISTENER_CHECK_SECONDS = 5.0
DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, asyncio.TimeoutError)


class LiveTable:
    channel: str = ""

    def __init__(
        self, pool: asyncpg.Pool, database_url: str, *, refresh_interval: float = 30.0, min_reload_interval: float = 0.5
    ):
        self._pool = pool
        self._database_url = database_url
        self._refresh_interval = refresh_interval
        self._min_reload_interval = min_reload_interval
        self._loaded_at = 0.0
        self._reload_started = 0.0
        self._reload_task: asyncio.Task | None = None
        self._notified = False
        self._listener: asyncpg.Connection | None = None
        self._listener_checked_at = 0.0
        self._refresher: asyncio.Task | None = None

    async def _load(self) -> None:
        raise NotImplementedError

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

    async def _load_and_stamp(self) -> None:
        # A notification that arrives while we load may be about a change our queries did
        # not see: load again, or it would be lost until the periodic refresh.
        while True:
            self._notified = False
            await self._load()
            if not self._notified:
                break
        self._loaded_at = time.monotonic()

    def _start_reload(self) -> asyncio.Task:
        if self._reload_task is None or self._reload_task.done():
            self._reload_started = time.monotonic()
            self._reload_task = asyncio.create_task(self._load_and_stamp())
            self._reload_task.add_done_callback(self._log_failure)
        return self._reload_task

    def _log_failure(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.warning("reloading %s failed: %s", type(self).__name__, task.exception())

    async def reload(self) -> None:
        """Reload now; concurrent callers share one query."""
        await asyncio.shield(self._start_reload())

    async def reload_after_change(self, *, rate_limited: bool = True) -> None:
        """Wait for a reload that began after now (so it sees what was just committed).

        Reloads start at most every `min_reload_interval` seconds, so callers driven by bad
        input cannot hammer the database; a caller that just made the change itself (an admin's
        write, rare) need not wait for that (`rate_limited=False`).
        """
        moment = time.monotonic()
        while self._reload_started < moment:
            task = self._reload_task
            wait = self._min_reload_interval - (time.monotonic() - self._reload_started) if rate_limited else 0
            if task is not None and not task.done():
                with contextlib.suppress(Exception):
                    await asyncio.shield(task)
            elif wait > 0:
                await asyncio.sleep(wait)
            else:
                self._start_reload()
        task = self._reload_task
        assert task is not None  # _reload_started is set with it
        await asyncio.shield(task)

    def _on_notify(self, *_args) -> None:
        self._notified = True
        self._start_reload()  # the listener callback must not block

    async def _ensure_listener(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            if time.monotonic() - self._listener_checked_at >= LISTENER_CHECK_SECONDS:
                # A server gone silent (a machine gone dark, a promoted standby elsewhere)
                # closes nothing: only a round trip shows that no notification can come.
                await asyncio.wait_for(self._listener.fetchval("SELECT 1"), LISTENER_CHECK_SECONDS)
                self._listener_checked_at = time.monotonic()
            return
        # Its own connection, not a pooled one: it lives as long as the process.
        conn = await db.connect(self._database_url, timeout=5)  # each host of the URL its own timeout
        try:
            await conn.add_listener(self.channel, self._on_notify)
        except BaseException:
            await conn.close()
            raise
        self._listener = conn
        self._listener_checked_at = time.monotonic()
        self._listening_again()
        await self.reload()  # changes made while we were not listening

    def _listening_again(self) -> None:
        """Called when a new listening connection is up, before the reload that follows."""

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
            except Exception as exc:  # noqa: BLE001 - this loop must outlive any failure
                log.warning("%s refresh failed: %s", type(self).__name__, exc)
                await self._close_listener()
            await asyncio.sleep(min(self._refresh_interval, 1.0))
