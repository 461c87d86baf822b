"""The product on Citus: the schema distributed as designed, the single and batch paths end to
end, a 10,000-sale run with the worker killed once, and a worker node stopped for 20 s under
load. Each run ends with the audit by id (every 202 stored exactly once, nothing else), rollup
drift 0, and the sales spread over both worker nodes."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
import zoneinfo

import aiohttp
import asyncpg
import pytest

from api import reports
from shared import rollups, seeding
from shared.migrate import migrate, migration_files
from tests import recount
from tests.fault.conftest import ITEMS, STORES, LoadResult, audit, run_load, wait_queue_empty, wait_stored
from tests.recount import NO_DRIFT

from .conftest import sales_per_node

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


async def _spread(database_url: str, cluster) -> dict[int, int]:
    per_node = await sales_per_node(database_url)
    worker_ports = {w.port for w in cluster.workers}
    assert set(per_node) <= worker_ports, f"sales placed outside the worker nodes: {per_node}"
    assert all(per_node.get(port, 0) > 0 for port in worker_ports), f"sales not on both worker nodes: {per_node}"
    return per_node


async def _reports_equal_recount(base_url: str, database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        month = dt.datetime.now(dt.UTC).date().replace(day=1)
        expected_stores = await recount.top_stores(conn, month, 1000)
        expected_items = await recount.top_items(conn, 1000)
    finally:
        await conn.close()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base_url}/stores/top/?cnt=1000") as response:
            assert response.status == 200
            assert await response.json() == expected_stores
        async with session.get(f"{base_url}/items/top/?cnt=1000") as response:
            assert response.status == 200
            assert await response.json() == expected_items


async def _post_batches(base_url: str, result: LoadResult, *, batches: int, size: int, prefix: str) -> None:
    """Batches with an idempotency key per sale; every third batch is sent twice (a lost answer)."""
    rng = random.Random(7)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        for b in range(batches):
            keys = [f"{prefix}-{b}-{n}" for n in range(size)]
            body = [
                {
                    "item_id": rng.randint(1, ITEMS),
                    "store_id": rng.randint(1, STORES),
                    "quantity": rng.randint(1, 5),
                    "idempotency_key": key,
                }
                for key in keys
            ]
            for _ in range(2 if b % 3 == 0 else 1):
                async with session.post(base_url + "/sales/batch/", json=body) as response:
                    assert response.status == 202, await response.text()
                    answered = await response.json()
                for key, sale in zip(keys, answered):
                    result.answers[key].add(sale["id"])
                    result.accepted.setdefault(key, sale["id"])
            result.posted += size


async def test_the_schema_is_distributed_as_designed(database_url):
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT logicalrelid::regclass::text AS name, partmethod::text AS method, colocationid, "
            "CASE WHEN partmethod = 'h' THEN column_to_column_name(logicalrelid, partkey) END AS column "
            "FROM pg_dist_partition"
        )
        tables = {r["name"]: r for r in rows}
        for name in ("store", "item", "report_settings"):
            assert tables[name]["method"] == "n", name
        sales_group = tables["sales"]["colocationid"]
        for name in (
            "sales",
            "sale_keys",
            "store_monthly",
            "daily_totals",
            "store_monthly_archived",
            "daily_totals_archived",
        ):
            assert (tables[name]["method"], tables[name]["column"]) == ("h", "store_id"), name
            assert tables[name]["colocationid"] == sales_group, name
        assert (tables["item_totals"]["method"], tables["item_totals"]["column"]) == ("h", "item_id")
        for name in ("dead_letter", "api_key", "schema_migrations"):
            assert name not in tables  # ordinary tables on the coordinator
        # every monthly partition is distributed with its parent, those made later too
        await conn.execute("SELECT sales_partition('2020-02-01')")
        partitions = await conn.fetch(
            "SELECT inhrelid::regclass::text AS name FROM pg_inherits WHERE inhparent = 'sales'::regclass"
        )
        assert len(partitions) >= 4
        distributed = {
            r["name"]
            for r in await conn.fetch(
                "SELECT logicalrelid::regclass::text AS name FROM pg_dist_partition WHERE colocationid = $1",
                sales_group,
            )
        }
        assert {p["name"] for p in partitions} <= distributed
        triggers = await conn.fetchval(
            "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal AND tgrelid = ANY("
            "ARRAY['item', 'store', 'store_monthly', 'item_totals', 'daily_totals']::regclass[])"
        )
        assert triggers == 0
        # migrating again changes nothing
        assert await migrate(conn, "UTC") == []
    finally:
        await conn.close()


async def test_reports_are_computed_on_the_shards(database_url):
    """The top-N and the day sums run on every shard; the coordinator only merges a few rows
    from each (EXPLAIN shows the plan of one shard's task under Citus's scan node)."""
    conn = await asyncpg.connect(database_url)
    try:
        await seeding.seed(conn, items=20, stores=8, sales=2000, tz=zoneinfo.ZoneInfo("UTC"), seed=1)
        month = dt.date.today().replace(day=1)
        plans = {
            "top items": await _plan(conn, reports.TOP_ITEMS.replace("$1", "10")),
            "top stores": await _plan(conn, reports.TOP_STORES.replace("$1", f"'{month}'").replace("$2", "10")),
            "days": await _plan(conn, reports.DAILY.replace("$1", f"'{month}'").replace("$2", f"'{month}'::date + 27")),
        }
        for name, plan in plans.items():
            assert "Custom Scan (Citus Adaptive)" in plan, (name, plan)
            assert "Tasks Shown: One of " in plan, (name, plan)  # a task per shard
        # each shard sorts and cuts its own top rows (then one step joins the names from the
        # reference table); the day sums are partial sums per shard, added up at the coordinator
        for name in ("top items", "top stores"):
            per_shard = plans[name].split("Tasks Shown: One of ")[1]
            assert "Limit" in per_shard and "Sort Key:" in per_shard, plans[name]
        per_shard = plans["days"].split("Tasks Shown: One of ")[1]
        assert "GroupAggregate" in per_shard or "HashAggregate" in per_shard, plans["days"]
    finally:
        await conn.close()


async def _plan(conn, sql: str) -> str:
    return "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + sql))


async def test_single_and_batch_sales_end_to_end(make_stack, redis_client, database_url, citus_cluster, record):
    stack = make_stack()
    await stack.start_api()
    await stack.start_worker(redis_client)
    batches = LoadResult()
    singles, _ = await asyncio.gather(
        run_load(stack.base_url, count=1500, rate=300, prefix="single"),
        _post_batches(stack.base_url, batches, batches=60, size=50, prefix="batch"),
    )
    accepted = list(singles.accepted.values()) + list(batches.accepted.values())
    drained = await wait_stored(database_url, accepted, timeout=90)
    await wait_queue_empty(redis_client, timeout=60)
    combined = LoadResult(posted=singles.posted + batches.posted, accepted={**singles.accepted, **batches.accepted})
    for part in (singles, batches):
        for key, ids in part.answers.items():
            combined.answers[key] |= ids
    result = await audit(database_url, combined)
    assert len(combined.accepted) == combined.posted == 1500 + 60 * 50
    await _reports_equal_recount(stack.base_url, database_url)
    per_node = await _spread(database_url, citus_cluster)
    record(
        **singles.summary(),
        **result,
        batch_sales=batches.posted,
        stored_after_load_s=round(drained, 1),
        sales_per_worker_node=per_node,
    )


async def test_10000_sales_with_the_worker_killed_once(make_stack, redis_client, database_url, citus_cluster, record):
    stack = make_stack(WORKER_RECLAIM_IDLE_MS="5000")
    await stack.start_api()
    await stack.start_worker(redis_client)
    load_task = asyncio.create_task(run_load(stack.base_url, count=10_000, rate=500, prefix="kill"))
    await asyncio.sleep(8)
    stack.worker.sigkill()
    killed_at = time.monotonic()
    await asyncio.sleep(2)
    await stack.start_worker(redis_client)
    load = await load_task
    drained = await wait_stored(database_url, load.accepted.values(), timeout=120)
    await wait_queue_empty(redis_client, timeout=60)
    result = await audit(database_url, load)
    assert len(load.accepted) == load.posted == 10_000
    await _reports_equal_recount(stack.base_url, database_url)
    per_node = await _spread(database_url, citus_cluster)
    record(
        **load.summary(),
        **result,
        stored_after_kill_s=round(time.monotonic() - killed_at, 1),
        stored_after_load_s=round(drained, 1),
        sales_per_worker_node=per_node,
    )


async def test_a_worker_node_stopped_20s_under_load(make_stack, redis_client, database_url, citus_cluster, record):
    """Sales accepted while a node is away wait in Redis and land after it is back."""
    stack = make_stack()
    await stack.start_api()
    await stack.start_worker(redis_client)
    live = LoadResult()
    load_task = asyncio.create_task(
        run_load(stack.base_url, count=8000, rate=200, prefix="nodedown", deadline_s=150, result=live)
    )
    await asyncio.sleep(6)
    node = citus_cluster.workers[0]
    await asyncio.to_thread(node.stop, "fast")
    down_at = time.monotonic()
    await asyncio.sleep(20)
    await asyncio.to_thread(node.start)
    up_at = time.monotonic()
    backlog = list(live.accepted.values())
    backlog_written = await wait_stored(database_url, backlog, timeout=120)
    load = await load_task
    during = [s for t, s in load.status_times if down_at + 1 < t < up_at]
    drained = await wait_stored(database_url, load.accepted.values(), timeout=120)
    await wait_queue_empty(redis_client, timeout=60)
    result = await audit(database_url, load)
    assert len(load.accepted) == load.posted == 8000
    assert during and all(s == 202 for s in during), f"answers while a worker node was down: {set(during)}"
    await _reports_equal_recount(stack.base_url, database_url)
    per_node = await _spread(database_url, citus_cluster)
    record(
        **load.summary(),
        **result,
        accepted_while_node_down=len(during),
        backlog_at_node_return=len(backlog),
        backlog_written_after_node_back_s=round(backlog_written, 1),
        stored_after_load_s=round(drained, 1),
        sales_per_worker_node=per_node,
    )


async def test_a_database_migrated_before_citus_support_upgrades_in_place(citus_cluster):
    """Tables made by migrations 001-004 on a coordinator (local, with data) are converted,
    partitioned and distributed by the next start, the sales and their totals kept."""
    name = f"citus_upgrade_{random.randrange(10**9)}"
    url = await citus_cluster.create_database(name)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version, label, path in migration_files():
            if version < 5:
                await conn.execute(path.read_text())
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, label)
        await conn.execute("INSERT INTO item (name, price) SELECT 'item-' || g, 100 * g FROM generate_series(1, 4) g")
        await conn.execute("INSERT INTO store (address) SELECT 'store-' || g FROM generate_series(1, 6) g")
        await conn.execute(
            "INSERT INTO sales (sale_time, item_id, store_id, price, quantity, idempotency_key) "
            "SELECT now() - g * interval '3 days', 1 + g % 4, 1 + g % 6, 100 * (1 + g % 4), 1 + g % 2, "
            "CASE WHEN g % 3 = 0 THEN 'key-' || g END FROM generate_series(1, 200) g"
        )
        old_rows = [tuple(r) for r in await conn.fetch("SELECT * FROM sales ORDER BY id")]
        await conn.execute(
            "INSERT INTO store_monthly SELECT date_trunc('month', sale_time AT TIME ZONE 'UTC')::date, store_id, "
            "sum(price * quantity), sum(quantity), count(*) FROM sales GROUP BY 1, 2"
        )
        await conn.execute(
            "INSERT INTO item_totals SELECT item_id, sum(price * quantity), sum(quantity), count(*) "
            "FROM sales GROUP BY 1"
        )

        assert await migrate(conn, "UTC") == [v for v, _, _ in migration_files() if v >= 5]

        # The sales as they were, no list price (they were charged it) and no till.
        assert [tuple(r)[:-4] for r in await conn.fetch("SELECT * FROM sales ORDER BY id")] == old_rows
        assert await conn.fetchval("SELECT count(list_price) + count(till_id) + count(till_time) FROM sales") == 0
        assert await conn.fetchval("SELECT count(*) FROM sale_keys") == 66
        assert await rollups.drift(conn) == NO_DRIFT
        assert (
            await conn.fetchval("SELECT partmethod::text FROM pg_dist_partition WHERE logicalrelid = 'sales'::regclass")
            == "h"
        )
    finally:
        await conn.close()
        await citus_cluster.drop_database(name)
