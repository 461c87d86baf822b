"""`python -m api`: serve the API with one process per core on one port.

API_PROCESSES sets the count (default: the number of cores). Each process binds the port
with SO_REUSEPORT, so the kernel spreads connections across them. Migrations run once in
the parent before the processes start (and are safe to run concurrently anyway).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile

from shared import admin_token
from shared.settings import Settings

log = logging.getLogger("api")
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _exit_now(_signum, _frame) -> None:
    # Not SystemExit: raised wherever the signal lands, it was once swallowed by a __del__
    # ("Exception ignored in ..."), and the process went on to serve after being stopped.
    # Before serving there is nothing to close that the kernel does not close for us.
    logging.shutdown()
    os._exit(0)


def _serve(settings: Settings, reuse_port: bool) -> None:
    # Stopped while still starting (before run_app handles signals): exit cleanly, not by
    # the signal's default action.
    for signum in STOP_SIGNALS:
        signal.signal(signum, _exit_now)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    import uvloop
    from aiohttp import web

    from api.app import create_app

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    access_log = logging.getLogger("aiohttp.access") if os.environ.get("ACCESS_LOG") else None
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        reuse_port=reuse_port,
        access_log=access_log,
        print=None,
        shutdown_timeout=30,
    )


def _refuse_a_taken_port(host: str, port: int) -> None:
    """With SO_REUSEPORT our processes would also join any server already on the port and
    silently take a share of its connections (seen: two stacks on one port, each storing
    half of a benchmark's sales). So the port is bound once without it, as a check."""
    for family, kind, proto, _, address in socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds it
            try:
                probe.bind(address)
            except OSError as exc:
                log.error("cannot serve on %s:%d: %s (is another server on that port?)", host, port, exc.strerror)
                sys.exit(1)


async def _migrate(settings: Settings) -> None:
    from shared import db
    from shared.migrate import migrate

    conn = await db.connect(settings.database_url, timeout=30)
    try:
        await migrate(conn, settings.report_timezone)
    finally:
        await conn.close()


def _with_admin_token(settings: Settings) -> Settings:
    """ADMIN_TOKEN as given, else the one kept in ADMIN_TOKEN_FILE (generated at first start)."""
    if settings.admin_token or not settings.admin_token_file:
        return settings
    token, created = admin_token.read_or_create(settings.admin_token_file)
    if created:
        log.warning(
            "no ADMIN_TOKEN given: generated a random one into %s (kept there); print it with "
            "`python -m shared.admin_token` (in compose: docker compose exec api python -m shared.admin_token)",
            settings.admin_token_file,
        )
    return dataclasses.replace(settings, admin_token=token)


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
    )
    for signum in STOP_SIGNALS:
        signal.signal(signum, _exit_now)
    try:
        settings = _with_admin_token(Settings.from_env())
    except (ValueError, OSError) as exc:
        log.error("configuration error: %s", exc)
        sys.exit(2)
    count = settings.api_processes or os.cpu_count() or 1
    if count == 1:
        log.info("serving on %s:%d (1 process)", settings.host, settings.port)
        _serve(settings, reuse_port=False)
        return

    _refuse_a_taken_port(settings.host, settings.port)
    asyncio.run(_migrate(settings))
    # Metrics from every process are summed at scrape time from files in this directory.
    metrics_dir = tempfile.mkdtemp(prefix="sales-api-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_serve, args=(settings, True), daemon=False) for _ in range(count)]
    # A stop signal that arrives while we fork waits until `stop` below can pass it on.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    for worker in workers:
        worker.start()
    log.info("serving on %s:%d (%d processes)", settings.host, settings.port, count)

    signalled: set[int] = set()

    def stop(signum, _frame):
        # Once per process: a second SIGTERM during aiohttp's graceful shutdown aborts it
        # ("Event loop stopped before Future completed") and the process exits 1.
        for worker in workers:
            pid = worker.pid  # None only before start()
            if worker.is_alive() and pid is not None and pid not in signalled:
                signalled.add(pid)
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
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
