"""The aiohttp application factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import asyncpg
from aiohttp import web

from api import metrics
from api.appkeys import (
    ACCESS_CONTROL,
    CATALOGUE_VIEWS,
    CHAIN_TODAY,
    INTAKE,
    PG_POOL,
    QUEUE_KEYS,
    REDIS,
    REPORT_CACHE,
    RETURNS,
    SETTINGS,
    STORES_TODAY,
)
from api.auth import AccessControl, KeyRing
from api.catalogue import Catalogue, CatalogueViews
from api.chain_today import ChainToday
from api.errors import error_response
from api.ids import IdAllocator
from api.report_cache import ReportCache
from api.returns import ReturnsIntake
from api.routes import access_rule, route_label, setup_routes
from api.sale_queue import SaleQueue
from api.sale_times import SaleTimeLimits
from api.sales import SalesIntake
from api.stores_today import StoresToday
from api.till_contacts import record_till_contacts, till_contacts_ctx
from shared.db import create_pool
from shared.migrate import migrate
from shared.redis_client import connect_from_settings
from shared.settings import Settings

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
STARTUP_WAIT_SECONDS = 30


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """What a pooled connection is reset with on release, besides asyncpg's own rollback of a
    transaction left open: nothing. The API's connections keep no session state (no SET, LISTEN,
    cursor or advisory lock outside a transaction; migrate's lock is released in its finally),
    and asyncpg's default (RESET ALL, UNLISTEN *, CLOSE ALL, advisory unlock) is a round trip of
    four statements on every release: one per report computed."""


async def _connect_postgres(settings: Settings) -> asyncpg.Pool:
    """Wait a little for PostgreSQL at start (it may be starting beside us)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STARTUP_WAIT_SECONDS
    while True:
        try:
            return await create_pool(settings.database_url, max_size=settings.db_pool_size, reset=_keep_session)
        except (OSError, asyncpg.CannotConnectNowError, asyncpg.PostgresConnectionError) as exc:
            if loop.time() > deadline:
                raise
            log.warning("PostgreSQL not ready (%s); retrying", exc)
            await asyncio.sleep(1)


async def postgres_ctx(app: web.Application):
    settings = app[SETTINGS]
    pool = await _connect_postgres(settings)
    async with pool.acquire() as conn:
        await migrate(conn, settings.report_timezone)
    app[PG_POOL] = pool
    yield
    await pool.close()


async def redis_ctx(app: web.Application):
    settings = app[SETTINGS]
    # A Redis that hangs must still get the client a 503 within a second (plus the time a
    # flush may wait for its replicas, when it must).
    replica_wait = settings.redis_replica_wait_ms / 1000 if settings.replicas_to_confirm else 0
    client = connect_from_settings(settings, socket_timeout=0.8 + replica_wait)
    app[REDIS] = client
    app[QUEUE_KEYS] = settings.queue_keys
    yield
    await client.aclose()


async def intake_ctx(app: web.Application):
    settings = app[SETTINGS]
    catalogue = Catalogue(app[PG_POOL], settings.database_url, refresh_interval=Catalogue.REFRESH_SECONDS)
    await catalogue.start()
    ids = IdAllocator(app[PG_POOL])
    ids.prefetch()
    queue = SaleQueue(
        app[REDIS],
        app[QUEUE_KEYS],
        max_depth=settings.queue_max_depth,
        idempotency_ttl=settings.idempotency_ttl_seconds,
        replicas=settings.replicas_to_confirm,
        replica_wait_ms=settings.redis_replica_wait_ms,
    )
    times = SaleTimeLimits(catalogue, settings.max_sale_age_days)
    app[INTAKE] = SalesIntake(catalogue, ids, queue, times)
    app[CATALOGUE_VIEWS] = CatalogueViews(catalogue)
    app[RETURNS] = ReturnsIntake(
        app[PG_POOL],
        app[REDIS],
        app[QUEUE_KEYS],
        ids,
        catalogue,
        max_depth=settings.queue_max_depth,
        idempotency_ttl=settings.idempotency_ttl_seconds,
        replicas=settings.replicas_to_confirm,
        replica_wait_ms=settings.redis_replica_wait_ms,
        wait_seconds=settings.return_wait_ms / 1000,
        times=times,
    )
    yield
    await queue.close()
    await ids.close()
    await catalogue.close()


async def report_cache_ctx(app: web.Application):
    cache = ReportCache(app[SETTINGS].database_url, app[SETTINGS].timezone)
    stores_today, chain_today = StoresToday(app[PG_POOL]), ChainToday(app[PG_POOL])
    cache.observe(stores_today)
    cache.observe(chain_today)
    await cache.start()
    app[REPORT_CACHE] = cache
    app[STORES_TODAY] = stores_today
    app[CHAIN_TODAY] = chain_today
    yield
    await cache.close()


async def metrics_ctx(app: web.Application):
    flusher = asyncio.create_task(metrics.flush_every_second())
    yield
    flusher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await flusher
    metrics.flush()


async def access_ctx(app: web.Application):
    settings = app[SETTINGS]
    keys = KeyRing(app[PG_POOL], settings.database_url) if settings.auth_required else None
    if keys:
        await keys.start()
    app[ACCESS_CONTROL] = AccessControl(
        keys, settings.admin_token, settings.auth_required, trusted_proxies=settings.trusted_proxies
    )
    yield
    if keys:
        await keys.close()


@web.middleware
async def edge(request: web.Request, handler) -> web.StreamResponse:
    """Every request: access rules, JSON errors, metrics, in one layer (it is the hot path)."""
    started = time.perf_counter()
    try:
        rule = access_rule(request)
        access = request.app[ACCESS_CONTROL]
        refusal = await access.check(request, rule) if rule is not None and access.applies(rule) else None
        response = refusal if refusal is not None else await handler(request)
    except Exception as exc:  # noqa: BLE001 - every failure becomes {"error": ...}
        response = error_response(request, exc)
    metrics.observe_request(request.method, route_label(request), response.status, time.perf_counter() - started)
    return response


def create_app(settings: Settings) -> web.Application:
    # record_till_contacts wraps edge: it notes a till once the access check has said who called
    app = web.Application(client_max_size=MAX_BODY, middlewares=[record_till_contacts, edge])
    app[SETTINGS] = settings
    app.cleanup_ctx.extend([metrics_ctx, postgres_ctx, redis_ctx, intake_ctx, report_cache_ctx, access_ctx])
    app.cleanup_ctx.append(till_contacts_ctx)
    setup_routes(app)
    return app
