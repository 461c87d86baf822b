"""Report queries. They read only the rollups, so their cost does not grow with sales."""
from __future__ import annotations

import datetime as dt
import zoneinfo

import asyncpg

ITEMS = "SELECT id, name, price FROM item ORDER BY id"
STORES = "SELECT id, address FROM store ORDER BY id"

TOP_ITEMS = """
SELECT i.id, i.name, t.units AS sales_amount
FROM item_totals t JOIN item i ON i.id = t.item_id
WHERE t.units > 0
ORDER BY t.units DESC, t.item_id
LIMIT $1
"""

TOP_STORES = """
SELECT s.id, s.address, m.income
FROM store_monthly m JOIN store s ON s.id = m.store_id
WHERE m.month = $1 AND m.units > 0
ORDER BY m.income DESC, m.store_id
LIMIT $2
"""


def report_month(mm: int | None, year: int | None, tz: zoneinfo.ZoneInfo, now: dt.datetime | None = None) -> dt.date:
    """The first day of the month a report asks for.

    Without `year`, month `mm` is the most recent one with that number that has begun:
    in November 2026, mm=9 is September 2026 and mm=12 is December 2025.
    """
    today = (now or dt.datetime.now(dt.timezone.utc)).astimezone(tz).date()
    month = mm or today.month
    if year is None:
        year = today.year if month <= today.month else today.year - 1
    return dt.date(year, month, 1)


async def top_items(conn: asyncpg.Connection, cnt: int) -> list[dict]:
    return [dict(r) for r in await conn.fetch(TOP_ITEMS, cnt)]


async def top_stores(conn: asyncpg.Connection, month: dt.date, cnt: int) -> list[dict]:
    return [dict(r) for r in await conn.fetch(TOP_STORES, month, cnt)]


MONTH_TOTALS = """
SELECT coalesce(sum(income), 0)::bigint AS income, coalesce(sum(units), 0)::bigint AS units,
       coalesce(sum(sales), 0)::bigint AS sales
FROM daily_totals WHERE day >= $1 AND day < $2
"""

DAILY = """
SELECT day, income, units, sales FROM daily_totals
WHERE day >= $1 AND day < $2 ORDER BY day
"""


def next_month(month: dt.date) -> dt.date:
    return dt.date(month.year + month.month // 12, month.month % 12 + 1, 1)


def previous_month(month: dt.date) -> dt.date:
    return dt.date(month.year - (month.month == 1), (month.month - 2) % 12 + 1, 1)


def _change_pct(now: int, before: int) -> float | None:
    return None if before == 0 else round((now - before) * 100 / before, 1)


async def month_summary(conn: asyncpg.Connection, month: dt.date) -> dict:
    """Totals of a month beside the previous month's, from the daily rollup (≤ 62 rows)."""
    current = dict(await conn.fetchrow(MONTH_TOTALS, month, next_month(month)))
    before_month = previous_month(month)
    before = dict(await conn.fetchrow(MONTH_TOTALS, before_month, month))
    return {
        "month": month.strftime("%Y-%m"), **current,
        "previous_month": before_month.strftime("%Y-%m"),
        "previous_income": before["income"], "previous_units": before["units"], "previous_sales": before["sales"],
        "income_change_pct": _change_pct(current["income"], before["income"]),
        "units_change_pct": _change_pct(current["units"], before["units"]),
    }


async def daily(conn: asyncpg.Connection, month: dt.date) -> list[dict]:
    rows = await conn.fetch(DAILY, month, next_month(month))
    return [{"day": r["day"].isoformat(), "income": r["income"], "units": r["units"], "sales": r["sales"]} for r in rows]
