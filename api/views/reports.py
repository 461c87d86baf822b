"""The catalogue and the reports, as JSON or CSV."""
from __future__ import annotations

from aiohttp import web

from api import reports
from api.appkeys import PG_POOL, REPORT_CACHE, SETTINGS
from api.responses import json_response, table_response, wants_csv
from api.validation import int_param, one_of_params


async def _cached(request: web.Request, key: tuple, query, *args):
    """`query(conn, *args)`'s result, from the report cache when nothing changed since."""
    pool = request.app[PG_POOL]

    async def compute():
        async with pool.acquire() as conn:
            return await query(conn, *args)

    return await request.app[REPORT_CACHE].get(key, compute)


def _month(request: web.Request):
    mm = int_param(request.query, "mm", None, 1, 12)
    year = one_of_params(request.query, ("year", "gg"), 1, 9999)
    return reports.report_month(mm, year, request.app[SETTINGS].timezone)


async def list_items(request: web.Request) -> web.Response:
    as_csv = wants_csv(request)  # validates `format` before any query
    rows = await _cached(request, ("items",), reports.list_items)
    return table_response(rows, ["id", "name", "price"], "items", as_csv)


async def list_stores(request: web.Request) -> web.Response:
    as_csv = wants_csv(request)
    rows = await _cached(request, ("stores",), reports.list_stores)
    return table_response(rows, ["id", "address"], "stores", as_csv)


async def top_items(request: web.Request) -> web.Response:
    cnt = int_param(request.query, "cnt", 10, 1, 1000)
    as_csv = wants_csv(request)
    rows = await _cached(request, ("top_items", cnt), reports.top_items, cnt)
    return table_response(rows, ["id", "name", "sales_amount"], "top-items", as_csv)


async def top_stores(request: web.Request) -> web.Response:
    cnt = int_param(request.query, "cnt", 10, 1, 1000)
    month = _month(request)
    as_csv = wants_csv(request)
    rows = await _cached(request, ("top_stores", month, cnt), reports.top_stores, month, cnt)
    return table_response(rows, ["id", "address", "income"], f"top-stores-{month:%Y-%m}", as_csv)


async def month_summary(request: web.Request) -> web.Response:
    month = _month(request)
    as_csv = wants_csv(request)
    summary = await _cached(request, ("summary", month), reports.month_summary, month)
    if as_csv:
        return table_response([summary], list(summary), f"summary-{month:%Y-%m}", as_csv)
    return json_response(summary)


async def daily(request: web.Request) -> web.Response:
    month = _month(request)
    as_csv = wants_csv(request)
    rows = await _cached(request, ("daily", month), reports.daily, month)
    return table_response(rows, ["day", "income", "units", "sales"], f"daily-{month:%Y-%m}", as_csv)
