"""Report queries. They read only the rollups, so their cost does not grow with sales."""
from __future__ import annotations

import calendar
import datetime as dt
import zoneinfo

import asyncpg

ITEMS = "SELECT id, name, price FROM item ORDER BY id"
STORES = "SELECT id, address FROM store ORDER BY id"

# The top rows are picked from the rollup alone (a top-N sort over at most one row per item, or
# per store of the month), then joined: joining first made every report join all 10,000 items.
TOP_ITEMS = """
SELECT i.id, i.name, t.units AS sales_amount
FROM (SELECT item_id, units FROM item_totals WHERE units > 0
      ORDER BY units DESC, item_id LIMIT $1) t
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
    today = (now or dt.datetime.now(dt.timezone.utc)).astimezone(tz).date()
    month = mm or today.month
    if year is None:
        year = today.year if month <= today.month else today.year - 1
    return dt.date(year, month, 1)


async def list_items(conn: asyncpg.Connection) -> list[dict]:
    return [dict(r) for r in await conn.fetch(ITEMS)]


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
        "month": month_label(month.year, month.month), **current,
        "previous_month": month_label(month.year - 1, 12) if before_month is None
        else month_label(before_month.year, before_month.month),
        "previous_income": before["income"], "previous_units": before["units"], "previous_sales": before["sales"],
        "income_change_pct": _change_pct(current["income"], before["income"]),
        "units_change_pct": _change_pct(current["units"], before["units"]),
    }


async def daily(conn: asyncpg.Connection, month: dt.date) -> list[dict]:
    rows = await conn.fetch(DAILY, month, month_end(month))
    return [{"day": r["day"].isoformat(), "income": r["income"], "units": r["units"], "sales": r["sales"]} for r in rows]
