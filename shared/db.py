"""Opening PostgreSQL pools the same way everywhere."""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Awaitable, Callable

import asyncpg

# Errors after which the next host of a multi-host URL is tried (as asyncpg does, plus its
# timeout and a host that is up but not what target_session_attrs asks for, e.g. a standby).
_NEXT_HOST = (OSError, TimeoutError, asyncpg.CannotConnectNowError, asyncpg.TargetServerAttributeNotMatched)


def _one_url_per_host(dsn: str) -> list[str]:
    """A URL naming several hosts (`postgresql://u@h1:p1,h2:p2/db?...`) as one URL per host,
    in order; anything else as it is. Only the host list is cut: the rest is asyncpg's to read."""
    parts = urllib.parse.urlsplit(dsn)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if parts.scheme not in ("postgres", "postgresql") or "," not in hosts:
        return [dsn]
    return [urllib.parse.urlunsplit(parts._replace(netloc=userinfo + at + host)) for host in hosts.split(",")]


async def connect(dsn: str, *, timeout: float = 60, **kwargs) -> asyncpg.Connection:  # noqa: ASYNC109 - asyncpg.connect's
    """asyncpg.connect, except that each host of a multi-host URL gets its own share of `timeout`.

    asyncpg spends one timeout on the whole list (MagicStack/asyncpg#1155): a first host that
    hangs instead of refusing (a machine gone dark, a partition) uses it all up, and the promoted
    standby listed after it is never tried, so nothing followed a failover. Here the hosts are
    tried in turn, each for its share of the time left (libpq's connect_timeout is per host
    too): a first host that refuses at once leaves the next one the whole timeout."""
    urls = _one_url_per_host(dsn)
    if len(urls) == 1:
        return await asyncpg.connect(dsn, timeout=timeout, **kwargs)
    errors: list[Exception] = []
    deadline = time.monotonic() + timeout
    for left, url in zip(range(len(urls), 0, -1), urls):
        try:
            return await asyncpg.connect(url, timeout=max(deadline - time.monotonic(), 0.1) / left, **kwargs)
        except _NEXT_HOST as exc:
            errors.append(exc)
    # as asyncpg: a host that could not be reached says more than one that was not read-write
    raise next((exc for exc in errors if isinstance(exc, OSError | TimeoutError)), errors[-1])


async def set_codecs(conn: asyncpg.Connection) -> None:
    """jsonb in and out as Python objects."""
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(
    database_url: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    prepare: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
    **kwargs,
) -> asyncpg.Pool:
    """A pool whose connections decode jsonb, then run `prepare` (once per connection)."""

    async def init(conn: asyncpg.Connection) -> None:
        await set_codecs(conn)
        if prepare is not None:
            await prepare(conn)

    return await asyncpg.create_pool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        init=init,
        connect=connect,
        # Never hang a request on a dead server: fail fast and let the caller answer 503.
        timeout=5,
        command_timeout=60,
        **kwargs,
    )
