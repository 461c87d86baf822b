"""Reports recounted from the raw `sales` table with plain SQL, for tests to compare against.

Deliberately independent of shared.rollups: these queries read only `sales`, `item` and
`store`, so a bug in the rollups (or in how they are cut by month) shows as a mismatch.
"""
from __future__ import annotations

import datetime as dt

import asyncpg

# rollups.drift() of a database whose rollups match its sales: every rollup, by name.
NO_DRIFT = {"store_monthly": 0, "item_totals": 0, "daily_totals": 0, "store_item_daily": 0,
            "store_running": 0, "item_running": 0}

TOP_ITEMS = """
SELECT i.id, i.name, sum(s.quantity)::bigint AS sales_amount
FROM sales s JOIN item i ON i.id = s.item_id
GROUP BY i.id, i.name
ORDER BY sales_amount DESC, i.id
LIMIT $1
"""

# $1: first day of the month (a date), $2: cnt, $3: the IANA zone the month is cut in.
TOP_STORES = """
SELECT st.id, st.address, sum(s.price::bigint * s.quantity)::bigint AS income
FROM sales s JOIN store st ON st.id = s.store_id
WHERE s.sale_time >= ($1::date::timestamp AT TIME ZONE $3)
  AND s.sale_time < (($1::date + interval '1 month')::timestamp AT TIME ZONE $3)
GROUP BY st.id, st.address
ORDER BY income DESC, st.id
LIMIT $2
"""


async def top_items(conn: asyncpg.Connection, cnt: int = 10) -> list[dict]:
    return [dict(r) for r in await conn.fetch(TOP_ITEMS, cnt)]


async def top_stores(conn: asyncpg.Connection, month: dt.date, cnt: int = 10, tz: str = "UTC") -> list[dict]:
    return [dict(r) for r in await conn.fetch(TOP_STORES, month, cnt, tz)]


# Periods: $1 first day, $2 last day (both included), cut in zone $3.
_IN_PERIOD = """
s.sale_time >= ($1::date::timestamp AT TIME ZONE $3)
AND s.sale_time < (($2::date + 1)::timestamp AT TIME ZONE $3)
"""

TOP_STORES_IN = f"""
SELECT st.id, st.address, sum(s.price::bigint * s.quantity)::bigint AS income
FROM sales s JOIN store st ON st.id = s.store_id
WHERE {_IN_PERIOD}
GROUP BY st.id, st.address
ORDER BY income DESC, st.id
LIMIT $4
"""

TOP_ITEMS_IN = f"""
SELECT i.id, i.name, sum(s.quantity)::bigint AS sales_amount
FROM sales s JOIN item i ON i.id = s.item_id
WHERE {_IN_PERIOD} AND ($5::int IS NULL OR s.store_id = $5)
GROUP BY i.id, i.name
ORDER BY sales_amount DESC, i.id
LIMIT $4
"""

STORE_DAYS_IN = f"""
SELECT (s.sale_time AT TIME ZONE $3)::date AS day, sum(s.price::bigint * s.quantity)::bigint AS income,
       sum(s.quantity)::bigint AS units, count(*) AS sales
FROM sales s
WHERE {_IN_PERIOD} AND s.store_id = $4
GROUP BY 1 ORDER BY 1
"""


async def top_stores_in(conn: asyncpg.Connection, first: dt.date, last: dt.date, cnt: int = 10,
                        tz: str = "UTC") -> list[dict]:
    return [dict(r) for r in await conn.fetch(TOP_STORES_IN, first, last, tz, cnt)]


async def top_items_in(conn: asyncpg.Connection, first: dt.date, last: dt.date, cnt: int = 10,
                       tz: str = "UTC", store_id: int | None = None) -> list[dict]:
    return [dict(r) for r in await conn.fetch(TOP_ITEMS_IN, first, last, tz, cnt, store_id)]


async def store_page(conn: asyncpg.Connection, store_id: int, first: dt.date, last: dt.date, cnt: int = 10,
                     tz: str = "UTC") -> dict:
    """GET /stores/{id}/report/ recounted (the `store` member left to the caller)."""
    days = [{"day": r["day"].isoformat(), "income": r["income"], "units": r["units"], "sales": r["sales"]}
            for r in await conn.fetch(STORE_DAYS_IN, first, last, tz, store_id)]
    return {"from": first.isoformat(), "to": last.isoformat(),
            "income": sum(d["income"] for d in days), "units": sum(d["units"] for d in days),
            "sales": sum(d["sales"] for d in days),
            "top_items": await top_items_in(conn, first, last, cnt, tz, store_id), "days": days}


MONTHS = """
SELECT date_trunc('month', s.sale_time AT TIME ZONE $1)::date AS month, sum(s.price::bigint * s.quantity)::bigint
       AS income, sum(s.quantity)::bigint AS units, count(*) AS sales
FROM sales s WHERE $2::int IS NULL OR s.store_id = $2
GROUP BY 1
"""


async def month_totals(conn: asyncpg.Connection, tz: str = "UTC", store_id: int | None = None) -> dict:
    """{first day of month: (income, units, sales)} of every month with sales."""
    return {r["month"]: (r["income"], r["units"], r["sales"]) for r in await conn.fetch(MONTHS, tz, store_id)}
