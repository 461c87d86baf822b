"""shared.db.connect: a multi-host URL is tried host by host, each with its own timeout."""

from __future__ import annotations

import asyncio
import os
import pathlib
import socket
import subprocess
import sys
import time

from shared import db

ROOT = pathlib.Path(__file__).resolve().parent.parent


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


async def test_a_refusing_first_host_leaves_the_next_the_whole_timeout(database_url):
    port = socket.create_server(("127.0.0.1", 0))
    refusing = port.getsockname()[1]
    port.close()  # nothing listens there now: refused at once
    rest = database_url.split("@", 1)[1]
    url = f"{database_url.split('@', 1)[0]}@127.0.0.1:{refusing},{rest}"
    conn = await db.connect(url, timeout=4)
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


def test_a_command_starts_through_a_silent_first_host(database_url):
    """python -m shared.reconcile (the commands, and `python -m api` migrating at start, connect
    alike): each host its own share of the timeout, so a lost primary listed first does not keep
    a restarted process from the promoted server (asyncpg alone: all 30 s on the silent host)."""
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        rest = database_url.split("@", 1)[1]
        url = f"{database_url.split('@', 1)[0]}@127.0.0.1:{silent.getsockname()[1]},{rest}"
        env = {**os.environ, "DATABASE_URL": url}
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "shared.reconcile"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "rollups match the raw sales" in done.stdout
        assert time.monotonic() - started < 25  # 15 s on the silent host, then the real one
    finally:
        silent.close()
