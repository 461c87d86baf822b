"""/health, /metrics and /openapi.json: for operators and tools."""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from api import metrics, till_metrics
from api.appkeys import PG_POOL, QUEUE_KEYS, REDIS
from api.openapi import spec
from api.responses import json_response
from shared.queue import depth_and_oldest, entry_age_ms

CHECK_TIMEOUT = 1.0


async def _check(coro) -> str:
    try:
        await asyncio.wait_for(coro, CHECK_TIMEOUT)
        return "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means "down"; say which
        return f"down: {type(exc).__name__}: {exc}".strip().rstrip(":")


async def _pg_ping(pool):
    async with pool.acquire(timeout=CHECK_TIMEOUT) as conn:
        await conn.fetchval("SELECT 1")


async def health(request: web.Request) -> web.Response:
    postgres, redis_state = await asyncio.gather(
        _check(_pg_ping(request.app[PG_POOL])), _check(request.app[REDIS].ping())
    )
    body: dict[str, str | int] = {"status": "ok", "postgres": postgres, "redis": redis_state}
    if redis_state == "ok":
        depth, _ = await depth_and_oldest(request.app[REDIS], request.app[QUEUE_KEYS])
        body["queue_depth"] = depth
    if postgres != "ok" or redis_state != "ok":
        down = [name for name, state in (("postgres", postgres), ("redis", redis_state)) if state != "ok"]
        body.update(status="unavailable", error=f"{' and '.join(down)} not answering")
        return json_response(body, status=503)
    return json_response(body)


async def _queue_snapshot(request: web.Request):
    redis, keys = request.app[REDIS], request.app[QUEUE_KEYS]
    # redis-py types the asyncio client's HGETALL as its sync one's too: Awaitable[dict] | dict
    raw_stats = await redis.hgetall(keys.worker_stats)  # type: ignore[misc]
    depth, oldest = await depth_and_oldest(redis, keys)
    stats = {k.decode(): int(v) for k, v in raw_stats.items()}
    age = entry_age_ms(oldest, metrics.now_ms()) / 1000 if oldest else None
    return stats, depth, age


async def _dead_letters_pending(request: web.Request) -> int:
    async with request.app[PG_POOL].acquire(timeout=CHECK_TIMEOUT) as conn:
        return await conn.fetchval("SELECT count(*) FROM dead_letter WHERE replayed_at IS NULL")


async def metrics_view(request: web.Request) -> web.Response:
    store_silence = asyncio.ensure_future(till_metrics.exposition_within(request.app, CHECK_TIMEOUT))
    try:
        stats, depth, age = await asyncio.wait_for(_queue_snapshot(request), CHECK_TIMEOUT)
    except Exception:  # noqa: BLE001 - the scrape answers without the queue's numbers rather than fail
        stats, depth, age = {}, 0, None
    try:
        dead = await asyncio.wait_for(_dead_letters_pending(request), CHECK_TIMEOUT)
    except Exception:  # noqa: BLE001 - ... and without the dead letters' count
        dead = None
    metrics.flush()
    body = metrics.render(stats, depth, age, dead) + await store_silence
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return json_response(spec())
