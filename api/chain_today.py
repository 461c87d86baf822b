"""The chain's today, kept in memory in each API process and kept up to date by the writers.

While tills sell, every commit adds to today, so a chain-wide report over a period that ends
today (this month's totals, hours and top stores, a year's top items to today, the trend's
month) was computed again after every commit, several times a second, in every API process,
and the requests that came meanwhile waited for it. Here each API process keeps the chain's
today: every store's day (income, units and the rest), every item's units and the day's hours,
read once with its snapshot, plus what each writer's transaction says it added
(shared.report_changes: DELTAS) if that snapshot did not see the transaction. Such a report is
then its closed days (kept in the report cache across commits) plus this day, summed in the API.

The rule is api.stores_today's, for the whole chain as one: deltas heard while the day is read
are held and sorted out by its snapshot when the read returns; a change that comes without
deltas and touches today (returns, a large batch, a rebuild; every change on Citus, whose
writers send none) drops the day, and the next ask reads it again. What a request gets is never
older than the request: it waits for the report cache's round trip first, or read the day
itself after it arrived.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Any

import asyncpg

from api import metrics, period_parts, reports
from api.period_parts import KeyedSums
from api.report_cache import Change, Delta
from api.stores_today import DISCOUNTS_AT, MEASURES, Snapshot

# One statement, one snapshot: every store's day, every item's units and the chain's hours of
# the day ($1 = $2 = the day). The items and hours as the chain-wide reports read them (with the
# chain's deltas not folded yet); arrays, not records, for Citus.
READ_CHAIN_DAY = f"""
SELECT pg_current_snapshot()::text AS snapshot,
       (SELECT array_agg(ARRAY[store_id, income, units, sales, returns, refunds, discounts]) FROM daily_totals
        WHERE day = $1) AS stores,
       (SELECT array_agg(ARRAY[key, units]) FROM ({reports.ITEMS_OF_PERIOD}) i) AS items,
       (SELECT array_agg(ARRAY[hour, income, units, sales])
        FROM (SELECT hour, sum(income)::bigint AS income, sum(units)::bigint AS units, sum(sales)::bigint AS sales
              FROM ({reports.CHAIN_HOURS_ROWS}) AS h WHERE day >= $1 AND day <= $2 GROUP BY hour) AS hours) AS hours
"""

HOUR_MEASURES = ("income", "units", "sales")
# The tops kept up to date as deltas come (a kind, a count and a period's closed part each):
# those asked for last.
MAX_TOPS = 32


@dataclasses.dataclass(eq=False)
class ChainDay:
    """The chain's day as reports read it, up to date with every transaction heard. Its answers
    (`totals`, `hour_cells`, `top`) are computed once per change of the day."""

    snapshot: Snapshot
    day: dt.date
    stores: dict[int, list[int]]  # store: MEASURES
    items: dict[int, list[int]]  # item: [units, units] (ranked by, units: as KeyedSums)
    hours: dict[int, list[int]]  # hour: HOUR_MEASURES
    _answers: dict[Hashable, Any] = dataclasses.field(default_factory=dict)
    _tops: collections.OrderedDict[tuple, period_parts.LiveTop] = dataclasses.field(
        default_factory=collections.OrderedDict
    )

    def add(self, deltas: list[Delta]) -> None:
        grown_stores, grown_items = set(), set()
        for _day, hour, store_id, item_id, income, units, sales, discounts in deltas:
            grown_stores.add(store_id)
            grown_items.add(item_id)
            store = self.stores.get(store_id)
            if store is None:
                store = self.stores[store_id] = [0] * len(MEASURES)
            store[0] += income
            store[1] += units
            store[2] += sales
            store[DISCOUNTS_AT] += discounts
            item = self.items.get(item_id)
            if item is None:
                self.items[item_id] = [units, units]
            else:
                item[0] += units
                item[1] += units
            cell = self.hours.get(hour)
            if cell is None:
                self.hours[hour] = [income, units, sales]
            else:
                cell[0] += income
                cell[1] += units
                cell[2] += sales
        self._answers.clear()
        for (kind, *_), live in self._tops.items():
            if kind == "stores":
                for store_id in grown_stores:
                    store = self.stores[store_id]
                    live.grown(store_id, (store[0], store[1]))
            else:
                for item_id in grown_items:
                    live.grown(item_id, self.items[item_id])

    def assembled(self, key: Hashable, parts: Sequence[Any], assemble: Callable[[], Any]) -> Any:
        """`assemble()`, a report of this day and `parts` (the rest of its period, from the report
        cache), kept until either changes: a hit then costs no assembling."""
        kept = self._answers.get(("assembled", key))
        if kept is not None and len(kept[0]) == len(parts) and all(a is b for a, b in zip(kept[0], parts, strict=True)):
            return kept[1]
        answer = assemble()
        self._answers[("assembled", key)] = (tuple(parts), answer)
        return answer

    def totals(self) -> dict[str, int]:
        """The chain's measures of the day (as reports.chain_totals gives them)."""

        def summed():
            return {m: sum(store[i] for store in self.stores.values()) for i, m in enumerate(MEASURES)}

        return self.assembled("totals", (), summed)

    def hour_cells(self) -> dict[tuple[int, int], dict[str, int]]:
        """The day's cells as reports.hour_cells gives them: (weekday, hour) with sales."""
        weekday = self.day.isoweekday()

        def cells():
            return {(weekday, hour): dict(zip(HOUR_MEASURES, cell, strict=True)) for hour, cell in self.hours.items()}

        return self.assembled("hours", (), cells)

    def top(self, kind: str, closed: KeyedSums, cnt: int) -> list[tuple[int, int]]:
        """The top `cnt` stores by income (`kind` "stores") or items by units ("items") over the
        closed days plus this one, kept up to date as deltas come (period_parts.LiveTop)."""
        key = (kind, cnt, id(closed))  # held by the LiveTop: the id is not reused meanwhile
        live = self._tops.get(key)
        if live is None:
            live = self._tops[key] = period_parts.LiveTop(closed, self._sums(kind), cnt)
            while len(self._tops) > MAX_TOPS:
                self._tops.popitem(last=False)
        else:
            self._tops.move_to_end(key)
        return self.assembled(("top", key), [closed], live.top)

    def _sums(self, kind: str) -> Mapping[int, Sequence[int]]:
        """(ranked by, units) per store or item."""
        if kind == "stores":
            return {store_id: (m[0], m[1]) for store_id, m in self.stores.items()}
        return self.items


@dataclasses.dataclass(eq=False)
class _Read:
    task: asyncio.Task
    held: list[tuple[int, list[Delta]]] = dataclasses.field(default_factory=list)  # (xid, deltas) heard meanwhile
    dropped: bool = False  # a change without deltas came: what it read is not kept


class ChainToday:
    def __init__(self, pool: asyncpg.Pool):
        self._pool = pool
        self._day: dt.date | None = None
        self._kept: ChainDay | None = None
        self._read: _Read | None = None

    async def get(self, day: dt.date, caught_up: Callable[[], Awaitable[bool]]) -> ChainDay | None:
        """The chain's `day` (today) with every commit before the request in it; None when that
        cannot be vouched for (the report cache is not listening, or the request began before
        midnight): the caller queries. `caught_up`: the report cache's round trip for this request."""
        if self._day is None or day > self._day:  # a new day starts from the tables
            self._drop()
            self._day = day
        elif day < self._day:
            return None
        for _ in range(3):  # dropped twice while we waited: the caller queries
            if self._kept is None and self._read is None:  # read after the request arrived
                return await asyncio.shield(self._start_read(day).task)
            if self._read is not None:
                await asyncio.shield(self._read.task)
            if not await caught_up():
                return None
            if self._kept is not None and self._kept.day == day:
                return self._kept
        return None

    def _start_read(self, day: dt.date) -> _Read:
        metrics.CHAIN_DAYS.labels("read").inc()
        read = self._read = _Read(asyncio.ensure_future(self._read_day(day)))

        def done(_task: asyncio.Task) -> None:
            if self._read is read:
                self._read = None

        read.task.add_done_callback(done)
        return read

    async def _read_day(self, day: dt.date) -> ChainDay:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(READ_CHAIN_DAY, day, day)
        assert row is not None
        kept = ChainDay(
            Snapshot.parse(row["snapshot"]),
            day,
            {r[0]: list(r[1:]) for r in row["stores"] or []},
            {r[0]: [r[1], r[1]] for r in row["items"] or []},
            {r[0]: list(r[1:]) for r in row["hours"] or []},
        )
        read = self._read
        assert read is not None  # until this task is done
        for xid, deltas in read.held:
            if not kept.snapshot.sees(xid):
                kept.add(deltas)
        if not read.dropped and day == self._day:
            self._kept = kept
        return kept

    # -- what the report cache hears

    def on_change(self, change: Change | None) -> None:
        """A writer's change (None: anything may have changed). One that says its deltas follow
        leaves the day to them; any other that touches today drops it."""
        if change is not None and (change.deltas or self._day is None or not change.first <= self._day <= change.last):
            return
        self._drop()

    def on_deltas(self, xid: int, deltas: list[Delta]) -> None:
        """A writer's transaction's deltas (shared.report_changes.DELTAS)."""
        today = [delta for delta in deltas if delta[0] == self._day]
        if not today:
            return
        if self._kept is not None:
            if not self._kept.snapshot.sees(xid):
                self._kept.add(today)
        elif self._read is not None:
            self._read.held.append((xid, today))

    def _drop(self) -> None:
        if self._kept is not None:
            metrics.CHAIN_DAYS.labels("dropped").inc()
        self._kept = None
        if self._read is not None:
            self._read.dropped = True
