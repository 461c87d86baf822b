"""shared.db.connect: a multi-host URL is tried host by host, each with its own timeout."""

from __future__ import annotations

import asyncio
import socket

from shared import db


def test_one_url_per_host():
    url = "postgresql://u:p%40ss@h1:5432,[::1]:5433,h3/sales?target_session_attrs=read-write&sslmode=disable"
    assert db._one_url_per_host(url) == [
        "postgresql://u:p%40ss@h1:5432/sales?target_session_attrs=read-write&sslmode=disable",
        "postgresql://u:p%40ss@[::1]:5433/sales?target_session_attrs=read-write&sslmode=disable",
        "postgresql://u:p%40ss@h3/sales?target_session_attrs=read-write&sslmode=disable",
    ]
    for single in ("postgresql://postgres@localhost:5432/postgres", "host=a,b dbname=x"):
        assert db._one_url_per_host(single) == [single]


async def test_a_silent_first_host_leaves_time_for_the_next(database_url):
    """asyncpg alone spends the whole timeout on a first host that accepts and never answers."""
    silent = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; nobody ever answers
    try:
        rest = database_url.split("@", 1)[1]  # host:port/db...
        url = f"{database_url.split('@', 1)[0]}@127.0.0.1:{silent.getsockname()[1]},{rest}"
        conn = await asyncio.wait_for(db.connect(url, timeout=4), 10)
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
    finally:
        silent.close()
