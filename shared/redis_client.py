"""Redis clients that fail fast: a request must get a 503, never hang, when Redis is away.

With sentinels configured, a client finds the primary through them on every new connection,
so it follows a failover by itself: connections to a primary that died fail (the request in
hand gets its 503), and the next ones go to whichever server the sentinels now name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import hiredis
import redis.asyncio as redis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.asyncio.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)

if TYPE_CHECKING:
    from redis.asyncio.connection import AbstractConnection as _PackingBase

    from shared.settings import Settings
else:
    _PackingBase = object  # a mixin: at run time the connection class beside it in the bases is its super()

# A sentinel that does not answer must not hold up finding the primary at another one.
SENTINEL_TIMEOUT = 0.5


class HiredisPacking(_PackingBase):
    """redis-py's asyncio connection encodes commands in Python, argument by argument: 27% of
    the API's CPU under batch load (py-spy), where each flush carries thousands of arguments.
    hiredis (installed already, for parsing replies) encodes the same bytes in C."""

    def pack_command(self, *args):
        command = args[0]
        if isinstance(command, str) and " " in command:  # "SCRIPT LOAD" and the like, as redis-py
            args = (*command.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:  # a value hiredis does not take (bool, None...): redis-py's own error
            return super().pack_command(*args)


class HiredisPackingConnection(HiredisPacking, redis.Connection):
    pass


class SentinelHiredisConnection(HiredisPacking, SentinelManagedConnection):
    pass


class PrimaryViaSentinels(redis.Redis):
    """The primary's client; closing it closes the connections to the sentinels too."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        pool = cast(SentinelConnectionPool, self.connection_pool)  # what _primary_via_sentinels gives it
        for sentinel in pool.sentinel_manager.sentinels:
            await sentinel.aclose()


def connect_redis(
    url: str,
    *,
    sentinels: tuple[tuple[str, int], ...] = (),
    sentinel_master: str = "mymaster",
    max_connections: int = 64,
    socket_timeout: float = 2.0,
) -> redis.Redis:
    """A client of `url`, or, given sentinels, of the primary they name (the URL's DB number,
    user, password and TLS then apply to it; its host and port are not used)."""
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": 0.5,
        "max_connections": max_connections,
        "health_check_interval": 15,
    }
    if not sentinels:
        return redis.Redis.from_url(
            url,
            connection_class=HiredisPackingConnection,  # unix://, rediss:// pick their own
            **options,
        )
    return _primary_via_sentinels(url, sentinels, sentinel_master, options)


def connect_from_settings(settings: Settings, **options) -> redis.Redis:
    return connect_redis(
        settings.redis_url,
        sentinels=settings.redis_sentinels,
        sentinel_master=settings.redis_sentinel_master,
        **options,
    )


def _primary_via_sentinels(url: str, sentinels, master: str, options: dict) -> redis.Redis:
    target = parse_url(url)
    target.pop("host", None)
    target.pop("port", None)
    connection_class = target.pop("connection_class", None)
    if connection_class is UnixDomainSocketConnection:
        raise ValueError("REDIS_URL is a unix:// socket, which cannot be combined with REDIS_SENTINELS")
    if connection_class is SSLConnection:
        target["connection_class"] = SentinelManagedSSLConnection
    else:
        target["connection_class"] = SentinelHiredisConnection
    sentinel = Sentinel(
        list(sentinels),
        sentinel_kwargs={"socket_timeout": SENTINEL_TIMEOUT, "socket_connect_timeout": SENTINEL_TIMEOUT},
    )
    return sentinel.master_for(master, redis_class=PrimaryViaSentinels, **options, **target)
