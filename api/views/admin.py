"""/clear/ and /create/: they destroy data, so they answer only to ADMIN_TOKEN."""
from __future__ import annotations

import hmac

import asyncpg
import msgspec
from aiohttp import web
from multidict import MultiDict
from redis.exceptions import RedisError

from api.appkeys import PG_POOL, QUEUE_KEYS, REDIS, SETTINGS
from api.errors import ServiceUnavailable
from api.responses import json_error, json_response
from api.validation import BadRequest, int_param
from shared import seeding
from shared.queue import purge

MAX_HTTP_SEED_SALES = 10_000_000


def admin_refusal(request: web.Request) -> web.Response | None:
    """None when the request carries the admin token, else the refusal to send."""
    token = request.app[SETTINGS].admin_token
    if not token:
        return json_error(403, "admin endpoints are disabled: the server has no ADMIN_TOKEN configured")
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        return json_error(401, "this endpoint needs Authorization: Bearer <ADMIN_TOKEN>",
                          headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return json_error(403, "the bearer token is not the admin token")
    return None


async def _params(request: web.Request) -> MultiDict[str]:
    """Query string, overlaid by a JSON object body on POST."""
    params = MultiDict(request.query)
    if request.method == "POST" and request.can_read_body:
        body = await request.read()
        if body.strip():
            try:
                data = msgspec.json.decode(body, type=dict[str, int])
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise BadRequest(f"body must be a JSON object of integer counts: {exc}") from exc
            for key, value in data.items():
                params[key] = str(value)
    return params


async def _purge_queue(request: web.Request) -> None:
    try:
        await purge(request.app[REDIS], request.app[QUEUE_KEYS])
    except (RedisError, OSError) as exc:
        raise ServiceUnavailable(f"tables were emptied but the queue (Redis) could not be: {exc}") from exc


async def clear(request: web.Request) -> web.Response:
    if (refusal := admin_refusal(request)) is not None:
        return refusal
    try:
        async with request.app[PG_POOL].acquire() as conn, conn.transaction():
            await seeding.clear(conn)
    except (OSError, asyncpg.PostgresConnectionError) as exc:
        raise ServiceUnavailable(f"the database is unavailable: {exc}") from exc
    await _purge_queue(request)
    return json_response({"status": "cleared", "items": 0, "stores": 0, "sales": 0})


async def create(request: web.Request) -> web.Response:
    if (refusal := admin_refusal(request)) is not None:
        return refusal
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
            result = await seeding.seed(conn, tz=request.app[SETTINGS].timezone, **counts)
    except (OSError, asyncpg.PostgresConnectionError) as exc:
        raise ServiceUnavailable(f"the database is unavailable: {exc}") from exc
    await _purge_queue(request)
    return json_response({"status": "created", **result})
