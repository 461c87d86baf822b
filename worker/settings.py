"""arq WorkerSettings: the stream consumer runs as a task beside arq's own loop.

arq hosts the process (signals, startup/shutdown hooks, health check key) and runs the
periodic housekeeping as cron jobs; the sales themselves travel through a Redis stream,
because one arq job per sale (or per small group) costs more Redis round trips than the
sale is worth (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
from typing import ClassVar

from arq import cron
from arq.connections import RedisSettings
from arq.cron import CronJob
from arq.worker import Worker
from redis.exceptions import RedisError, ResponseError

from shared import partitions
from shared.db import create_pool
from shared.queue import GROUP, every_stream
from shared.redis_client import connect_from_settings
from shared.settings import Settings
from worker import writer
from worker.consumer import StreamConsumer

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 20
STALE_CONSUMER_IDLE_MS = 3600 * 1000


async def startup(ctx: dict) -> None:
    settings: Settings = ctx.get("settings") or Settings.from_env()
    ctx["settings"] = settings
    ctx["pg_pool"] = await create_pool(
        settings.database_url,
        min_size=1,
        max_size=2,
        prepare=writer.prepare_connection,
        server_settings=writer.SESSION_SETTINGS,
    )
    ctx["stream_redis"] = connect_from_settings(settings, max_connections=8)
    keys = settings.queue_keys
    name = f"{socket.gethostname()}-{os.getpid()}"
    consumer = StreamConsumer(
        ctx["stream_redis"],
        ctx["pg_pool"],
        keys,
        name,
        batch_entries=settings.worker_batch_entries,
        reclaim_idle_ms=settings.worker_reclaim_idle_ms,
        linger_ms=settings.worker_linger_ms,
        fold_interval_ms=settings.worker_fold_interval_ms,
    )
    ctx["consumer"] = consumer
    ctx["consumer_task"] = asyncio.create_task(consumer.run(), name="stream-consumer")
    log.info("worker %s consuming its share of %d queue partitions", name, keys.partitions)


async def shutdown(ctx: dict) -> None:
    consumer: StreamConsumer = ctx["consumer"]
    consumer.stop()
    try:
        await asyncio.wait_for(ctx["consumer_task"], SHUTDOWN_GRACE_SECONDS)
    except TimeoutError:
        log.warning(
            "batch in hand not finished in %d s; it stays pending and will be redelivered", SHUTDOWN_GRACE_SECONDS
        )
    await ctx["stream_redis"].aclose()
    await ctx["pg_pool"].close()


async def forget_stopped_consumers(ctx: dict) -> None:
    """Remove consumers (stopped worker processes) that have nothing pending any more."""
    client = ctx["stream_redis"]
    for partition in every_stream(ctx["settings"].queue_keys):
        try:
            consumers = await client.xinfo_consumers(partition.stream, GROUP)
        except ResponseError:  # no such stream or group (yet, or any more)
            continue
        for consumer in consumers:
            name = consumer["name"]
            name = name.decode() if isinstance(name, bytes) else name
            if consumer["pending"] == 0 and consumer["idle"] > STALE_CONSUMER_IDLE_MS and name != ctx["consumer"].name:
                await client.xgroup_delconsumer(partition.stream, GROUP, name)


async def make_partitions_ahead(ctx: dict) -> None:
    """This month's partition of sales and the next ones exist before any sale needs them."""
    async with ctx["pg_pool"].acquire() as conn:
        await partitions.ensure_ahead(conn)


def arq_redis_settings(settings: Settings) -> RedisSettings:
    """arq's own pool (its poll, health-check key, cron) on the same Redis as the stream: with
    sentinels, arq asks them for the primary on each new connection, as our clients do."""
    direct = RedisSettings.from_dsn(settings.redis_url)
    if not settings.redis_sentinels:
        return direct
    return dataclasses.replace(
        direct, host=list(settings.redis_sentinels), sentinel=True, sentinel_master=settings.redis_sentinel_master
    )


class WorkerSettings:
    redis_settings = arq_redis_settings(Settings.from_env())
    functions: ClassVar[list] = []
    cron_jobs: ClassVar[list[CronJob]] = [
        cron(forget_stopped_consumers, minute=set(range(0, 60, 10)), second=0, run_at_startup=False),
        cron(make_partitions_ahead, minute=7, second=0, run_at_startup=True),
    ]
    on_startup = startup
    on_shutdown = shutdown
    keep_result = 0
    job_timeout = 60


class ResilientWorker(Worker):
    """arq's Worker, except that Redis going away does not end the process.

    arq's poll loop (ZRANGEBYSCORE on its job queue, health-check key, cron) lets a Redis
    ConnectionError escape `main()`: the process exited a moment after Redis stopped, and its
    `close()` then failed before `on_shutdown`, so the stream consumer (which waits for Redis
    with backoff on its own) died with it and nothing was written after Redis came back.
    Here a failed poll is logged and retried, and shutdown tolerates a missing Redis.
    """

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except (TimeoutError, RedisError, OSError) as exc:
            log.warning("arq poll failed (%s); retrying in 1 s", exc)
            await asyncio.sleep(1)

    async def close(self) -> None:
        if not self._handle_signals:
            self.handle_sig(signal.SIGUSR1)
        if not self._pool:
            return
        # handle_sig cancelled the running jobs: a job cancelled inside arq's own bookkeeping (before its
        # function runs) raises CancelledError here, and arq's close let it end the process with exit 1
        for outcome in await asyncio.gather(*self.tasks.values(), return_exceptions=True):
            if isinstance(outcome, Exception):
                log.warning("a job ended with %r at shutdown", outcome)
        with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError):
            await self.pool.delete(self.health_check_key)
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError):
            await self.pool.aclose(close_connection_pool=True)
        self._pool = None
