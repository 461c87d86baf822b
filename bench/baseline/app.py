"""The baseline: what a user would write from the seed's README, without tricks."""

from __future__ import annotations

import datetime as dt

import asyncpg
from aiohttp import web

# The seed's schema, exactly (sale_time is a timestamp without zone, in UTC here), and the
# returns table a user would add beside it.
SCHEMA = """
CREATE TABLE IF NOT EXISTS store (id serial PRIMARY KEY, address varchar);
CREATE TABLE IF NOT EXISTS item (id serial PRIMARY KEY, name varchar, price integer);
CREATE TABLE IF NOT EXISTS sales (
    id serial PRIMARY KEY,
    sale_time timestamp NOT NULL DEFAULT now(),
    item_id integer REFERENCES item (id),
    store_id integer REFERENCES store (id)
);
CREATE TABLE IF NOT EXISTS returns (
    id serial PRIMARY KEY,
    sale_id integer REFERENCES sales (id),
    return_time timestamp NOT NULL,
    item_id integer REFERENCES item (id),
    store_id integer REFERENCES store (id),
    quantity integer NOT NULL
);
"""

INSERT_SALE = """
INSERT INTO sales (item_id, store_id) VALUES ($1, $2)
RETURNING id, sale_time, item_id, store_id
"""

# Sales and returns as one list of moves: a return takes back its units (and so its money).
MOVES = """
(SELECT sale_time AS moment, item_id, store_id, 1 AS units, 0 AS returned FROM sales
 UNION ALL
 SELECT return_time, item_id, store_id, -quantity, quantity FROM returns) s
"""

TOP_ITEMS = f"""
SELECT i.id, i.name, sum(s.units) AS sales_amount
FROM {MOVES} JOIN item i ON i.id = s.item_id
GROUP BY i.id, i.name HAVING sum(s.units) > 0
ORDER BY sales_amount DESC, i.id
LIMIT $1
"""

TOP_STORES = f"""
SELECT st.id, st.address, sum(i.price * s.units) AS income
FROM {MOVES}
JOIN item i ON i.id = s.item_id
JOIN store st ON st.id = s.store_id
WHERE s.moment >= $1 AND s.moment < $2
GROUP BY st.id, st.address HAVING sum(s.units) > 0
ORDER BY income DESC, st.id
LIMIT $3
"""

# Any period [from, to] (dates, both included): the same GROUP BYs within the period's bounds.
TOP_ITEMS_IN = f"""
SELECT i.id, i.name, sum(s.units) AS sales_amount
FROM {MOVES} JOIN item i ON i.id = s.item_id
WHERE s.moment >= $1 AND s.moment < $2 AND ($4::int IS NULL OR s.store_id = $4)
GROUP BY i.id, i.name HAVING sum(s.units) > 0
ORDER BY sales_amount DESC, i.id
LIMIT $3
"""

_SUMS = """sum(i.price * s.units) AS income, sum(s.units) AS units, count(*) FILTER (WHERE s.returned = 0) AS sales,
       count(*) FILTER (WHERE s.returned > 0) AS returns, sum(i.price * s.returned) AS refunds"""

STORE_DAYS = f"""
SELECT s.moment::date AS day, {_SUMS}
FROM {MOVES} JOIN item i ON i.id = s.item_id
WHERE s.store_id = $1 AND s.moment >= $2 AND s.moment < $3
GROUP BY 1 ORDER BY 1
"""

TOTALS = f"""
SELECT coalesce(sum(i.price * s.units), 0) AS income, coalesce(sum(s.units), 0) AS units,
       count(*) FILTER (WHERE s.returned = 0) AS sales, count(*) FILTER (WHERE s.returned > 0) AS returns,
       coalesce(sum(i.price * s.returned), 0) AS refunds
FROM {MOVES} JOIN item i ON i.id = s.item_id
WHERE s.moment >= $1 AND s.moment < $2
"""

HOURS = f"""
SELECT extract(isodow FROM s.moment)::int AS weekday, extract(hour FROM s.moment)::int AS hour,
       sum(i.price * s.units) AS income, sum(s.units) AS units, count(*) FILTER (WHERE s.returned = 0) AS sales
FROM {MOVES} JOIN item i ON i.id = s.item_id
WHERE s.moment >= $1 AND s.moment < $2 AND ($3::int IS NULL OR s.store_id = $3)
GROUP BY 1, 2
"""
MEASURES = ("income", "units", "sales", "returns", "refunds")

POOL = web.AppKey("pool", asyncpg.Pool)


async def create_schema(conn: asyncpg.Connection) -> None:
    await conn.execute("SET TIME ZONE 'UTC'")
    await conn.execute(SCHEMA)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _int_param(request: web.Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    value = int(raw)  # ValueError -> 400 below
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be {lo}..{hi}")
    return value


def month_bounds(mm: int | None, now: dt.datetime | None = None) -> tuple[dt.datetime, dt.datetime]:
    """The most recent month numbered `mm` that has begun (UTC), as [start, end)."""
    today = (now or dt.datetime.now(dt.UTC)).date()
    month = mm or today.month
    year = today.year if month <= today.month else today.year - 1
    start = dt.datetime(year, month, 1)
    end = dt.datetime(year + (month == 12), month % 12 + 1, 1)
    return start, end


async def post_sale(request: web.Request) -> web.Response:
    try:
        body = await request.json()
        item_id, store_id = body["item_id"], body["store_id"]
        if type(item_id) is not int or type(store_id) is not int:
            raise ValueError
    except (ValueError, KeyError, TypeError):
        return _error(400, 'body must be {"item_id": int, "store_id": int}')
    try:
        row = await request.app[POOL].fetchrow(INSERT_SALE, item_id, store_id)
    except asyncpg.ForeignKeyViolationError:
        return _error(422, f"unknown item_id {item_id} or store_id {store_id}")
    except asyncpg.DataError:
        return _error(400, "id out of range")
    return web.json_response(
        {
            "id": row["id"],
            "sale_time": row["sale_time"].isoformat(),
            "item_id": row["item_id"],
            "store_id": row["store_id"],
        },
        status=201,
    )


async def list_items(request: web.Request) -> web.Response:
    rows = await request.app[POOL].fetch("SELECT id, name, price FROM item ORDER BY id")
    return web.json_response([dict(r) for r in rows])


async def list_stores(request: web.Request) -> web.Response:
    rows = await request.app[POOL].fetch("SELECT id, address FROM store ORDER BY id")
    return web.json_response([dict(r) for r in rows])


async def top_items(request: web.Request) -> web.Response:
    try:
        cnt = _int_param(request, "cnt", 10, 1, 1000)
        store_id = _int_param(request, "store_id", None, 1, 2**31 - 1)
        period = _period(request)
    except (ValueError, TypeError) as exc:
        return _error(400, str(exc))
    if period is None and store_id is None:
        rows = await request.app[POOL].fetch(TOP_ITEMS, cnt)
    else:
        start, end = period or (dt.datetime.min, dt.datetime.max)
        rows = await request.app[POOL].fetch(TOP_ITEMS_IN, start, end, cnt, store_id)
    return web.json_response([dict(r) for r in rows])


def _period(request: web.Request) -> tuple[dt.datetime, dt.datetime] | None:
    """from/to as [start, end) timestamps, or None."""
    first, last = request.query.get("from"), request.query.get("to")
    if first is None and last is None:
        return None
    return (
        dt.datetime.fromisoformat(first),  # ValueError / TypeError -> 400
        dt.datetime.fromisoformat(last) + dt.timedelta(days=1),
    )


async def top_stores(request: web.Request) -> web.Response:
    try:
        cnt = _int_param(request, "cnt", 10, 1, 1000)
        mm = _int_param(request, "mm", None, 1, 12)
        period = _period(request)
    except (ValueError, TypeError) as exc:
        return _error(400, str(exc))
    start, end = period or month_bounds(mm)
    rows = await request.app[POOL].fetch(TOP_STORES, start, end, cnt)
    return web.json_response([dict(r) for r in rows])


async def store_report(request: web.Request) -> web.Response:
    try:
        store_id = int(request.match_info["id"])
        cnt = _int_param(request, "cnt", 10, 1, 1000)
        start, end = _period(request) or month_bounds(None)
    except (ValueError, TypeError) as exc:
        return _error(400, str(exc))
    pool = request.app[POOL]
    store = await pool.fetchrow("SELECT id, address FROM store WHERE id = $1", store_id)
    if store is None:
        return _error(404, f"no store with id {store_id}")
    days = [
        {"day": r["day"].isoformat(), **{m: r[m] for m in MEASURES}}
        for r in await pool.fetch(STORE_DAYS, store_id, start, end)
    ]
    top = await pool.fetch(TOP_ITEMS_IN, start, end, cnt, store_id)
    return web.json_response(
        {
            "store": dict(store),
            "from": start.date().isoformat(),
            "to": (end - dt.timedelta(days=1)).date().isoformat(),
            **{m: sum(d[m] for d in days) for m in MEASURES},
            "top_items": [dict(r) for r in top],
            "days": days,
        }
    )


async def totals(request: web.Request) -> web.Response:
    try:
        start, end = _period(request) or month_bounds(None)
    except (ValueError, TypeError) as exc:
        return _error(400, str(exc))
    row = await request.app[POOL].fetchrow(TOTALS, start, end)
    return web.json_response(
        {"from": start.date().isoformat(), "to": (end - dt.timedelta(days=1)).date().isoformat(), **dict(row)}
    )


async def hours(request: web.Request) -> web.Response:
    try:
        store_id = _int_param(request, "store_id", None, 1, 2**31 - 1)
        start, end = _period(request) or month_bounds(None)
    except (ValueError, TypeError) as exc:
        return _error(400, str(exc))
    found = {(r["weekday"], r["hour"]): r for r in await request.app[POOL].fetch(HOURS, start, end, store_id)}
    cells = [
        {"weekday": w, "hour": h, **{m: found[w, h][m] if (w, h) in found else 0 for m in ("income", "units", "sales")}}
        for w in range(1, 8)
        for h in range(24)
    ]
    return web.json_response(
        {
            "from": start.date().isoformat(),
            "to": (end - dt.timedelta(days=1)).date().isoformat(),
            "store_id": store_id,
            "cells": cells,
        }
    )


async def count_sales(request: web.Request) -> web.Response:
    return web.json_response({"sales": await request.app[POOL].fetchval("SELECT count(*) FROM sales")})


async def _pool_ctx(app: web.Application):
    async def init(conn):
        await conn.execute("SET TIME ZONE 'UTC'")

    app[POOL] = await asyncpg.create_pool(app["database_url"], min_size=2, max_size=app["pool_size"], init=init)
    yield
    await app[POOL].close()


def create_app(database_url: str, pool_size: int = 10) -> web.Application:
    app = web.Application()
    app["database_url"] = database_url
    app["pool_size"] = pool_size
    app.cleanup_ctx.append(_pool_ctx)
    for path, method, handler in (
        ("/items", "GET", list_items),
        ("/stores", "GET", list_stores),
        ("/items/top", "GET", top_items),
        ("/stores/top", "GET", top_stores),
        ("/sales", "POST", post_sale),
        ("/sales/count", "GET", count_sales),
        ("/stores/{id}/report", "GET", store_report),
        ("/reports/totals", "GET", totals),
        ("/reports/hours", "GET", hours),
    ):
        app.router.add_route(method, path, handler)
        app.router.add_route(method, path + "/", handler)
    return app
