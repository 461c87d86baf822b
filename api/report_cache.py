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
pay under load: 64 clients cost one tiny query per round trip, not 64 report queries. A
request's lookups share one too (`ticket`: a store's page looks up the store, then the page).
A result nothing is known of (not kept, not being computed) is queried at once, with no round
trip first: a query begun after the request arrived sees every commit that preceded it. That is
one store's live report while tills sell: its store changed since anyone last asked.

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
from typing import Any, Protocol

import asyncpg

from api.live_table import DB_ERRORS
from api.moments import from_us
from shared import db, report_changes

log = logging.getLogger(__name__)

CHANNELS = (report_changes.CHANNEL, "catalogue_changed", report_changes.DELTAS_CHANNEL)
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
    """What a commit changed, in local days; `stores` None: any store. `timezone`: the zone the
    rollups are cut in, as the writer read it (None: not said). `deltas`: the transaction also
    says what it added to each store's day (api.stores_today)."""

    first: dt.date
    last: dt.date
    stores: frozenset[int] | None
    timezone: zoneinfo.ZoneInfo | None = None
    deltas: bool = False

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
        announced = zoneinfo.ZoneInfo(said["timezone"]) if said.get("timezone") else None
        first, last = (from_us(us).astimezone(announced or timezone) for us in (from_moment, to_moment))
        stores = None if said["stores"] is None else frozenset(int(s) for s in said["stores"])
        deltas = said.get("deltas") is True
    except (ValueError, TypeError, KeyError, OverflowError, zoneinfo.ZoneInfoNotFoundError):
        log.warning("report cache: unreadable change %r; dropping everything", payload[:200])
        return None
    if to_moment - from_moment > _DAY_US or first.utcoffset() != last.utcoffset():
        # The clocks may have gone back across a midnight in between: a moment after the first
        # can fall on the day before it, one before the last on the day after. A day more each side.
        return Change(first.date() - _ONE_DAY, last.date() + _ONE_DAY, stores, announced, deltas)
    return Change(first.date(), last.date(), stores, announced, deltas)


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


# A writer's delta (shared.report_changes.DELTAS): what it added to a store's item in an hour.
# day, hour, store_id, item_id, income, units, sales, discounts
Delta = tuple[dt.date, int, int, int, int, int, int, int]


class ChangeObserver(Protocol):
    def on_change(self, change: Change | None) -> None: ...

    def on_deltas(self, xid: int, deltas: list[Delta]) -> None:
        """All of one committed transaction's deltas (its chunks put together)."""


@dataclasses.dataclass(eq=False)
class _Chunks:
    expected: int
    heard: int = 0
    deltas: list[Delta] = dataclasses.field(default_factory=list)


def _parse_deltas(payload: str) -> tuple[int, int, list[Delta]]:
    """(transaction id, its number of chunks, this chunk's deltas); ValueError if unreadable. A
    row of no sale adds nothing (a store's day it would start would list a day without sales)."""
    try:
        said = json.loads(payload)
        deltas = [
            (
                dt.date.fromisoformat(day),
                int(hour),
                int(store),
                int(item),
                int(income),
                int(units),
                int(sales),
                int(discounts),
            )
            for day, hour, store, item, income, units, sales, discounts in said["rows"]
            if sales
        ]
        return int(said["xid"]), int(said["chunks"]), deltas
    except (TypeError, KeyError) as exc:
        raise ValueError(str(exc)) from exc


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
        self._syncs_started = 0  # round trips begun (`ticket`)
        self._synced_through = 0  # the number of the last one done while listening
        self._sync_task: asyncio.Task | None = None  # held: the event loop keeps only weak references to tasks
        self._keeper: asyncio.Task | None = None
        self._observers: list[ChangeObserver] = []
        self._chunks: dict[int, _Chunks] = {}  # by transaction id: its deltas heard so far

    def observe(self, observer: ChangeObserver) -> None:
        """Tell `observer` every change heard (None: anything may have changed, or nothing is
        heard any more) and every writer's deltas (api.stores_today)."""
        self._observers.append(observer)

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

    def ticket(self) -> int:
        """Taken as a request starts and given to each of its lookups (`since`): a round trip
        begun after it, once done, stands for all of them (one round trip per request)."""
        return self._syncs_started

    async def get(
        self,
        key: Hashable,
        compute: Callable[[], Awaitable[Any]],
        scope: Scope = EVERYTHING,
        *,
        since: int | None = None,
    ) -> Any:
        """The cached result for `key`, or `compute()`'s (shared by concurrent callers).
        `scope`: what it is computed from (a change outside it keeps it)."""
        if self._conn is not None and self._unknown(key):
            return await asyncio.shield(self._pending(key, compute, scope))
        if not await self.caught_up(since):
            return await compute()
        return await self._lookup(key, compute, scope)

    async def get_all(self, parts: Sequence[Part], *, since: int | None = None) -> list[Any]:
        """Each part's result, as `get` gives it (every commit that preceded the request is in
        it): the parts nothing is known of are queried at once, the others after one round trip."""
        if self._conn is None:
            return list(await asyncio.gather(*(part.compute() for part in parts)))
        waiting = {i: self._pending(p.key, p.compute, p.scope) for i, p in enumerate(parts) if self._unknown(p.key)}
        found: dict[int, Any] = {}
        if len(waiting) < len(parts):
            caught_up = await self.caught_up(since)
            for i, part in enumerate(parts):
                if i in waiting:
                    continue
                if not caught_up:
                    waiting[i] = asyncio.ensure_future(part.compute())
                elif (entry := self._entries.get(part.key)) is not None:
                    found[i] = entry[0]
                else:
                    waiting[i] = self._pending(part.key, part.compute, part.scope)
        if len(waiting) == 1:  # no gather for one
            ((i, future),) = waiting.items()
            found[i] = await asyncio.shield(future)
        elif waiting:
            found.update(zip(waiting, await asyncio.gather(*map(asyncio.shield, waiting.values())), strict=True))
        return [found[i] for i in range(len(parts))]

    def _unknown(self, key: Hashable) -> bool:
        """Nothing kept or being computed for `key`: a query begun now sees every commit that
        preceded the request, with no round trip first (a store's live report, asked once)."""
        return key not in self._entries and key not in self._computing

    async def _lookup(self, key: Hashable, compute: Callable[[], Awaitable[Any]], scope: Scope) -> Any:
        entry = self._entries.get(key)
        if entry is not None:
            return entry[0]
        return await asyncio.shield(self._pending(key, compute, scope))

    def _pending(self, key: Hashable, compute: Callable[[], Awaitable[Any]], scope: Scope) -> asyncio.Future:
        """The computation of `key` under way, started if none is."""
        computation = self._computing.get(key)
        if computation is None:
            computation = self._computing[key] = _Computation(scope)
            self._running.add(computation)
            computation.future = asyncio.ensure_future(self._compute(key, compute, computation))
        assert computation.future is not None
        return computation.future

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
        if channel == report_changes.DELTAS_CHANNEL:
            self._on_deltas(payload)
            return
        change = parse_change(payload, self._timezone) if channel == report_changes.CHANNEL else None
        if change is None:
            self._invalidate()
            return
        if change.timezone is not None:
            self._timezone = change.timezone
        for observer in self._observers:
            observer.on_change(change)
        for key in [k for k, (_, scope) in self._entries.items() if change.touches(scope)]:
            self._bytes -= _size(self._entries.pop(key)[0])
        for computation in self._running:
            if change.touches(computation.scope):
                computation.stale = True
        for key in [k for k, c in self._computing.items() if c.stale]:
            del self._computing[key]  # nobody new waits for a result that may predate the change

    def _on_deltas(self, payload: str) -> None:
        """A chunk of a writer's deltas: the observers get the transaction's once all came (a
        transaction's NOTIFYs are delivered together, before any later round trip's answer: a
        report never shows part of one)."""
        try:
            xid, expected, deltas = _parse_deltas(payload)
        except ValueError as exc:
            log.warning("report cache: unreadable deltas (%s); dropping everything", exc)
            self._invalidate()
            return
        chunks = self._chunks.setdefault(xid, _Chunks(expected))
        chunks.heard += 1
        chunks.deltas += deltas
        if chunks.heard < chunks.expected:
            return
        del self._chunks[xid]
        for observer in self._observers:
            observer.on_deltas(xid, chunks.deltas)

    def _invalidate(self) -> None:
        """Everything may have changed."""
        self._chunks.clear()  # what a new listening connection hears is whole
        for observer in self._observers:
            observer.on_change(None)
        self._entries.clear()
        self._bytes = 0
        for computation in self._running:
            computation.stale = True
        self._computing.clear()

    # -- being sure every change committed before a request has been heard of

    async def caught_up(self, since: int | None = None) -> bool:
        if self._conn is None:
            return False
        if since is not None and self._synced_through > since:
            return True  # a round trip begun after the request's ticket is done
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
        self._syncs_started += 1
        self._sync_task = asyncio.ensure_future(self._sync(future, self._syncs_started))

    async def _sync(self, future: asyncio.Future, number: int) -> None:
        ok, broken = False, None
        conn = self._conn
        try:
            if conn is not None:
                # Any query would do; this one also notices a session that stopped listening
                # (a transaction-mode pooler in between would make it lose its LISTENs).
                row = await conn.fetchrow(LISTENING_QUERY, timeout=SYNC_TIMEOUT_SECONDS)
                listening = row["listening"] if row else 0
                ok = conn is self._conn and listening == len(CHANNELS)
                if ok and row:
                    self._learn_timezone(row["timezone"])
                if not ok and conn is self._conn:
                    broken = f"listening on {listening} of {len(CHANNELS)} channels"
        except DB_ERRORS as exc:
            broken = str(exc) or type(exc).__name__
        finally:
            self._syncing = False
            if ok:
                self._synced_through = number
            if not future.done():
                future.set_result(ok)  # the waiting requests query at once if not ok
            if self._next_sync is not None:
                self._start_sync(self._next_sync)
        if broken is not None:
            log.warning("report cache stops caching until it listens again: %s", broken)
            await self._drop_connection()

    # -- the listening connection

    async def _listen(self) -> None:
        conn = await db.connect(self._database_url, timeout=5)  # each host of the URL its own timeout
        try:
            for channel in CHANNELS:
                await conn.add_listener(channel, self._on_notification)
            # the zone the rollups are cut in, before any change is cut in days (a result nothing
            # is known of is computed with no round trip first: none may come before a change)
            self._learn_timezone(await conn.fetchval("SELECT timezone FROM report_settings"))
        except BaseException:
            await conn.close()
            raise
        conn.add_termination_listener(self._on_terminated)
        self._invalidate()  # changes made while nobody listened
        self._conn = conn

    def _learn_timezone(self, name: str | None) -> None:
        if name and name != self._timezone.key:
            self._timezone = zoneinfo.ZoneInfo(name)

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
