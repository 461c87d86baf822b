"""Today's rows of the stores asked about, kept in memory and kept up to date by the writers.

While tills sell, every store changes several times a second, so a report of one store that
reaches today (its month so far, its page) could never be answered from the report cache:
each ask was a query. Here each API process keeps, for the stores asked about lately, today's
day row and units per item, and adds to them what each writer's transaction says it added
(shared.report_changes: DELTAS, with the transaction's id). A store's report is then its
closed days (kept in the report cache across commits) plus these rows, with no query.

A store's rows are read in one statement together with its snapshot (`pg_current_snapshot`).
A transaction's deltas are added to a store only if that snapshot did not see the transaction:
a commit is counted once whether its NOTIFY comes before, during or after the read (deltas that
arrive while the read runs are held and sorted out when it returns). A change that comes
without deltas (returns, a large batch, a rebuild) drops the stores it names, which are read
again when next asked. What a request reads is never older than the request: it waits for the
report cache's round trip first, by which every commit before it has been heard of (or it read
the store itself, after it arrived).

On Citus the writers send no deltas (a coordinator's snapshot says nothing of the shards on
the workers), so every change drops the stores it names: each ask after a commit reads them.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
from collections.abc import Awaitable, Callable

import asyncpg

from api import metrics
from api.period_parts import Ranked
from api.report_cache import Change, Delta

# The stores kept (those asked about last): a store's day is a row and its items of the day
# (at most a few thousand), some tens of KB at most.
MAX_STORES = 2000

MEASURES = ("income", "units", "sales", "returns", "refunds", "discounts")
DISCOUNTS_AT = MEASURES.index("discounts")

# One statement, one snapshot: the store's day, its items of the day as (item, units) pairs, and
# the snapshot they were read in. Arrays, not records: Citus cannot take an anonymous record back
# from its workers.
READ_STORE_DAY = """
SELECT pg_current_snapshot()::text AS snapshot,
       (SELECT ARRAY[income, units, sales, returns, refunds, discounts] FROM daily_totals
        WHERE store_id = $1 AND day = $2) AS day,
       (SELECT array_agg(ARRAY[item_id, units]) FROM store_item_daily WHERE store_id = $1 AND day = $2) AS items
"""


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What a PostgreSQL snapshot (`xmin:xmax:xip,...`) sees of committed transactions."""

    xmin: int
    xmax: int
    in_progress: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        xmin, xmax, xip = text.split(":")
        return cls(int(xmin), int(xmax), frozenset(int(x) for x in xip.split(",") if x))

    def sees(self, xid: int) -> bool:
        """Whether a transaction that has committed is in this snapshot."""
        return xid < self.xmin or (xid < self.xmax and xid not in self.in_progress)


@dataclasses.dataclass(frozen=True)
class StoreDay:
    """One store's day as a report reads it: its measures (None: no sale nor return yet) and
    units per item."""

    day: dt.date
    measures: dict[str, int] | None
    items: Ranked

    def days(self) -> list[dict]:
        """As reports.store_days gives them."""
        return [] if self.measures is None else [{"day": self.day.isoformat(), **self.measures}]


# What a delta adds to an item of a store's day.
ItemDelta = tuple[int, int, int, int, int]  # item_id, income, units, sales, discounts


@dataclasses.dataclass(eq=False)
class _Store:
    snapshot: Snapshot
    day: dt.date
    measures: list[int] | None
    units: dict[int, int]
    _answer: StoreDay | None = None

    def add(self, deltas: list[ItemDelta]) -> None:
        if self.measures is None:
            self.measures = [0] * len(MEASURES)
        for item_id, income, units, sales, discounts in deltas:
            self.measures[0] += income
            self.measures[1] += units
            self.measures[2] += sales
            self.measures[DISCOUNTS_AT] += discounts
            self.units[item_id] = self.units.get(item_id, 0) + units
        self._answer = None

    def answer(self) -> StoreDay:
        if self._answer is None:
            measures = None if self.measures is None else dict(zip(MEASURES, self.measures, strict=True))
            self._answer = StoreDay(self.day, measures, Ranked.of(self.units.items()))
        return self._answer


@dataclasses.dataclass(eq=False)
class _Read:
    task: asyncio.Task
    held: list[tuple[int, list[ItemDelta]]] = dataclasses.field(default_factory=list)  # (xid, deltas) heard meanwhile
    dropped: bool = False  # a change without deltas came: its rows are not kept


class StoresToday:
    def __init__(self, pool: asyncpg.Pool, *, max_stores: int = MAX_STORES):
        self._pool = pool
        self._max_stores = max_stores
        self._day: dt.date | None = None
        self._stores: collections.OrderedDict[int, _Store] = collections.OrderedDict()  # oldest asked first
        self._reads: dict[int, _Read] = {}

    async def get(self, store_id: int, day: dt.date, caught_up: Callable[[], Awaitable[bool]]) -> StoreDay | None:
        """The store's `day` (today) with every commit before the request in it; None when that
        cannot be vouched for (the report cache is not listening): the caller queries.
        `caught_up`: the report cache's round trip for this request."""
        if self._day is None or day > self._day:  # a new day starts from the table
            self._drop_all()
            self._day = day
        elif day < self._day:  # a request that began before midnight: it queries
            return None
        for _ in range(3):  # a store dropped twice while we waited: the caller queries
            if store_id in self._stores or store_id in self._reads:
                if store_id in self._reads:
                    await asyncio.shield(self._reads[store_id].task)
                if not await caught_up():
                    return None
                store = self._stores.get(store_id)
                if store is not None and store.day == day:
                    self._stores.move_to_end(store_id)
                    return store.answer()
            else:  # read after the request arrived: it holds every commit before it
                return (await asyncio.shield(self._read(store_id, day).task)).answer()
        return None

    def _read(self, store_id: int, day: dt.date) -> _Read:
        metrics.STORE_DAYS.labels("read").inc()
        read = self._reads[store_id] = _Read(asyncio.ensure_future(self._read_store(store_id, day)))
        read.task.add_done_callback(lambda _task: self._reads.pop(store_id))
        return read

    async def _read_store(self, store_id: int, day: dt.date) -> _Store:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(READ_STORE_DAY, store_id, day)
        assert row is not None
        measures = None if row["day"] is None else list(row["day"])
        store = _Store(Snapshot.parse(row["snapshot"]), day, measures, dict(row["items"] or []))
        read = self._reads[store_id]  # until this task is done
        for xid, deltas in read.held:
            if not store.snapshot.sees(xid):
                store.add(deltas)
        if not read.dropped and day == self._day:
            self._stores[store_id] = store
            while len(self._stores) > self._max_stores:
                self._stores.popitem(last=False)
        return store

    # -- what the report cache hears

    def on_change(self, change: Change | None) -> None:
        """A writer's change (None: anything may have changed). One that says its deltas follow
        leaves the stores to them."""
        if change is None:
            self._drop_all()
            return
        if change.deltas or self._day is None or not change.first <= self._day <= change.last:
            return
        stores = self._stores.keys() | self._reads.keys() if change.stores is None else change.stores
        for store_id in stores:
            if self._stores.pop(store_id, None) is not None:
                metrics.STORE_DAYS.labels("dropped").inc()
            if (read := self._reads.get(store_id)) is not None:
                read.dropped = True

    def on_deltas(self, xid: int, deltas: list[Delta]) -> None:
        """A writer's transaction's deltas (shared.report_changes.DELTAS)."""
        by_store: dict[int, list[ItemDelta]] = {}
        for day, _hour, store_id, item_id, income, units, sales, discounts in deltas:
            if day == self._day:
                by_store.setdefault(store_id, []).append((item_id, income, units, sales, discounts))
        for store_id, added in by_store.items():
            if (store := self._stores.get(store_id)) is not None:
                if not store.snapshot.sees(xid):
                    store.add(added)
            elif (read := self._reads.get(store_id)) is not None:
                read.held.append((xid, added))

    def _drop_all(self) -> None:
        self._stores.clear()
        for read in self._reads.values():
            read.dropped = True
