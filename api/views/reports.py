"""The catalogue and the reports, as JSON or CSV."""
from __future__ import annotations

from aiohttp import web

from api import reports
from api.appkeys import PG_POOL, SETTINGS
from api.responses import json_response, table_response, wants_csv
from api.validation import int_param, one_of_params


def _month(request: web.Request):
    mm = int_param(request.query, "mm", None, 1, 12)
    year = one_of_params(request.query, ("year", "gg"), 1, 9999)
    return reports.report_month(mm, year, request.app[SETTINGS].timezone)


async def list_items(request: web.Request) -> web.Response:
    as_csv = wants_csv(request)  # validates `format` before any query
    async with request.app[PG_POOL].acquire() as conn:
        rows = [dict(r) for r in await conn.fetch(reports.ITEMS)]
    return table_response(rows, ["id", "name", "price"], "items", as_csv)


async def list_stores(request: web.Request) -> web.Response:
    as_csv = wants_csv(request)
    async with request.app[PG_POOL].acquire() as conn:
        rows = [dict(r) for r in await conn.fetch(reports.STORES)]
    return table_response(rows, ["id", "address"], "stores", as_csv)


async def top_items(request: web.Request) -> web.Response:
    cnt = int_param(request.query, "cnt", 10, 1, 1000)
    as_csv = wants_csv(request)
    async with request.app[PG_POOL].acquire() as conn:
        rows = await reports.top_items(conn, cnt)
    return table_response(rows, ["id", "name", "sales_amount"], "top-items", as_csv)


async def top_stores(request: web.Request) -> web.Response:
    cnt = int_param(request.query, "cnt", 10, 1, 1000)
    month = _month(request)
    as_csv = wants_csv(request)
    async with request.app[PG_POOL].acquire() as conn:
        rows = await reports.top_stores(conn, month, cnt)
    return table_response(rows, ["id", "address", "income"], f"top-stores-{month:%Y-%m}", as_csv)


async def month_summary(request: web.Request) -> web.Response:
    month = _month(request)
    as_csv = wants_csv(request)
    async with request.app[PG_POOL].acquire() as conn:
        summary = await reports.month_summary(conn, month)
    if as_csv:
        return table_response([summary], list(summary), f"summary-{month:%Y-%m}", as_csv)
    return json_response(summary)


async def daily(request: web.Request) -> web.Response:
    month = _month(request)
    as_csv = wants_csv(request)
    async with request.app[PG_POOL].acquire() as conn:
        rows = await reports.daily(conn, month)
    return table_response(rows, ["day", "income", "units", "sales"], f"daily-{month:%Y-%m}", as_csv)
