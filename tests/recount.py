"""Reports recounted from the raw `sales` table with plain SQL, for tests to compare against.

Deliberately independent of shared.rollups: these queries read only `sales`, `item` and
`store`, so a bug in the rollups (or in how they are cut by month) shows as a mismatch.
"""
from __future__ import annotations

import datetime as dt

import asyncpg

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
