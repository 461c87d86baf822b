"""The baseline: what a user would write from the seed's README, without tricks."""
from __future__ import annotations

import datetime as dt

import asyncpg
from aiohttp import web

# The seed's schema, exactly (sale_time is a timestamp without zone, in UTC here).
SCHEMA = """
CREATE TABLE IF NOT EXISTS store (id serial PRIMARY KEY, address varchar);
CREATE TABLE IF NOT EXISTS item (id serial PRIMARY KEY, name varchar, price integer);
CREATE TABLE IF NOT EXISTS sales (
    id serial PRIMARY KEY,
    sale_time timestamp NOT NULL DEFAULT now(),
    item_id integer REFERENCES item (id),
    store_id integer REFERENCES store (id)
);
"""

INSERT_SALE = """
INSERT INTO sales (item_id, store_id) VALUES ($1, $2)
RETURNING id, sale_time, item_id, store_id
"""

TOP_ITEMS = """
SELECT i.id, i.name, count(*) AS sales_amount
FROM sales s JOIN item i ON i.id = s.item_id
GROUP BY i.id, i.name
ORDER BY sales_amount DESC, i.id
LIMIT $1
"""

TOP_STORES = """
SELECT st.id, st.address, sum(i.price) AS income
FROM sales s
JOIN item i ON i.id = s.item_id
JOIN store st ON st.id = s.store_id
WHERE s.sale_time >= $1 AND s.sale_time < $2
GROUP BY st.id, st.address
ORDER BY income DESC, st.id
LIMIT $3
"""

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
    today = (now or dt.datetime.now(dt.timezone.utc)).date()
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
        return _error(400, "body must be {\"item_id\": int, \"store_id\": int}")
    try:
        row = await request.app[POOL].fetchrow(INSERT_SALE, item_id, store_id)
    except asyncpg.ForeignKeyViolationError:
        return _error(422, f"unknown item_id {item_id} or store_id {store_id}")
    except asyncpg.DataError:
        return _error(400, "id out of range")
    return web.json_response({"id": row["id"], "sale_time": row["sale_time"].isoformat(),
                              "item_id": row["item_id"], "store_id": row["store_id"]}, status=201)


async def list_items(request: web.Request) -> web.Response:
    rows = await request.app[POOL].fetch("SELECT id, name, price FROM item ORDER BY id")
    return web.json_response([dict(r) for r in rows])


async def list_stores(request: web.Request) -> web.Response:
    rows = await request.app[POOL].fetch("SELECT id, address FROM store ORDER BY id")
    return web.json_response([dict(r) for r in rows])


async def top_items(request: web.Request) -> web.Response:
    try:
        cnt = _int_param(request, "cnt", 10, 1, 1000)
    except ValueError as exc:
        return _error(400, str(exc))
    rows = await request.app[POOL].fetch(TOP_ITEMS, cnt)
    return web.json_response([dict(r) for r in rows])


async def top_stores(request: web.Request) -> web.Response:
    try:
        cnt = _int_param(request, "cnt", 10, 1, 1000)
        mm = _int_param(request, "mm", None, 1, 12)
    except ValueError as exc:
        return _error(400, str(exc))
    start, end = month_bounds(mm)
    rows = await request.app[POOL].fetch(TOP_STORES, start, end, cnt)
    return web.json_response([dict(r) for r in rows])


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
        ("/items", "GET", list_items), ("/stores", "GET", list_stores),
        ("/items/top", "GET", top_items), ("/stores/top", "GET", top_stores),
        ("/sales", "POST", post_sale), ("/sales/count", "GET", count_sales),
    ):
        app.router.add_route(method, path, handler)
        app.router.add_route(method, path + "/", handler)
    return app
