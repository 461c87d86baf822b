"""/clear/ and /create/: they destroy data, so their access rule is ADMIN (api/routes.py):
ADMIN_TOKEN, or an admin key when AUTH_REQUIRED=true."""

from __future__ import annotations

import asyncpg
import msgspec
from aiohttp import web
from multidict import MultiDict
from redis.exceptions import RedisError

from api.appkeys import INTAKE, PG_POOL, QUEUE_KEYS, REDIS, SETTINGS
from api.errors import ServiceUnavailable
from api.responses import json_response
from api.validation import BadRequest, int_param, read_body
from shared import seeding
from shared.queue import purge

MAX_HTTP_SEED_SALES = 10_000_000


async def _params(request: web.Request) -> MultiDict[str]:
    """Query string, overlaid by a JSON object body on POST."""
    params = MultiDict(request.query)
    if request.method == "POST" and request.can_read_body:
        body = await read_body(request)
        if body.strip():
            try:
                data = msgspec.json.decode(body, type=dict[str, int])
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
                raise BadRequest(f"body must be a JSON object of integer counts: {exc}") from exc
            for key, value in data.items():
                params[key] = str(value)
    return params


async def _after_data_replaced(request: web.Request) -> None:
    """Reload this process's catalogue and drop queued sales: they refer to data now gone.

    This process must not accept a sale for a deleted item (or at a replaced price) once it
    has answered, so it does not wait for the catalogue_changed notification.
    """
    await request.app[INTAKE].catalogue.reload_after_change()
    try:
        await purge(request.app[REDIS], request.app[QUEUE_KEYS])
    except (RedisError, OSError) as exc:
        raise ServiceUnavailable(f"tables were emptied but the queue (Redis) could not be: {exc}") from exc


async def clear(request: web.Request) -> web.Response:
    try:
        async with request.app[PG_POOL].acquire() as conn, conn.transaction():
            await seeding.clear(conn)
    except (OSError, asyncpg.PostgresConnectionError) as exc:
        raise ServiceUnavailable(f"the database is unavailable: {exc}") from exc
    await _after_data_replaced(request)
    return json_response({"status": "cleared", "items": 0, "stores": 0, "sales": 0})


async def create(request: web.Request) -> web.Response:
    query = await _params(request)
    unknown = set(query) - {"items", "stores", "sales"}
    if unknown:
        raise BadRequest(f"unknown parameter(s): {', '.join(sorted(unknown))}; use items, stores, sales")
    counts = {
        "items": int_param(query, "items", 50, 1, 100_000),
        "stores": int_param(query, "stores", 50, 1, 100_000),
        "sales": int_param(query, "sales", 3600, 0, MAX_HTTP_SEED_SALES),
    }
    try:
        async with request.app[PG_POOL].acquire() as conn:
            result = await seeding.seed(
                conn,
                tz=request.app[SETTINGS].timezone,
                items=counts["items"],
                stores=counts["stores"],
                sales=counts["sales"],
            )
    except (OSError, asyncpg.PostgresConnectionError) as exc:
        raise ServiceUnavailable(f"the database is unavailable: {exc}") from exc
    await _after_data_replaced(request)
    return json_response({"status": "created", **{k: result[k] for k in ("items", "stores", "sales")}})
