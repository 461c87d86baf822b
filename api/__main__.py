"""`python -m api`: serve the API with one process per core on one port.

API_PROCESSES sets the count (default: the number of cores). Each process binds the port
with SO_REUSEPORT, so the kernel spreads connections across them. Migrations run once in
the parent before the processes start (and are safe to run concurrently anyway).
"""
from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import shutil
import sys
import tempfile

from shared.settings import Settings

log = logging.getLogger("api")


def _serve(settings: Settings, reuse_port: bool) -> None:
    import uvloop
    from aiohttp import web

    from api.app import create_app

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    access_log = logging.getLogger("aiohttp.access") if os.environ.get("ACCESS_LOG") else None
    web.run_app(create_app(settings), host=settings.host, port=settings.port, reuse_port=reuse_port,
                access_log=access_log, print=None, shutdown_timeout=30)


async def _migrate(settings: Settings) -> None:
    import asyncpg

    from shared.migrate import migrate

    conn = await asyncpg.connect(settings.database_url, timeout=30)
    try:
        await migrate(conn, settings.report_timezone)
    finally:
        await conn.close()


def main() -> None:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    settings = Settings.from_env()
    count = settings.api_processes or os.cpu_count() or 1
    if count == 1:
        log.info("serving on %s:%d (1 process)", settings.host, settings.port)
        _serve(settings, reuse_port=False)
        return

    # Metrics from every process are summed at scrape time from files in this directory.
    metrics_dir = tempfile.mkdtemp(prefix="sales-api-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    asyncio.run(_migrate(settings))
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_serve, args=(settings, True), daemon=False) for _ in range(count)]
    for worker in workers:
        worker.start()
    log.info("serving on %s:%d (%d processes)", settings.host, settings.port, count)

    def stop(signum, _frame):
        for worker in workers:
            if worker.is_alive():
                os.kill(worker.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    exit_code = 0
    try:
        # If one process dies, stop the rest: a supervisor restarts the whole service.
        multiprocessing.connection.wait([w.sentinel for w in workers])
        stop(signal.SIGTERM, None)
        for worker in workers:
            worker.join()
            exit_code = exit_code or (worker.exitcode or 0)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    sys.exit(exit_code)


if __name__ == "__main__":
    main()
