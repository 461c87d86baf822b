"""Fault scenarios on throwaway servers: a private PostgreSQL, a private Redis with AOF, and the
product started as real processes (`python -m api`, `python -m worker`).

Nothing here touches the shared PostgreSQL or Redis: every server is started on a free loopback
port in a temporary directory, and stopped, killed or restarted by the tests at will.

    python -m pytest -m slow tests/fault            # all scenarios
    FAULT_RESULTS=/tmp/fault.jsonl python -m pytest -m slow tests/fault -s   # keep the numbers

Every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import os
import pathlib
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zoneinfo

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis

from shared import rollups, seeding
from shared.migrate import migrate
from shared.queue import QueueKeys
from tests.queue_state import consumers as queue_consumers, pending as queue_pending, queued_entries, queued_sales
from tests.recount import NO_DRIFT
from tests.servers import PgServer, free_port, tail as _tail

ROOT = pathlib.Path(__file__).resolve().parents[2]
KEY_PREFIX = "sales:"
KEYS = QueueKeys(KEY_PREFIX)
ITEMS = 20
STORES = 10


def pytest_collection_modifyitems(config, items):
    here = pathlib.Path(__file__).parent
    for item in items:
        if here in pathlib.Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.slow)


# ---------------------------------------------------------------------------------------------
# Throwaway PostgreSQL
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server():
    server = PgServer()
    server.start()
    yield server
    server.destroy()


async def create_seeded_database(server: PgServer, prefix: str = "fault") -> str:
    """A new database on `server`, migrated, with ITEMS items and STORES stores; its name."""
    name = f"{prefix}_{os.getpid()}_{random.randrange(10**9)}"
    admin = await asyncpg.connect(server.url(), timeout=30)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    conn = await asyncpg.connect(server.url(name), timeout=30)
    await migrate(conn, "UTC")
    await seeding.seed(conn, items=ITEMS, stores=STORES, sales=0, tz=zoneinfo.ZoneInfo("UTC"), seed=7)
    await conn.close()
    return name


@pytest.fixture
async def database_url(pg_server):
    """A fresh, migrated database on the throwaway server, with 20 items and 10 stores."""
    pg_server.ensure_running()
    name = await create_seeded_database(pg_server)
    url = pg_server.url(name)
    yield url
    if pg_server.running():
        with contextlib.suppress(Exception):
            admin = await asyncpg.connect(pg_server.url(), timeout=30)
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()


# ---------------------------------------------------------------------------------------------
# Throwaway Redis with AOF (appendfsync always)
# ---------------------------------------------------------------------------------------------


class RedisServer:
    def __init__(self, extra_args: tuple[str, ...] = ()) -> None:
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="fault-redis-"))
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = self.dir / "redis.log"
        self.extra_args = extra_args  # e.g. --replicaof 127.0.0.1 PORT

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--logfile",
                str(self.log),
                "--daemonize",
                "no",
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start\n{_tail(self.log)}")

    def kill(self) -> None:
        """SIGKILL: what survives is exactly what the AOF holds."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def restart(self, kill: bool = True) -> None:
        self.kill() if kill else self.stop()
        self.start()

    def destroy(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def redis_server():
    server = RedisServer()
    server.start()
    yield server
    server.destroy()


@pytest.fixture
async def redis_client(redis_server):
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError, TimeoutError as RedisTimeoutError

    # The test's own client survives the server restarts the tests cause.
    client = aioredis.Redis.from_url(
        redis_server.url,
        socket_timeout=5,
        socket_connect_timeout=2,
        retry=Retry(ExponentialBackoff(cap=1), 5),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    yield client
    with contextlib.suppress(Exception):
        await client.aclose()


# ---------------------------------------------------------------------------------------------
# The product's processes
# ---------------------------------------------------------------------------------------------


class Proc:
    """A product process in its own session, so that a kill reaches its children too."""

    def __init__(self, name: str, module: str, env: dict[str, str], log_dir: pathlib.Path):
        self.name, self.module, self.env = name, module, env
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def log(self) -> pathlib.Path:
        return self.log_dir / f"{self.name}.{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        with open(self.log, "wb") as handle:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module],
                cwd=ROOT,
                env=self.env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def sigkill(self) -> None:
        """SIGKILL to the process and every child it forked."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)

    def sigterm(self, timeout: float = 60) -> int | None:
        """SIGTERM to the main process only (it stops its children); the exit code, or None."""
        if not self.alive():
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def children(self) -> list[int]:
        if not self.alive():
            return []
        with contextlib.suppress(OSError):
            text = pathlib.Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
            return [int(p) for p in text.split()]
        return []

    def rss_kib(self) -> int:
        """Resident memory of the process and its children, KiB."""
        total = 0
        for pid in [self.pid, *self.children()]:
            with contextlib.suppress(OSError):
                for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total

    def cleanup(self) -> None:
        self.sigkill()


class Stack:
    """API (API_PROCESSES=2) and worker on the throwaway servers, plus test helpers."""

    def __init__(self, database_url: str, redis_server: RedisServer, log_dir: pathlib.Path, **env_extra):
        self.database_url = database_url
        self.redis_server = redis_server
        self.port = free_port()
        self.log_dir = log_dir
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "PROMETHEUS_"))}
        env.update(
            DATABASE_URL=database_url,
            REDIS_URL=redis_server.url,
            HOST="127.0.0.1",
            PORT=str(self.port),
            API_PROCESSES="2",
            ADMIN_TOKEN="fault-admin-token-0123",
            REDIS_KEY_PREFIX=KEY_PREFIX,
            LOG_LEVEL="INFO",
            PYTHONUNBUFFERED="1",
        )
        env.update({k: str(v) for k, v in env_extra.items()})
        self.env = env
        self.api = Proc("api", "api", env, log_dir)
        self.worker = Proc("worker", "worker", env, log_dir)
        self.extra_workers: list[Proc] = []  # add_worker(): more worker processes on the same stream

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start_api(self, timeout: float = 90) -> None:
        self.api.start()
        await self.wait_api(timeout)

    async def wait_api(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
            while time.monotonic() < deadline:
                if not self.api.alive():
                    raise RuntimeError(f"API exited with {self.api.proc.returncode}\n{_tail(self.api.log)}")
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, OSError):
                    async with session.get(self.base_url + "/openapi.json") as response:
                        # 401: answering too, with AUTH_REQUIRED=true (it wants an owner key)
                        if response.status in (200, 401) and len(self.api.children()) >= 2:
                            await asyncio.sleep(0.3)  # let both processes bind
                            return
                await asyncio.sleep(0.2)
        raise RuntimeError(f"API not ready in {timeout} s\n{_tail(self.api.log)}")

    async def start_worker(self, redis_client: aioredis.Redis | None = None, timeout: float = 60) -> None:
        """Start the worker; with a client, wait until its consumer has joined the group."""
        self.worker.start()
        if redis_client is not None:
            await self.wait_consuming(self.worker, redis_client, timeout)

    async def add_worker(self, redis_client: aioredis.Redis | None = None, timeout: float = 60) -> Proc:
        """Start one more worker process (killed at cleanup like the others)."""
        worker = Proc(f"worker{len(self.extra_workers) + 2}", "worker", self.env, self.log_dir)
        self.extra_workers.append(worker)
        worker.start()
        if redis_client is not None:
            await self.wait_consuming(worker, redis_client, timeout)
        return worker

    async def wait_consuming(self, worker: Proc, redis_client: aioredis.Redis, timeout: float = 60) -> None:
        """Until the worker's consumer has joined the group (raises if it exits or never does)."""
        name_suffix = f"-{worker.pid}"
        last_error = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not worker.alive():
                raise RuntimeError(f"worker exited\n{_tail(worker.log)}")
            try:
                if any(name.endswith(name_suffix) for name in await queue_consumers(redis_client, KEYS)):
                    return
                # Redis 7.0 lists a consumer only once it has been delivered something: on an
                # empty stream, the group plus the worker's own "consuming" line will do.
                if await queued_entries(redis_client, KEYS) == 0 and "consuming" in _tail(worker.log):
                    await asyncio.sleep(0.5)
                    return
            except Exception as exc:  # noqa: BLE001 - no stream or group yet
                last_error = exc
            await asyncio.sleep(0.2)
        keys = await redis_client.keys("*")
        raise RuntimeError(
            f"worker not consuming in {timeout} s ({last_error!r}, keys {keys}, "
            f"{self.redis_server.url})\n{_tail(worker.log)}"
        )

    def cleanup(self) -> None:
        self.api.cleanup()
        self.worker.cleanup()
        for worker in self.extra_workers:
            worker.cleanup()

    def logs(self) -> str:
        parts = []
        for path in sorted(self.log_dir.glob("*.log")):
            parts.append(f"--- {path.name}\n{_tail(path, 30)}")
        return "\n".join(parts)


@pytest.fixture
def make_stack(database_url, redis_server, request):
    """make_stack(**env) -> Stack; processes are SIGKILLed at the end whatever happened."""
    stacks: list[Stack] = []
    log_dir = pathlib.Path(tempfile.mkdtemp(prefix=f"fault-logs-{request.node.name[:40]}-"))

    def make(**env) -> Stack:
        stack = Stack(database_url, redis_server, log_dir, **env)
        stacks.append(stack)
        return stack

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for stack in stacks:
        if failed:
            print(f"\n===== logs of {request.node.name} ({log_dir})\n{stack.logs()}")
        stack.cleanup()
    if not failed:
        shutil.rmtree(log_dir, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)


# ---------------------------------------------------------------------------------------------
# Load generator
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class LoadResult:
    posted: int = 0  # distinct sales (idempotency keys) tried
    attempts: int = 0  # HTTP requests sent, retries included
    accepted: dict[str, int] = dataclasses.field(default_factory=dict)  # key -> id answered 2xx
    answers: dict[str, set[int]] = dataclasses.field(default_factory=lambda: collections.defaultdict(set))
    final: dict[str, object] = dataclasses.field(default_factory=dict)  # key -> last status / error
    statuses: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    errors: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    status_times: list[tuple[float, int]] = dataclasses.field(default_factory=list)  # (monotonic, status)
    answered_at: list[tuple[float, int]] = dataclasses.field(default_factory=list)  # (monotonic at answer, status)
    error_bodies_without_error: int = 0  # 4xx/5xx answers that were not {"error": ...}
    max_503_seconds: float = 0.0
    missing_retry_after: int = 0
    items_of: dict[str, int] = dataclasses.field(default_factory=dict)
    elapsed: float = 0.0

    @property
    def unknown(self) -> set[str]:
        """Sales whose every attempt ended without an answer (may or may not be stored)."""
        return {k for k, v in self.final.items() if isinstance(v, str)}

    def summary(self) -> dict:
        return {
            "posted": self.posted,
            "attempts": self.attempts,
            "accepted": len(self.accepted),
            "statuses": dict(sorted(self.statuses.items())),
            "errors": dict(self.errors),
            "unknown": len(self.unknown),
            "max_503_s": round(self.max_503_seconds, 3),
            "seconds": round(self.elapsed, 1),
        }


async def run_load(
    base_url: str,
    *,
    count: int,
    concurrency: int = 24,
    prefix: str = "s",
    rate: float | None = None,
    retry: bool = True,
    deadline_s: float = 180,
    request_timeout: float = 10,
    force_close: bool = False,
    item_for=None,
    result: LoadResult | None = None,
    stop: asyncio.Event | None = None,
) -> LoadResult:
    """Post `count` sales from `concurrency` clients, each with its own idempotency key.

    With `retry`, a sale that got no answer, a 5xx or a 503 is posted again with the same key
    (after Retry-After, capped at 0.5 s) until it gets a 2xx or the deadline passes; without,
    the first answer is final. `rate` paces new sales (sales per second overall).
    """
    result = result or LoadResult()
    rng = random.Random(hash(prefix) & 0xFFFF)
    item_for = item_for or (lambda n: rng.randint(1, ITEMS))
    started = time.monotonic()
    deadline = started + deadline_s
    next_index = iter(range(count))
    pace = {"next": started}

    async def one(session: aiohttp.ClientSession, n: int) -> None:
        key = f"{prefix}-{n}"
        item = item_for(n)
        result.items_of[key] = item
        body = {"item_id": item, "store_id": 1 + n % STORES, "quantity": 1 + n % 3, "idempotency_key": key}
        result.posted += 1
        attempt = 0
        while time.monotonic() < deadline and attempt < 400:
            attempt += 1
            result.attempts += 1
            sent = time.monotonic()
            try:
                async with session.post(base_url + "/sales/", json=body) as response:
                    status = response.status
                    payload = await response.json(content_type=None)
                    retry_after = response.headers.get("Retry-After")
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                result.errors[type(exc).__name__] += 1
                result.final[key] = type(exc).__name__
                if not retry:
                    return
                await asyncio.sleep(0.1 + rng.random() * 0.2)
                continue
            took = time.monotonic() - sent
            result.statuses[status] += 1
            result.status_times.append((sent, status))
            result.answered_at.append((sent + took, status))
            if status >= 400 and not (isinstance(payload, dict) and isinstance(payload.get("error"), str)):
                result.error_bodies_without_error += 1
            result.final[key] = status
            if 200 <= status < 300:
                result.answers[key].add(payload["id"])
                result.accepted.setdefault(key, payload["id"])
                return
            if status == 503:
                result.max_503_seconds = max(result.max_503_seconds, took)
                if retry_after is None:
                    result.missing_retry_after += 1
            if not retry or status < 500:
                return
            wait = float(retry_after) if retry_after and retry_after.isdigit() else 0.2
            await asyncio.sleep(min(wait, 0.5) * (0.5 + rng.random()))

    async def client(session: aiohttp.ClientSession) -> None:
        for n in next_index:
            if stop is not None and stop.is_set():
                return
            if time.monotonic() >= deadline:
                return
            if rate:
                pace["next"] = max(pace["next"] + 1 / rate, time.monotonic() - 1)
                delay = pace["next"] - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await one(session, n)

    connector = aiohttp.TCPConnector(limit=concurrency, force_close=force_close)
    timeout = aiohttp.ClientTimeout(total=request_timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    result.elapsed = time.monotonic() - started
    return result


@dataclasses.dataclass
class ReturnsResult:
    posted: int = 0
    accepted: dict[str, int] = dataclasses.field(default_factory=dict)  # key -> return id answered 202
    sale_of: dict[str, int] = dataclasses.field(default_factory=dict)  # key -> sale id
    statuses: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    errors: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def summary(self) -> dict:
        return {
            "returns_posted": self.posted,
            "returns_accepted": len(self.accepted),
            "return_statuses": dict(sorted(self.statuses.items())),
            "return_errors": dict(self.errors),
        }


async def run_returns(
    base_url: str,
    sales: LoadResult,
    *,
    every: int = 10,
    prefix: str = "r",
    deadline_s: float = 180,
    stop: asyncio.Event | None = None,
) -> ReturnsResult:
    """Return one unit of every `every`-th sale accepted so far (and of those accepted while it
    runs), each with its own idempotency key, retrying 409 (sale still queued), 5xx and lost
    answers with the same key, as a till would, until `stop` is set and all are answered."""
    result = ReturnsResult()
    started = time.monotonic()
    done: set[str] = set()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

        async def one(sale_key: str, sale_id: int) -> None:
            key = f"{prefix}-{sale_key}"
            result.sale_of[key] = sale_id
            result.posted += 1
            while time.monotonic() - started < deadline_s:
                try:
                    async with session.post(
                        f"{base_url}/sales/{sale_id}/returns/", json={"quantity": 1, "idempotency_key": key}
                    ) as response:
                        status = response.status
                        payload = await response.json(content_type=None)
                        retry_after = response.headers.get("Retry-After")
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    result.errors[type(exc).__name__] += 1
                    await asyncio.sleep(0.2)
                    continue
                result.statuses[status] += 1
                if status == 202:
                    result.accepted[key] = payload["id"]
                    return
                assert status in (409, 503), (status, payload)
                await asyncio.sleep(min(float(retry_after or 0.5), 1.0))

        tasks = []
        while time.monotonic() - started < deadline_s:
            for n, (sale_key, sale_id) in enumerate(list(sales.accepted.items())):
                if n % every == 0 and sale_key not in done:
                    done.add(sale_key)
                    tasks.append(asyncio.create_task(one(sale_key, sale_id)))
            if stop is not None and stop.is_set():
                break
            await asyncio.sleep(0.5)
        await asyncio.gather(*tasks)
    return result


async def audit_returns(database_url: str, result: ReturnsResult) -> dict:
    """Every return answered 202 is stored once, by id; nothing else is; no sale returned past
    what was sold; what was returned of each sale adds up."""
    conn = await asyncpg.connect(database_url, timeout=30)
    try:
        rows = await conn.fetch("SELECT id, sale_id, idempotency_key FROM returns")
        over = await conn.fetchval("SELECT count(*) FROM sale_returned WHERE returned > sold")
        mismatched = await conn.fetchval(
            "SELECT count(*) FROM sale_returned t FULL JOIN (SELECT sale_id, sum(quantity) AS q FROM returns "
            "GROUP BY 1) r USING (sale_id) WHERE t.returned IS DISTINCT FROM r.q"
        )
    finally:
        await conn.close()
    stored = {r["id"]: (r["sale_id"], r["idempotency_key"]) for r in rows}
    assert len(stored) == len(rows), "a return id stored twice"
    expected = {return_id: (result.sale_of[key], key) for key, return_id in result.accepted.items()}
    assert stored == expected, (
        f"returns stored {len(stored)}, answered 202 {len(expected)}; missing "
        f"{sorted(set(expected) - set(stored))[:5]}, "
        f"extra {sorted(set(stored) - set(expected))[:5]}"
    )
    assert over == 0 and mismatched == 0, (over, mismatched)
    return {"returns_stored": len(stored)}


# ---------------------------------------------------------------------------------------------
# Waiting and the audit
# ---------------------------------------------------------------------------------------------


async def wait_stored(database_url: str, ids, timeout: float = 120) -> float:
    """Seconds until every id is in `sales` (raises AssertionError after `timeout`)."""
    wanted = sorted(set(ids))
    started = time.monotonic()
    deadline = started + timeout
    stored = 0
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError):
            conn = await asyncpg.connect(database_url, timeout=5)
            try:
                stored = await conn.fetchval("SELECT count(*) FROM sales WHERE id = ANY($1::bigint[])", wanted)
            finally:
                await conn.close()
            if stored == len(wanted):
                return time.monotonic() - started
        await asyncio.sleep(0.25)
    raise AssertionError(f"only {stored} of {len(wanted)} accepted sales stored after {timeout} s")


async def wait_queue_empty(client: aioredis.Redis, timeout: float = 120) -> float:
    """Seconds until the queue depth is 0 and nothing is pending in the consumer group."""
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if await queued_sales(client, KEYS) == 0 and await queue_pending(client, KEYS) == 0:
                return time.monotonic() - started
        await asyncio.sleep(0.25)
    raise AssertionError(f"queue not empty after {timeout} s")


async def audit(database_url: str, load: LoadResult, *, dead_keys: set[str] = frozenset()) -> dict:
    """Every sale answered 2xx is in `sales` exactly once, by id; nothing else is; rollups exact.

    `dead_keys`: sales expected in dead_letter instead of sales.
    """
    conn = await asyncpg.connect(database_url, timeout=30)
    try:
        rows = await conn.fetch("SELECT id, idempotency_key FROM sales")
        drift = await rollups.drift(conn)
        dead_rows = await conn.fetch("SELECT sale_id, reason FROM dead_letter WHERE replayed_at IS NULL")
    finally:
        await conn.close()
    ids = [r["id"] for r in rows]
    by_key = collections.Counter(r["idempotency_key"] for r in rows)
    assert len(ids) == len(set(ids)), "a sale id stored twice"
    assert not [k for k, n in by_key.items() if n > 1], "an idempotency key stored twice"
    conflicting = {k: v for k, v in load.answers.items() if len(v) > 1}
    assert not conflicting, f"the same key answered with different ids: {list(conflicting.items())[:5]}"

    expected = {sale_id for key, sale_id in load.accepted.items() if key not in dead_keys}
    stored = set(ids)
    missing = expected - stored
    assert not missing, f"{len(missing)} sales answered 2xx are not stored: {sorted(missing)[:10]}"
    key_of = {r["id"]: r["idempotency_key"] for r in rows}
    extra = stored - expected
    assert not extra, (
        f"{len(extra)} rows in sales were never answered 2xx: {[(i, key_of[i]) for i in sorted(extra)[:10]]}"
    )
    for key, sale_id in load.accepted.items():
        if key not in dead_keys:
            assert key_of[sale_id] == key
    assert drift == NO_DRIFT, f"rollups drift from raw sales: {drift}"
    dead_ids = {r["sale_id"] for r in dead_rows}
    expected_dead = {load.accepted[k] for k in dead_keys if k in load.accepted}
    assert dead_ids == expected_dead, f"dead letters {sorted(dead_ids)[:10]} != expected {sorted(expected_dead)[:10]}"
    return {"stored": len(stored), "drift": drift, "dead_letters": len(dead_ids)}


@pytest.fixture
def record(request):
    """record(**numbers): print the scenario's measurements, and append them to $FAULT_RESULTS."""

    def write(**numbers) -> None:
        line = json.dumps({"scenario": request.node.name, **numbers}, default=str)
        print(f"\nFAULT-RESULT {line}")
        path = os.environ.get("FAULT_RESULTS")
        if path:
            with open(path, "a") as handle:
                handle.write(line + "\n")

    return write


async def metric_value(base_url: str, name: str) -> float | None:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.get(base_url + "/metrics") as response,
    ):
        text = await response.text()
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    return None
