"""Reports recounted from the raw `sales` table with plain SQL, for tests to compare against.

Deliberately independent of shared.rollups: these queries read only `sales`, `returns`,
`item` and `store`, so a bug in the rollups (or in how they are cut by month) shows as a mismatch.
"""

from __future__ import annotations

import datetime as dt

import asyncpg

# rollups.drift() of a database whose rollups match its sales: every rollup, by name.
NO_DRIFT = {
    "store_monthly": 0,
    "item_totals": 0,
    "daily_totals": 0,
    "store_item_daily": 0,
    "hourly_totals": 0,
    "store_hourly": 0,
    "store_running": 0,
    "item_running": 0,
}

# Sales and returns as one list of moves: a return takes its money and units back, where and
# when it happened. Income counts the price charged; a discount is the list price less it (a sale
# without a list price had none), given with the sale and not taken back by a return. (Both
# branches' columns of one type: Citus pushes a UNION ALL with casts in it down to no shard.)
ACTIVITY = """
(SELECT sale_time AS moment, store_id, item_id, price::bigint * quantity AS income, quantity::bigint AS units,
        1 AS sales, 0 AS returns, 0::bigint AS refunds,
        (coalesce(list_price, price) - price)::bigint * quantity AS discounts
 FROM sales
 UNION ALL
 SELECT return_time, store_id, item_id, -(price::bigint * quantity), -quantity::bigint, 0, 1,
        price::bigint * quantity, 0::bigint
 FROM returns) s
"""

TOP_ITEMS = f"""
SELECT i.id, i.name, sum(s.units)::bigint AS sales_amount
FROM {ACTIVITY} JOIN item i ON i.id = s.item_id
GROUP BY i.id, i.name HAVING sum(s.units) > 0
ORDER BY sales_amount DESC, i.id
LIMIT $1
"""

# $1: first day of the month (a date), $2: cnt, $3: the IANA zone the month is cut in.
TOP_STORES = f"""
SELECT st.id, st.address, sum(s.income)::bigint AS income
FROM {ACTIVITY} JOIN store st ON st.id = s.store_id
WHERE s.moment >= ($1::date::timestamp AT TIME ZONE $3)
  AND s.moment < (($1::date + interval '1 month')::timestamp AT TIME ZONE $3)
GROUP BY st.id, st.address HAVING sum(s.units) > 0
ORDER BY income DESC, st.id
LIMIT $2
"""


async def top_items(conn: asyncpg.Connection, cnt: int = 10) -> list[dict]:
    return [dict(r) for r in await conn.fetch(TOP_ITEMS, cnt)]


async def top_stores(conn: asyncpg.Connection, month: dt.date, cnt: int = 10, tz: str = "UTC") -> list[dict]:
    return [dict(r) for r in await conn.fetch(TOP_STORES, month, cnt, tz)]


# Periods: $1 first day, $2 last day (both included), cut in zone $3.
_IN_PERIOD = """
s.moment >= ($1::date::timestamp AT TIME ZONE $3)
AND s.moment < (($2::date + 1)::timestamp AT TIME ZONE $3)
"""

TOP_STORES_IN = f"""
SELECT st.id, st.address, sum(s.income)::bigint AS income
FROM {ACTIVITY} JOIN store st ON st.id = s.store_id
WHERE {_IN_PERIOD}
GROUP BY st.id, st.address HAVING sum(s.units) > 0
ORDER BY income DESC, st.id
LIMIT $4
"""

TOP_ITEMS_IN = f"""
SELECT i.id, i.name, sum(s.units)::bigint AS sales_amount
FROM {ACTIVITY} JOIN item i ON i.id = s.item_id
WHERE {_IN_PERIOD} AND ($5::int IS NULL OR s.store_id = $5)
GROUP BY i.id, i.name HAVING sum(s.units) > 0
ORDER BY sales_amount DESC, i.id
LIMIT $4
"""

MEASURES = ("income", "units", "sales", "returns", "refunds", "discounts")
_SUMS = ", ".join(f"sum(s.{m})::bigint AS {m}" for m in MEASURES)

STORE_DAYS_IN = f"""
SELECT (s.moment AT TIME ZONE $3)::date AS day, {_SUMS}
FROM {ACTIVITY}
WHERE {_IN_PERIOD} AND s.store_id = $4
GROUP BY 1 ORDER BY 1
"""

# $4: a store, or NULL for the chain
TOTALS_IN = f"SELECT {_SUMS} FROM {ACTIVITY} WHERE {_IN_PERIOD} AND ($4::int IS NULL OR s.store_id = $4)"

HOURS_IN = f"""
SELECT extract(isodow FROM s.moment AT TIME ZONE $3)::int AS weekday, extract(hour FROM s.moment AT TIME ZONE $3)::int
       AS hour, {_SUMS}
FROM {ACTIVITY}
WHERE {_IN_PERIOD} AND ($4::int IS NULL OR s.store_id = $4)
GROUP BY 1, 2
"""


async def top_stores_in(
    conn: asyncpg.Connection, first: dt.date, last: dt.date, cnt: int = 10, tz: str = "UTC"
) -> list[dict]:
    return [dict(r) for r in await conn.fetch(TOP_STORES_IN, first, last, tz, cnt)]


async def top_items_in(
    conn: asyncpg.Connection, first: dt.date, last: dt.date, cnt: int = 10, tz: str = "UTC", store_id: int | None = None
) -> list[dict]:
    return [dict(r) for r in await conn.fetch(TOP_ITEMS_IN, first, last, tz, cnt, store_id)]


async def store_page(
    conn: asyncpg.Connection, store_id: int, first: dt.date, last: dt.date, cnt: int = 10, tz: str = "UTC"
) -> dict:
    """GET /stores/{id}/report/ recounted (the `store` member left to the caller)."""
    days = [
        {"day": r["day"].isoformat(), **{m: r[m] for m in MEASURES}}
        for r in await conn.fetch(STORE_DAYS_IN, first, last, tz, store_id)
    ]
    return {
        "from": first.isoformat(),
        "to": last.isoformat(),
        **{m: sum(d[m] for d in days) for m in MEASURES},
        "top_items": await top_items_in(conn, first, last, cnt, tz, store_id),
        "days": days,
    }


async def totals(conn: asyncpg.Connection, first: dt.date, last: dt.date, tz: str = "UTC") -> dict:
    """GET /reports/totals/ recounted."""
    row = await conn.fetchrow(TOTALS_IN, first, last, tz, None)
    return {"from": first.isoformat(), "to": last.isoformat(), **{m: row[m] or 0 for m in MEASURES}}


async def hours(
    conn: asyncpg.Connection, first: dt.date, last: dt.date, tz: str = "UTC", store_id: int | None = None
) -> dict:
    """GET /reports/hours/ recounted."""
    found = {(r["weekday"], r["hour"]): r for r in await conn.fetch(HOURS_IN, first, last, tz, store_id)}
    cells = [
        {"weekday": w, "hour": h, **{m: found[w, h][m] if (w, h) in found else 0 for m in ("income", "units", "sales")}}
        for w in range(1, 8)
        for h in range(24)
    ]
    return {"from": first.isoformat(), "to": last.isoformat(), "store_id": store_id, "cells": cells}


MONTHS = f"""
SELECT date_trunc('month', s.moment AT TIME ZONE $1)::date AS month, sum(s.income)::bigint AS income,
       sum(s.units)::bigint AS units, sum(s.sales)::bigint AS sales
FROM {ACTIVITY} WHERE $2::int IS NULL OR s.store_id = $2
GROUP BY 1
"""


async def month_totals(conn: asyncpg.Connection, tz: str = "UTC", store_id: int | None = None) -> dict:
    """{first day of month: (income, units, sales)} of every month with sales."""
    return {r["month"]: (r["income"], r["units"], r["sales"]) for r in await conn.fetch(MONTHS, tz, store_id)}
