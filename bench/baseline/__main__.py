"""`python -m bench.baseline`: the baseline on $PORT (default 8090), $BASELINE_PROCESSES (2) processes.

DATABASE_URL selects the database; the seed's schema is created there if missing.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import sys

import asyncpg
from aiohttp import web

from bench.baseline.app import create_app, create_schema


def _serve(database_url: str, host: str, port: int, pool_size: int) -> None:
    web.run_app(create_app(database_url, pool_size), host=host, port=port, reuse_port=True, access_log=None, print=None)


async def _prepare(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await create_schema(conn)
    finally:
        await conn.close()


def main() -> None:
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(__doc__)
        return
    database_url = os.environ.get("DATABASE_URL", "postgresql://postgres@localhost:5432/postgres")
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8090"))
    count = int(os.environ.get("BASELINE_PROCESSES", "2"))
    pool_size = int(os.environ.get("DB_POOL_SIZE", "10"))
    asyncio.run(_prepare(database_url))
    context = multiprocessing.get_context("fork")
    procs = [context.Process(target=_serve, args=(database_url, host, port, pool_size)) for _ in range(count)]
    for proc in procs:
        proc.start()

    def stop(_signum, _frame):
        for proc in procs:
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"baseline serving on {host}:{port} ({count} processes)", flush=True)
    for proc in procs:
        proc.join()


if __name__ == "__main__":
    main()
