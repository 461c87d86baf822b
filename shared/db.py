"""Opening PostgreSQL pools the same way everywhere."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import asyncpg


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
        # Never hang a request on a dead server: fail fast and let the caller answer 503.
        timeout=5,
        command_timeout=60,
        **kwargs,
    )
