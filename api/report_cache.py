"""Report results kept in memory until PostgreSQL says the data under them changed.

The worker says at commit what its batch changed (shared.report_changes: the moments and stores
of its sales and returns); each API process LISTENs on its own connection and drops only the
results whose scope (`Scope`: local days, one store or all) that change touches. Last month's
top stores, yesterday's totals, and a quiet store's page stay in memory while tills sell;
today's answers are computed again after each commit that adds to today. Any other change
(triggers on the rollups, item and store; rebuilds, seeding) drops everything.

A report is never older than the request asking for it: before answering from memory, a
request waits for a round trip on the listening connection that began after it arrived.
PostgreSQL delivers a session's pending notifications before it answers that session's next
query, so by then every commit that preceded the request has been heard of. Concurrent
requests share one round trip (as sales share a Redis write), which is what makes the cache
pay under load: 64 clients cost one tiny query per round trip, not 64 report queries.

While the listening connection is down, nothing is cached and every request queries.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import zoneinfo
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any

import asyncpg

from api.live_table import DB_ERRORS
from api.moments import from_us
from shared import report_changes

log = logging.getLogger(__name__)

CHANNELS = (report_changes.CHANNEL, "catalogue_changed")
# The round trip before answering from memory: the channels listened on, and the zone the rollups
# are cut in now (announced moments are cut into its days: REPORT_TIMEZONE may be another one, if
# the rollups were rebuilt in another zone since this process started).
LISTENING_QUERY = (
    "SELECT count(*) AS listening, (SELECT timezone FROM report_settings) AS timezone FROM pg_listening_channels()"
)
SYNC_TIMEOUT_SECONDS = 2.0


@dataclasses.dataclass(frozen=True)
class Scope:
    """What a result is computed from: the sales and returns of local days first..last (both
    included), of one store or of every store (None). A change outside it leaves it as it is."""

    first: dt.date = dt.date.min
    last: dt.date = dt.date.max
    store_id: int | None = None


EVERYTHING = Scope()
CATALOGUE_ONLY = Scope(dt.date.max, dt.date.min)  # no day: only a change of items or stores drops it


@dataclasses.dataclass(frozen=True)
class Change:
    """What a commit changed, in local days; `stores` None: any store."""

    first: dt.date
    last: dt.date
    stores: frozenset[int] | None

    def touches(self, scope: Scope) -> bool:
        return (
            scope.first <= self.last
            and self.first <= scope.last
            and (scope.store_id is None or self.stores is None or scope.store_id in self.stores)
        )


_DAY_US = 86_400 * 1_000_000
_ONE_DAY = dt.timedelta(days=1)


def parse_change(payload: str, timezone: zoneinfo.ZoneInfo) -> Change | None:
    """The change a `reports_changed` payload announces; None for "anything may have changed"
    (an empty payload, or one this process cannot read)."""
    if not payload:
        return None
    try:
        said = json.loads(payload)
        from_moment, to_moment = (int(said[k]) for k in ("from_us", "to_us"))
        first, last = (from_us(us).astimezone(timezone) for us in (from_moment, to_moment))
        stores = None if said["stores"] is None else frozenset(int(s) for s in said["stores"])
    except (ValueError, TypeError, KeyError, OverflowError):
        log.warning("report cache: unreadable change %r; dropping everything", payload[:200])
        return None
    if to_moment - from_moment > _DAY_US or first.utcoffset() != last.utcoffset():
        # The clocks may have gone back across a midnight in between: a moment after the first
        # can fall on the day before it, one before the last on the day after. A day more each side.
        return Change(first.date() - _ONE_DAY, last.date() + _ONE_DAY, stores)
    return Change(first.date(), last.date(), stores)


# What the memory is bounded by: bytes, estimated. A result row (a dict of a few keys) is some
# 300; a part of a period kept in arrays says its own (`nbytes`).
ROW_BYTES = 300
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


def _size(value: Any) -> int:
    """What a result counts against the bound, in bytes (a store's page: its days and items)."""
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    if isinstance(value, list):
        return ROW_BYTES * len(value)
    if isinstance(value, dict):
        return ROW_BYTES * (1 + sum(len(v) for v in value.values() if isinstance(v, list | dict)))
    return ROW_BYTES


@dataclasses.dataclass(frozen=True)
class Part:
    """One result a report is made of: `compute()`'s, kept under `key` until a change touches `scope`."""

    key: Hashable
    compute: Callable[[], Awaitable[Any]]
    scope: Scope = EVERYTHING


@dataclasses.dataclass(eq=False)
class _Computation:
    scope: Scope
    future: asyncio.Future | None = None
    stale: bool = False  # a change it may not have seen came in while it ran: its result is not kept


class ReportCache:
    def __init__(
        self,
        database_url: str,
        timezone: zoneinfo.ZoneInfo,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        reconnect_interval: float = 1.0,
    ):
        self._database_url = database_url
        self._timezone = timezone  # the report zone: announced moments are cut into its days
        self._max_bytes = max_bytes  # bounds the memory (estimated: `_size`)
        self._bytes = 0
        self._reconnect_interval = reconnect_interval
        self._entries: dict[Hashable, tuple[Any, Scope]] = {}
        self._computing: dict[Hashable, _Computation] = {}  # what a new request for the key may wait for
        self._running: set[_Computation] = set()
        self._conn: asyncpg.Connection | None = None
        self._next_sync: asyncio.Future | None = None  # the round trip that starts after the current one
        self._syncing = False
        self._sync_task: asyncio.Task | None = None  # held: the event loop keeps only weak references to tasks
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

    async def get(self, key: Hashable, compute: Callable[[], Awaitable[Any]], scope: Scope = EVERYTHING) -> Any:
        """The cached result for `key`, or `compute()`'s (shared by concurrent callers).
        `scope`: what it is computed from (a change outside it keeps it)."""
        if not await self._caught_up():
            return await compute()
        return await self._lookup(key, compute, scope)

    async def get_all(self, parts: Sequence[Part]) -> list[Any]:
        """Each part's result, as `get` gives it (every commit that preceded the request is in
        it), after one round trip for all of them."""
        if not await self._caught_up():
            return list(await asyncio.gather(*(part.compute() for part in parts)))
        found = [self._entries.get(part.key) for part in parts]
        missing = [i for i, entry in enumerate(found) if entry is None]
        if len(missing) == 1:  # a task each only when there is more than one to wait for
            part = parts[missing[0]]
            return [entry[0] if entry else await self._lookup(part.key, part.compute, part.scope) for entry in found]
        computed = dict(
            zip(
                missing,
                await asyncio.gather(*(self._lookup(parts[i].key, parts[i].compute, parts[i].scope) for i in missing)),
                strict=True,
            )
        )
        return [entry[0] if entry else computed[i] for i, entry in enumerate(found)]

    async def get_now(self, key: Hashable, compute: Callable[[], Awaitable[Any]], scope: Scope = EVERYTHING) -> Any:
        """As `get`, without a round trip of its own: only right after a `get` or `get_all` of
        the same request, whose round trip stands for it (the names of the top items a store's
        parts ranked, say)."""
        if self._conn is None:
            return await compute()
        return await self._lookup(key, compute, scope)

    async def _lookup(self, key: Hashable, compute: Callable[[], Awaitable[Any]], scope: Scope) -> Any:
        if key in self._entries:
            return self._entries[key][0]
        computation = self._computing.get(key)
        if computation is None:
            computation = self._computing[key] = _Computation(scope)
            self._running.add(computation)
            computation.future = asyncio.ensure_future(self._compute(key, compute, computation))
        assert computation.future is not None
        return await asyncio.shield(computation.future)

    async def _compute(self, key: Hashable, compute: Callable[[], Awaitable[Any]], computation: _Computation) -> Any:
        try:
            value = await compute()
        finally:
            self._running.discard(computation)
            if self._computing.get(key) is computation:
                del self._computing[key]
        if not computation.stale:  # nothing it may have missed changed while it ran
            size = _size(value)
            while self._entries and self._bytes + size > self._max_bytes:  # the oldest go first
                self._bytes -= _size(self._entries.pop(next(iter(self._entries)))[0])
            if size <= self._max_bytes:
                self._entries[key] = (value, computation.scope)
                self._bytes += size
        return value

    def _on_notification(self, _conn, _pid, channel: str, payload: str) -> None:
        change = parse_change(payload, self._timezone) if channel == report_changes.CHANNEL else None
        if change is None:
            self._invalidate()
            return
        for key in [k for k, (_, scope) in self._entries.items() if change.touches(scope)]:
            self._bytes -= _size(self._entries.pop(key)[0])
        for computation in self._running:
            if change.touches(computation.scope):
                computation.stale = True
        for key in [k for k, c in self._computing.items() if c.stale]:
            del self._computing[key]  # nobody new waits for a result that may predate the change

    def _invalidate(self) -> None:
        """Everything may have changed."""
        self._entries.clear()
        self._bytes = 0
        for computation in self._running:
            computation.stale = True
        self._computing.clear()

    # -- being sure every change committed before a request has been heard of

    async def _caught_up(self) -> bool:
        if self._conn is None:
            return False
        future = self._next_sync
        if future is None:
            future = self._next_sync = asyncio.get_running_loop().create_future()
            if not self._syncing:
                self._start_sync(future)
        return await asyncio.shield(future)

    def _start_sync(self, future: asyncio.Future) -> None:
        """Start the round trip that resolves `future` (the current `_next_sync`)."""
        self._next_sync = None
        self._syncing = True
        self._sync_task = asyncio.ensure_future(self._sync(future))

    async def _sync(self, future: asyncio.Future) -> None:
        ok, broken = False, None
        conn = self._conn
        try:
            if conn is not None:
                # Any query would do; this one also notices a session that stopped listening
                # (a transaction-mode pooler in between would make it lose its LISTENs).
                row = await conn.fetchrow(LISTENING_QUERY, timeout=SYNC_TIMEOUT_SECONDS)
                listening = row["listening"] if row else 0
                ok = conn is self._conn and listening == len(CHANNELS)
                if ok and row and row["timezone"] != self._timezone.key:
                    self._timezone = zoneinfo.ZoneInfo(row["timezone"])
                if not ok and conn is self._conn:
                    broken = f"listening on {listening} of {len(CHANNELS)} channels"
        except DB_ERRORS as exc:
            broken = str(exc) or type(exc).__name__
        finally:
            self._syncing = False
            if not future.done():
                future.set_result(ok)  # the waiting requests query at once if not ok
            if self._next_sync is not None:
                self._start_sync(self._next_sync)
        if broken is not None:
            log.warning("report cache stops caching until it listens again: %s", broken)
            await self._drop_connection()

    # -- the listening connection

    async def _listen(self) -> None:
        conn = await asyncpg.connect(self._database_url, timeout=5)
        try:
            for channel in CHANNELS:
                await conn.add_listener(channel, self._on_notification)
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
