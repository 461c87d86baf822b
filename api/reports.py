"""Report queries. They read only the rollups, so their cost does not grow with sales."""

from __future__ import annotations

import calendar
import dataclasses
import datetime as dt
import zoneinfo
from collections.abc import Mapping, Sequence

import asyncpg

from api.period_parts import KeyedSums, Ranked, add, add_by_key
from api.report_cache import ROW_BYTES
from shared.catalogue import price_in_effect
from shared.rollups import DELTAS, RUNNING_TABLE

# Each item's list price in effect at $1 (the API's now, the moment its cache key counts the
# price changes in effect at): its latest change up to then, else item.price (migration 013).
ITEMS = f"SELECT i.id, i.name, {price_in_effect('$1')} AS price FROM item i ORDER BY i.id"
STORES = "SELECT id, address FROM store ORDER BY id"

# The top rows are picked from the rollup alone (a top-N sort over at most one row per item, or
# per store of the month), then joined: joining first made every report join all 10,000 items.
# The chain-wide rollups add their deltas not folded yet (migration 012) in the same statement,
# so the answer is the same before and after a fold; by a full join to their sums per item: at
# 10,000 items and 2,000 deltas 3.2 ms, where a UNION ALL and one GROUP BY took 5.6 and a
# LEFT JOIN plus the new items 5.0 (2.1 ms with no delta; 1.3 before the deltas).
TOP_ITEMS = f"""
SELECT i.id, i.name, t.units AS sales_amount
FROM (SELECT coalesce(a.item_id, d.item_id) AS item_id, coalesce(a.units, 0) + coalesce(d.units, 0) AS units
      FROM item_totals a
      FULL JOIN (SELECT item_id, sum(units)::bigint AS units FROM {DELTAS.table} GROUP BY item_id) d
           ON d.item_id = a.item_id
      WHERE coalesce(a.units, 0) + coalesce(d.units, 0) > 0
      ORDER BY 2 DESC, 1 LIMIT $1) t
JOIN item i ON i.id = t.item_id
ORDER BY t.units DESC, t.item_id
"""

TOP_STORES = """
SELECT s.id, s.address, m.income
FROM (SELECT store_id, income FROM store_monthly WHERE month = $1 AND units > 0
      ORDER BY income DESC, store_id LIMIT $2) m
JOIN store s ON s.id = m.store_id
ORDER BY m.income DESC, m.store_id
"""


def report_month(mm: int | None, year: int | None, tz: zoneinfo.ZoneInfo, now: dt.datetime | None = None) -> dt.date:
    """The first day of the month a report asks for.

    Without `year`, month `mm` is the most recent one with that number that has begun:
    in November 2026, mm=9 is September 2026 and mm=12 is December 2025.
    """
    today = (now or dt.datetime.now(dt.UTC)).astimezone(tz).date()
    month = mm or today.month
    if year is None:
        year = today.year if month <= today.month else today.year - 1
    return dt.date(year, month, 1)


async def list_items(conn: asyncpg.Connection, moment: dt.datetime) -> list[dict]:
    return [dict(r) for r in await conn.fetch(ITEMS, moment)]


async def get_store(conn: asyncpg.Connection, store_id: int) -> dict | None:
    row = await conn.fetchrow("SELECT id, address FROM store WHERE id = $1", store_id)
    return dict(row) if row else None


async def list_stores(conn: asyncpg.Connection) -> list[dict]:
    return [dict(r) for r in await conn.fetch(STORES)]


async def top_items(conn: asyncpg.Connection, cnt: int) -> list[dict]:
    return [dict(r) for r in await conn.fetch(TOP_ITEMS, cnt)]


async def top_stores(conn: asyncpg.Connection, month: dt.date, cnt: int) -> list[dict]:
    return [dict(r) for r in await conn.fetch(TOP_STORES, month, cnt)]


MONTH_TOTALS = """
SELECT coalesce(sum(income), 0)::bigint AS income, coalesce(sum(units), 0)::bigint AS units,
       coalesce(sum(sales), 0)::bigint AS sales
FROM daily_totals WHERE day >= $1 AND day <= $2
"""

DAILY = """
SELECT day, sum(income)::bigint AS income, sum(units)::bigint AS units, sum(sales)::bigint AS sales
FROM daily_totals WHERE day >= $1 AND day <= $2
GROUP BY day ORDER BY day
"""


# Month bounds are inclusive (first and last day): the day after December 9999 and the month
# before January of year 1 are not dates, and `year` may be anything from 1 to 9999.
def month_end(month: dt.date) -> dt.date:
    return month.replace(day=calendar.monthrange(month.year, month.month)[1])


def previous_month(month: dt.date) -> dt.date | None:
    """The first day of the month before (None before January of year 1)."""
    if month.month == 1:
        return dt.date(month.year - 1, 12, 1) if month.year > 1 else None
    return month.replace(month=month.month - 1)


def month_label(year: int, month: int) -> str:
    return f"{year:04d}-{month:02d}"


def _change_pct(now: int, before: int) -> float | None:
    return None if before == 0 else round((now - before) * 100 / before, 1)


async def month_summary(conn: asyncpg.Connection, month: dt.date) -> dict:
    """Totals of a month beside the previous month's, from the daily rollup (≤ 62 rows)."""
    current = dict(await conn.fetchrow(MONTH_TOTALS, month, month_end(month)))
    before_month = previous_month(month)
    if before_month is None:
        before = {"income": 0, "units": 0, "sales": 0}
    else:
        before = dict(await conn.fetchrow(MONTH_TOTALS, before_month, month_end(before_month)))
    return {
        "month": month_label(month.year, month.month),
        **current,
        "previous_month": month_label(month.year - 1, 12)
        if before_month is None
        else month_label(before_month.year, before_month.month),
        "previous_income": before["income"],
        "previous_units": before["units"],
        "previous_sales": before["sales"],
        "income_change_pct": _change_pct(current["income"], before["income"]),
        "units_change_pct": _change_pct(current["units"], before["units"]),
    }


def _days(rows: list[asyncpg.Record]) -> list[dict]:
    """Rows of (day, income, units, sales) as the reports answer them."""
    return [
        {"day": r["day"].isoformat(), "income": r["income"], "units": r["units"], "sales": r["sales"]} for r in rows
    ]


async def daily(conn: asyncpg.Connection, month: dt.date) -> list[dict]:
    return _days(await conn.fetch(DAILY, month, month_end(month)))


# ---------------------------------------------------------------------------------------------
# Any period [from, to] (dates in the report time zone, both included). Chain-wide figures are
# one subtraction per store or item of the running totals (migrations 008, 010): running(to)
# minus running(from - 1), whatever the length of the period, plus the late rows of its days
# (sales that came more than a week late, which the running rows do not carry: few). Days past
# running_through (no sale written for them yet) read running_through's row; a key with no row
# on from - 1 had sold nothing before (but what its late rows hold).

_MEASURES = ("income", "units", "sales", "returns", "refunds", "discounts")
_RUNNING_DIFFERENCE = ", ".join(f"e.{m} - coalesce(b.{m}, 0) AS {m}" for m in _MEASURES)
# bigint sums: numeric ones (what sum(bigint) gives) made the join 2 ms slower at 10,000 items
_LATE_SUMS = ", ".join(f"sum({m})::bigint AS {m}" for m in _MEASURES)
_BOTH = ", ".join(f"coalesce(r.{m}, 0) + coalesce(l.{m}, 0) AS {m}" for m in _MEASURES)
# The late rows go in by a full join to their sums per key (mostly none): a UNION ALL of the
# three and one GROUP BY took 2.4x as long at 10,000 items (a hash aggregate of 20,000 rows
# instead of a join of two index scans).
_PERIOD_TOTALS = f"""
SELECT coalesce(r.{{key}}, l.{{key}}) AS {{key}}, {_BOTH}
FROM (SELECT e.{{key}}, {_RUNNING_DIFFERENCE}
      FROM {{table}} e
      LEFT JOIN {{table}} b ON b.{{key}} = e.{{key}}
           AND b.day = (SELECT least($1::date - 1, running_through) FROM report_settings)
      WHERE e.day = (SELECT least($2::date, running_through) FROM report_settings)) r
FULL JOIN (SELECT {{key}}, {_LATE_SUMS} FROM {{late}} AS late
           WHERE day >= $1 AND day <= $2 GROUP BY {{key}}) l ON l.{{key}} = r.{{key}}
"""


def _period_totals(table: str, key: str) -> str:
    """Per key, the period's measures. The late rows of item_running come with the deltas not
    folded yet: those count on their day too, and the late rows' full join takes them at little
    cost (a week's top items at 10,000 items: 5.6 ms with no delta, 7-8 with 2,000)."""
    late = RUNNING_TABLE[table].not_carried_sql()
    return _PERIOD_TOTALS.format(table=table, key=key, late=late)


# The top rows are picked from the running totals alone, then joined (as TOP_ITEMS above).
TOP_STORES_PERIOD = f"""
SELECT s.id, s.address, t.income
FROM (SELECT store_id, income FROM ({_period_totals("store_running", "store_id")}) p
      WHERE units > 0 ORDER BY income DESC, store_id LIMIT $3) t
JOIN store s ON s.id = t.store_id
ORDER BY t.income DESC, t.store_id
"""

TOP_ITEMS_PERIOD = f"""
SELECT i.id, i.name, t.units AS sales_amount
FROM (SELECT item_id, units FROM ({_period_totals("item_running", "item_id")}) p
      WHERE units > 0 ORDER BY units DESC, item_id LIMIT $3) t
JOIN item i ON i.id = t.item_id
ORDER BY t.units DESC, t.item_id
"""

# One store's items: its own days of store_item_daily (a store sells far fewer lines a day
# than the chain). A period asked whole: its top only, named (a top-N sort).
TOP_ITEMS_OF_STORE = """
SELECT i.id, i.name, t.units AS sales_amount
FROM (SELECT item_id, sum(units)::bigint AS units FROM store_item_daily
      WHERE store_id = $1 AND day >= $2 AND day <= $3
      GROUP BY item_id HAVING sum(units) > 0
      ORDER BY units DESC, item_id LIMIT $4) t
JOIN item i ON i.id = t.item_id
ORDER BY t.units DESC, t.item_id
"""
# A part of a period (api.period_parts): every item, not a top, since the top is picked from
# the sum of two parts (2-3x the cost of a top-N sort at 10M: paid once a day, not per commit).
# Ranked by PostgreSQL (a sort in the API took 3 ms more for a year at 10M sales).
STORE_ITEM_UNITS = """
SELECT item_id, sum(units)::bigint AS units FROM store_item_daily
WHERE store_id = $1 AND day >= $2 AND day <= $3
GROUP BY item_id
ORDER BY units DESC, item_id
"""

# Today's part of the chain's totals: the stores' rows of a few days (a subtraction of the
# running totals reads two rows per store whatever the period).
CHAIN_TOTALS_OF_DAYS = f"""
SELECT {", ".join(f"coalesce(sum({m}), 0)::bigint AS {m}" for m in _MEASURES)}
FROM daily_totals WHERE day >= $1 AND day <= $2
"""

STORE_DAYS = """
SELECT day, income, units, sales, returns, refunds, discounts FROM daily_totals
WHERE store_id = $1 AND day >= $2 AND day <= $3
ORDER BY day
"""

# The chain's period: the sum of every store's subtraction (a row per store, twice).
CHAIN_TOTALS = f"""
SELECT coalesce(sum(income), 0)::bigint AS income, coalesce(sum(units), 0)::bigint AS units,
       coalesce(sum(sales), 0)::bigint AS sales, coalesce(sum(returns), 0)::bigint AS returns,
       coalesce(sum(refunds), 0)::bigint AS refunds, coalesce(sum(discounts), 0)::bigint AS discounts
FROM ({_period_totals("store_running", "store_id")}) p
"""

# Weekday (ISO, 1 = Monday) x hour of the period's days: at most 24 rows a day.
_HOURS = """
SELECT extract(isodow FROM day)::int AS weekday, hour, sum(income)::bigint AS income, sum(units)::bigint AS units,
       sum(sales)::bigint AS sales
FROM {table} WHERE {where} day >= $1 AND day <= $2
GROUP BY 1, 2
"""
# The chain's hours with the deltas not folded yet, summed with them (no key to match on first).
CHAIN_HOURS_ROWS = " UNION ALL ".join(
    f"SELECT day, hour, income, units, sales FROM {table}" for table in ("hourly_totals", DELTAS.table)
)
CHAIN_HOURS = _HOURS.format(table=f"({CHAIN_HOURS_ROWS}) AS hours", where="")
STORE_HOURS = _HOURS.format(table="store_hourly", where="store_id = $3 AND")


# Every store's or item's figures over a period (a top is picked in the API from these and the
# chain's today: api.chain_today): the period parts of the chain's tops.
STORES_OF_PERIOD = (
    f"SELECT store_id AS key, income AS ranked_by, units FROM ({_period_totals('store_running', 'store_id')}) p"
)
ITEMS_OF_PERIOD = (
    f"SELECT item_id AS key, units AS ranked_by, units FROM ({_period_totals('item_running', 'item_id')}) p"
)


async def stores_of_period(conn: asyncpg.Connection, first: dt.date, last: dt.date) -> KeyedSums:
    """Every store's income and units over days first..last."""
    return KeyedSums.of(await conn.fetch(STORES_OF_PERIOD, first, last))


async def items_of_period(conn: asyncpg.Connection, first: dt.date, last: dt.date) -> KeyedSums:
    """Every item's units over days first..last."""
    return KeyedSums.of(await conn.fetch(ITEMS_OF_PERIOD, first, last))


async def top_stores_in(conn: asyncpg.Connection, first: dt.date, last: dt.date, cnt: int) -> list[dict]:
    return [dict(r) for r in await conn.fetch(TOP_STORES_PERIOD, first, last, cnt)]


async def top_items_in(conn: asyncpg.Connection, first: dt.date, last: dt.date, cnt: int) -> list[dict]:
    """The chain's top items over the period."""
    return [dict(r) for r in await conn.fetch(TOP_ITEMS_PERIOD, first, last, cnt)]


class StoreAddresses(dict[int, str]):
    """Every store's address by id: the chain's top stores are named from it with no query."""

    @property
    def nbytes(self) -> int:  # what it counts against the report cache's bound
        return 150 * len(self) + 200


async def store_addresses(conn: asyncpg.Connection) -> StoreAddresses:
    return StoreAddresses((r["id"], r["address"]) for r in await conn.fetch(STORES))


def addressed_top(top_income: Sequence[tuple[int, int]], addresses: Mapping[int, str]) -> list[dict]:
    """Top stores as /stores/top/ answers them."""
    return [
        {"id": store_id, "address": addresses[store_id], "income": income}
        for store_id, income in top_income
        if store_id in addresses  # a store deleted takes its rollup rows with it: only a race
    ]


class ItemNames(dict[int, str]):
    """Every item's name by id: a store's top items are named from it with no query."""

    @property
    def nbytes(self) -> int:  # what it counts against the report cache's bound: a dict entry and a short str
        return 150 * len(self) + 200


async def item_names(conn: asyncpg.Connection) -> ItemNames:
    return ItemNames((r["id"], r["name"]) for r in await conn.fetch("SELECT id, name FROM item"))


async def store_item_units(conn: asyncpg.Connection, store_id: int, first: dt.date, last: dt.date) -> Ranked:
    """One store's units per item over days first..last."""
    return Ranked.from_ranked([(r[0], r[1]) for r in await conn.fetch(STORE_ITEM_UNITS, store_id, first, last)])


def named_top(top_units: Sequence[tuple[int, int]], names: Mapping[int, str]) -> list[dict]:
    """Top items as /items/top/ answers them."""
    return [
        {"id": item_id, "name": names[item_id], "sales_amount": units}
        for item_id, units in top_units
        if item_id in names  # an item deleted takes its rollup rows with it: only a race
    ]


PERIOD_MEASURES = ("income", "units", "sales", "returns", "refunds", "discounts")


async def top_items_of_store(
    conn: asyncpg.Connection, store_id: int, first: dt.date, last: dt.date, cnt: int
) -> list[dict]:
    """One store's top items over a period asked whole."""
    return [dict(r) for r in await conn.fetch(TOP_ITEMS_OF_STORE, store_id, first, last, cnt)]


async def store_days(conn: asyncpg.Connection, store_id: int, first: dt.date, last: dt.date) -> list[dict]:
    return [
        {"day": r["day"].isoformat(), **{m: r[m] for m in PERIOD_MEASURES}}
        for r in await conn.fetch(STORE_DAYS, store_id, first, last)
    ]


@dataclasses.dataclass(frozen=True, eq=False)
class StorePart:
    """One store over a part of a period: its days, their sums and units per item."""

    days: list[dict]
    items: Ranked
    totals: dict[str, int] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, days: list[dict], items: Ranked) -> StorePart:
        """With its days summed once (a page of a year lists 340 days at 10M: summing them at
        every ask took half of its time)."""
        return cls(days, items, add([{m: day[m] for m in PERIOD_MEASURES} for day in days]))

    @property
    def nbytes(self) -> int:
        return ROW_BYTES * len(self.days) + self.items.nbytes


async def store_part(conn: asyncpg.Connection, store_id: int, first: dt.date, last: dt.date) -> StorePart:
    days = await store_days(conn, store_id, first, last)
    return StorePart.of(days, await store_item_units(conn, store_id, first, last))


async def store_report(conn: asyncpg.Connection, store_id: int, first: dt.date, last: dt.date, cnt: int) -> dict:
    """One store's page over a period asked whole (`store_page`)."""
    days = StorePart.of(await store_days(conn, store_id, first, last), Ranked.of(()))
    return store_page(first, last, [days], await top_items_of_store(conn, store_id, first, last, cnt))


def store_page(first: dt.date, last: dt.date, parts: Sequence[StorePart], top_items: list[dict]) -> dict:
    """One store's page but for the store itself (looked up beside it): its totals (income and
    units net of returns), top items and days over the period. It lists every day, so its totals
    are their sum: no query of their own."""
    totals = add([part.totals for part in parts])
    return {
        "from": first.isoformat(),
        "to": last.isoformat(),
        **{m: totals.get(m, 0) for m in PERIOD_MEASURES},
        "top_items": top_items,
        "days": [day for part in parts for day in part.days],
    }


async def chain_totals(conn: asyncpg.Connection, first: dt.date, last: dt.date, live: bool) -> dict[str, int]:
    """The chain's measures over days first..last (`live`: from today on, a few days' rows)."""
    return dict(await conn.fetchrow(CHAIN_TOTALS_OF_DAYS if live else CHAIN_TOTALS, first, last))


async def hour_cells(
    conn: asyncpg.Connection, first: dt.date, last: dt.date, store_id: int | None
) -> dict[tuple[int, int], dict[str, int]]:
    """The period's sales by (weekday, hour), only the cells that have some."""
    if store_id is None:
        rows = await conn.fetch(CHAIN_HOURS, first, last)
    else:
        rows = await conn.fetch(STORE_HOURS, first, last, store_id)
    return {(r["weekday"], r["hour"]): {m: r[m] for m in ("income", "units", "sales")} for r in rows}


def hours(
    first: dt.date, last: dt.date, store_id: int | None, parts: Sequence[Mapping[tuple[int, int], Mapping[str, int]]]
) -> dict:
    """The period's sales by weekday and hour: all 168 cells, Monday 00:00 first."""
    found = add_by_key(parts)
    none = {"income": 0, "units": 0, "sales": 0}
    cells = [
        {"weekday": weekday, "hour": hour, **found.get((weekday, hour), none)}
        for weekday in range(1, 8)
        for hour in range(24)
    ]
    return {"from": first.isoformat(), "to": last.isoformat(), "store_id": store_id, "cells": cells}


# ---------------------------------------------------------------------------------------------
# Trend: income per month over the last months, beside the same month a year before.

MONTH_TOTALS_BY_MONTH = """
SELECT month, sum(income)::bigint AS income, sum(units)::bigint AS units, sum(sales)::bigint AS sales
FROM store_monthly
WHERE month >= $1 AND month <= $2 AND ($3::int IS NULL OR store_id = $3)
GROUP BY month
"""


def months_back(month: dt.date, count: int) -> dt.date:
    """The first day of the month `count` months before `month` (January of year 1 at the earliest)."""
    index = month.year * 12 + month.month - 1 - count
    return dt.date(index // 12, index % 12 + 1, 1) if index >= 12 else dt.date(1, 1, 1)


def next_month(month: dt.date) -> dt.date | None:
    """The first day of the month after (None after December 9999)."""
    if month.month < 12:
        return month.replace(month=month.month + 1)
    return dt.date(month.year + 1, 1, 1) if month.year < 9999 else None


async def month_totals(
    conn: asyncpg.Connection, first_month: dt.date, last_month: dt.date, store_id: int | None
) -> dict[dt.date, dict[str, int]]:
    """Per month (its first day) from first_month to last_month, the chain's or one store's figures."""
    return {
        r["month"]: {"income": r["income"], "units": r["units"], "sales": r["sales"]}
        for r in await conn.fetch(MONTH_TOTALS_BY_MONTH, first_month, last_month, store_id)
    }


def trend_first_month(last: dt.date, months: int) -> dt.date:
    """The first month a trend of `months` months ending with `last` reads: a year before its first."""
    return months_back(months_back(last, months - 1), 12)


def trend(last: dt.date, months: int, totals: Mapping[dt.date, Mapping[str, int]]) -> list[dict]:
    """`months` months ending with `last` (oldest first), each beside the same month a year before."""
    first = months_back(last, months - 1)
    none = {"income": 0, "units": 0, "sales": 0}
    rows = []
    month: dt.date | None = first
    while month is not None and month <= last:
        now = totals.get(month, none)
        before = totals.get(month.replace(year=month.year - 1), none)["income"] if month.year > 1 else 0
        rows.append(
            {
                "month": month_label(month.year, month.month),
                **now,
                "income_year_before": before,
                "income_change_pct": _change_pct(now["income"], before),
            }
        )
        month = next_month(month)
    return rows
