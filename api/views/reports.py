"""The catalogue and the reports (seed endpoints)."""
from __future__ import annotations

from aiohttp import web

from api import reports
from api.appkeys import PG_POOL, SETTINGS
from api.responses import json_response
from api.validation import int_param, one_of_params


async def list_items(request: web.Request) -> web.Response:
    async with request.app[PG_POOL].acquire() as conn:
        rows = await conn.fetch(reports.ITEMS)
    return json_response([dict(r) for r in rows])


async def list_stores(request: web.Request) -> web.Response:
    async with request.app[PG_POOL].acquire() as conn:
        rows = await conn.fetch(reports.STORES)
    return json_response([dict(r) for r in rows])


async def top_items(request: web.Request) -> web.Response:
    cnt = int_param(request.query, "cnt", 10, 1, 1000)
    async with request.app[PG_POOL].acquire() as conn:
        return json_response(await reports.top_items(conn, cnt))


async def top_stores(request: web.Request) -> web.Response:
    cnt = int_param(request.query, "cnt", 10, 1, 1000)
    mm = int_param(request.query, "mm", None, 1, 12)
    year = one_of_params(request.query, ("year", "gg"), 1, 9999)
    month = reports.report_month(mm, year, request.app[SETTINGS].timezone)
    async with request.app[PG_POOL].acquire() as conn:
        return json_response(await reports.top_stores(conn, month, cnt))
