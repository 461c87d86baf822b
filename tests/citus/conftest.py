"""The product on a throwaway Citus cluster (tests/citus/cluster.py): a coordinator and two
worker nodes on free local ports, a private Redis, and the API and worker as real processes.

    python -m pytest -m slow tests/citus

The cluster is built from ../shared/vendor/citus when citus.so is missing (scripts/build-citus.sh,
about 3 minutes once per machine), started once per session, and deleted at the end.
The machinery of the fault scenarios (processes, load, audit) is shared with tests/fault.
"""

from __future__ import annotations

import pathlib
import random
import zoneinfo

import asyncpg
import pytest

from shared import seeding
from shared.migrate import migrate
from tests.citus.cluster import CitusCluster
from tests.fault.conftest import ITEMS, STORES, make_stack, record, redis_client, redis_server  # noqa: F401 - fixtures


def pytest_collection_modifyitems(config, items):
    here = pathlib.Path(__file__).parent
    for item in items:
        if here in pathlib.Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def citus_cluster():
    cluster = CitusCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
async def database_url(citus_cluster):
    """A fresh database on the cluster, migrated (so distributed), with 20 items and 10 stores."""
    name = f"citus_{random.randrange(10**9)}"
    url = await citus_cluster.create_database(name)
    conn = await asyncpg.connect(url, timeout=30)
    await migrate(conn, "UTC")
    await seeding.seed(conn, items=ITEMS, stores=STORES, sales=0, tz=zoneinfo.ZoneInfo("UTC"), seed=7)
    await conn.close()
    yield url
    for worker in citus_cluster.workers:
        worker.ensure_running()
    await citus_cluster.drop_database(name)


async def sales_per_node(database_url: str) -> dict[int, int]:
    """Rows of sales held by each node (by port), counted on every shard placement."""
    conn = await asyncpg.connect(database_url, timeout=30)
    try:
        partitions = [
            r["relname"]
            for r in await conn.fetch(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'sales'::regclass"
            )
        ]
        per_node: dict[int, int] = {}
        for partition in partitions:
            for row in await conn.fetch(
                "SELECT nodeport, success, result FROM run_command_on_placements($1, 'SELECT count(*) FROM %s')",
                partition,
            ):
                assert row["success"], row["result"]
                per_node[row["nodeport"]] = per_node.get(row["nodeport"], 0) + int(row["result"])
        return per_node
    finally:
        await conn.close()
