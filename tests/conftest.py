"""Fixtures on the real PostgreSQL and Redis.

Each test gets its own database (a copy of a migrated template) and its own Redis key
prefix, so tests never see each other's data. Nothing is mocked.

With TEST_CITUS=1 the same tests run on a throwaway Citus cluster instead (a coordinator and
two workers, tests/citus/cluster.py): a template made and migrated (so distributed) once, and
copied on every node for each test; each node's copy holds its own shards, and the
coordinator's metadata names nodes, not databases.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid

import asyncpg
import pytest
import redis as redis_sync
import redis.asyncio as redis

from api.app import create_app
from shared import seeding
from shared.db import create_pool
from shared.migrate import migrate
from shared.queue import QueueKeys
from shared.settings import Settings
from worker import writer
from worker.consumer import StreamConsumer

ADMIN_TOKEN = "test-admin-token-of-the-suite"
PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CITUS = os.environ.get("TEST_CITUS", "") == "1"


async def edit_by_hand(db, sql: str, *args) -> None:
    """A change an operator makes in psql: on Citus followed, as docs/architecture.md tells
    operators, by announce_changes() (there are no notify triggers there)."""
    async with db.transaction():
        await db.execute(sql, *args)
        if CITUS:
            await db.execute("SELECT announce_changes()")


def _db_url(name: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


async def create_database(name: str, template: str | None = None) -> str:
    """A new database (a copy of `template` when given); its URL."""
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    finally:
        await admin.close()
    return _db_url(name)


async def drop_database(name: str) -> None:
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def process_env(
    database_url: str, prefix: str, port: int, processes: int, redis_url: str = REDIS_URL
) -> dict[str, str]:
    """Environment for `python -m api` / `python -m worker` on a test's database and key prefix."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": prefix,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "API_PROCESSES": str(processes),
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "LOG_LEVEL": "WARNING",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.pop("AUTH_REQUIRED", None)
    return env


async def _migrate(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn, "UTC")
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_db():
    """A migrated database that every test's database is copied from (on Citus: the cluster)."""
    import asyncio

    if CITUS:
        from tests.citus.cluster import CitusCluster

        cluster = CitusCluster(settings=CITUS_TEST_SETTINGS)
        try:
            cluster.start()
            asyncio.run(cluster.make_template(CITUS_TEMPLATE, _migrate))
            yield cluster
        finally:
            cluster.destroy()
        return

    name = f"sales_tmpl_{os.getpid()}"

    async def create():
        await drop_database(name)
        await _migrate(await create_database(name))

    asyncio.run(create())
    yield name
    asyncio.run(drop_database(name))


# Fewer shards than Citus's 32 per table: each test makes its own distributed tables.
CITUS_TEST_SETTINGS = {"citus.shard_count": "4"}
CITUS_TEMPLATE = "sales_tmpl"


@pytest.fixture
async def database_url(template_db):
    name = f"sales_test_{uuid.uuid4().hex[:12]}"
    if CITUS:
        yield await template_db.copy_database(CITUS_TEMPLATE, name)
        await template_db.drop_database(name)
        return
    yield await create_database(name, template_db)
    await drop_database(name)


@pytest.fixture
def settings(database_url):
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    yield Settings(database_url=database_url, redis_url=REDIS_URL, admin_token=ADMIN_TOKEN, redis_key_prefix=prefix)
    # whatever the test's apps left in the shared Redis goes (apps close before this runs)
    client = redis_sync.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.unlink(*keys)
    client.close()


@pytest.fixture
def aiohttp_client(settings, aiohttp_client):
    """pytest-aiohttp's, set up after the test's database and Redis prefix, so that its apps
    close before they go, whatever order a test names its fixtures in (an app whose database
    was dropped under it once hung its close for 2 minutes)."""
    return aiohttp_client


@pytest.fixture
async def redis_client(settings):
    client = redis.Redis.from_url(settings.redis_url)
    yield client
    keys = [k async for k in client.scan_iter(match=settings.redis_key_prefix + "*", count=1000)]
    if keys:
        await client.unlink(*keys)
    await client.aclose()


@pytest.fixture
def queue_keys(settings) -> QueueKeys:
    return settings.queue_keys


@pytest.fixture
async def db(database_url):
    """A plain connection for assertions on the tables."""
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture
async def seed(db):
    """seed(items=, stores=, sales=): demo data in this test's database."""

    async def run(items=5, stores=4, sales=0, tz="UTC", now=None):
        return await seeding.seed(
            db, items=items, stores=stores, sales=sales, tz=__import__("zoneinfo").ZoneInfo(tz), now=now, seed=1
        )

    return run


@pytest.fixture
async def client(settings, redis_client, aiohttp_client):
    # aiohttp_client comes last so that the app closes before the test database is dropped
    return await aiohttp_client(create_app(settings))


@pytest.fixture
async def worker_pool(settings):
    """A pool as the worker opens it (for StreamConsumer instances a test runs itself)."""
    pool = await create_pool(settings.database_url, max_size=2, prepare=writer.prepare_connection)
    yield pool
    await pool.close()


@pytest.fixture
async def drain(settings, redis_client):
    """drain(): write everything queued so far, as the worker would, and return."""
    pool = await create_pool(settings.database_url, max_size=2, prepare=writer.prepare_connection)
    consumer = StreamConsumer(redis_client, pool, settings.queue_keys, "test-consumer")

    async def run() -> int:
        return await consumer.run_until_empty()

    yield run
    await pool.close()


def utc(*args) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)
