"""The real processes: `python -m api` (2 processes on one port) and `python -m worker`."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import pathlib
import signal
import socket
import sys
import tempfile
import time
import uuid

import aiohttp
import redis.asyncio as redis

from tests import recount
from tests.conftest import process_env

ROOT = pathlib.Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("TEST_PROCESS_REDIS_URL", "redis://127.0.0.1:6379/10")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _start(args: list[str], env: dict[str, str], log: pathlib.Path) -> asyncio.subprocess.Process:
    with open(log, "wb") as out:
        # Its own session, so that a failed test can kill the API's forked processes too.
        return await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )


async def _wait_healthy(session: aiohttp.ClientSession, base: str, procs, logs, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for proc, log in zip(procs, logs):
            assert proc.returncode is None, f"{log.name} exited early:\n{log.read_text()[-3000:]}"
        try:
            async with session.get(f"{base}/health") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        assert time.monotonic() < deadline, "the API never became healthy:\n" + logs[0].read_text()[-3000:]
        await asyncio.sleep(0.05)


async def test_api_and_worker_processes_end_to_end(seed, db, database_url):
    await seed(items=8, stores=5)
    port = _free_port()
    prefix = f"test-proc-{uuid.uuid4().hex[:12]}:"
    env = process_env(database_url, prefix, port, processes=2, redis_url=REDIS_URL)
    logdir = pathlib.Path(tempfile.mkdtemp(prefix="sales-proc-test-"))
    logs = [logdir / "api.log", logdir / "worker.log"]
    api = await _start(["-m", "api"], env, logs[0])
    worker = await _start(["-m", "worker"], env, logs[1])
    procs = [api, worker]
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            await _wait_healthy(session, base, procs, logs, timeout=15)

            async def post(i: int) -> dict:
                sale = {"item_id": i % 8 + 1, "store_id": i % 5 + 1, "quantity": i % 7 + 1}
                async with session.post(f"{base}/sales/", json=sale) as response:
                    assert response.status == 202, await response.text()
                    return await response.json()

            answers = await asyncio.gather(*(post(i) for i in range(200)))
            ids = [a["id"] for a in answers]
            assert len(set(ids)) == 200

            deadline = time.monotonic() + 5
            while await db.fetchval("SELECT count(*) FROM sales WHERE id = ANY($1::bigint[])", ids) < 200:
                assert time.monotonic() < deadline, (
                    "accepted sales did not reach PostgreSQL in time:\n" + logs[1].read_text()[-3000:]
                )
                await asyncio.sleep(0.05)
            assert await db.fetchval("SELECT count(*) FROM sales") == 200
            assert sorted(r["id"] for r in await db.fetch("SELECT id FROM sales")) == sorted(ids)
            assert await db.fetchval("SELECT sum(quantity) FROM sales") == sum(i % 7 + 1 for i in range(200))

            async with session.get(f"{base}/items/top/?cnt=1000") as response:
                assert await response.json() == await recount.top_items(db, 1000)
            async with session.get(f"{base}/stores/top/") as response:
                month = dt.datetime.now(dt.UTC).date().replace(day=1)
                assert await response.json() == await recount.top_stores(db, month)
            async with session.get(f"{base}/metrics") as response:
                text = await response.text()
                assert "http_requests_total" in text and "queue_depth_sales 0.0" in text

        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc, log in zip(procs, logs):
            code = await asyncio.wait_for(proc.wait(), 30)
            assert code == 0, f"{log.name} exited {code}:\n{log.read_text()[-3000:]}"
    finally:
        for proc in procs:
            if proc.returncode is None:
                os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        client = redis.Redis.from_url(REDIS_URL)
        keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await client.unlink(*keys)
        await client.aclose()


async def test_api_stopped_while_its_processes_start_exits_0(db, database_url):
    port = _free_port()
    prefix = f"test-proc-{uuid.uuid4().hex[:12]}:"
    env = {**process_env(database_url, prefix, port, processes=2, redis_url=REDIS_URL), "LOG_LEVEL": "INFO"}
    log = pathlib.Path(tempfile.mkdtemp(prefix="sales-proc-test-")) / "api.log"
    api = await _start(["-m", "api"], env, log)
    try:
        deadline = time.monotonic() + 15
        while "serving on" not in log.read_text():  # forked; the processes are importing and starting
            assert api.returncode is None and time.monotonic() < deadline, log.read_text()[-3000:]
            await asyncio.sleep(0.005)
        api.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(api.wait(), 30)
        assert code == 0, f"exited {code}:\n{log.read_text()[-3000:]}"
    finally:
        if api.returncode is None:
            os.killpg(api.pid, signal.SIGKILL)
            await api.wait()


async def test_api_refuses_a_port_another_server_listens_on(db, database_url, tmp_path):
    # A listener that allows SO_REUSEPORT, as a second copy of the API would be: without the
    # check our processes would share the port with it and take part of its connections.
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        env = process_env(database_url, f"test-proc-{uuid.uuid4().hex[:12]}:", port, processes=2, redis_url=REDIS_URL)
        log = tmp_path / "api.log"
        api = await _start(["-m", "api"], env, log)
        assert await asyncio.wait_for(api.wait(), 15) == 1
    assert f"cannot serve on 127.0.0.1:{port}: Address already in use" in log.read_text()
