"""The eight fault scenarios of issue 3, on throwaway servers and real processes.

Each one posts a real load from concurrent clients, breaks something, and ends with the audit:
every sale answered 2xx is in `sales` exactly once (by id), nothing else is, and every rollup
equals a recount of the raw rows. Run with `python -m pytest -m slow tests/fault`.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import aiohttp
import asyncpg
import pytest

from tests.queue_state import consumers as queue_consumers, queued_entries, queued_sales

from .conftest import (
    KEYS,
    ROOT,
    STORES,
    LoadResult,
    audit,
    audit_returns,
    metric_value,
    run_load,
    run_returns,
    wait_queue_empty,
    wait_stored,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


async def _pending_of(client, consumers: set[str]) -> int:
    """Entries pending (delivered, not acknowledged) on the given consumers."""
    return sum(count for name, count in (await queue_consumers(client, KEYS)).items() if name in consumers)


async def _consumer_of(client, pid: int) -> str:
    for name in await queue_consumers(client, KEYS):
        if name.endswith(f"-{pid}"):
            return name
    raise AssertionError(f"no consumer for worker pid {pid}")


# 1 -------------------------------------------------------------------------------------------


async def test_worker_sigkill_mid_batch_twice(make_stack, redis_client, database_url, record):
    """SIGKILL the worker twice while a batch is inside its transaction; the new worker takes
    the dead one's entries over (XAUTOCLAIM after WORKER_RECLAIM_IDLE_MS, default 15 s)."""
    stack = make_stack()
    await stack.start_api()
    await stack.start_worker(redis_client)
    live = LoadResult()
    load_task = asyncio.create_task(run_load(stack.base_url, count=4000, rate=150, prefix="kill", result=live))
    load_done = asyncio.Event()
    load_task.add_done_callback(lambda _: load_done.set())
    returns_task = asyncio.create_task(run_returns(stack.base_url, live, stop=load_done))
    killed: set[str] = set()
    lost_entries = []
    blocker = await asyncpg.connect(database_url)
    try:
        for _ in range(2):
            await asyncio.sleep(4)
            # Hold a lock the batch needs for its rollups: the worker is then caught with its
            # sales inserted but not committed, i.e. truly mid-batch, when it is killed.
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute("LOCK TABLE chain_deltas IN SHARE ROW EXCLUSIVE MODE")
            name = await _consumer_of(redis_client, stack.worker.pid)
            deadline = time.monotonic() + 20
            waiting = 0
            while time.monotonic() < deadline:
                waiting = await blocker.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sales-worker' "
                    "AND wait_event_type = 'Lock'"
                )
                if waiting and await _pending_of(redis_client, {name}):
                    break
                await asyncio.sleep(0.1)
            assert waiting, "the worker never got stuck mid-batch"
            lost_entries.append(await _pending_of(redis_client, {name}))
            stack.worker.sigkill()
            killed.add(name)
            await tx.rollback()
            await stack.start_worker(redis_client)
        restarted = time.monotonic()
        recovered = None
        while time.monotonic() - restarted < 60:
            if await _pending_of(redis_client, killed) == 0:
                recovered = time.monotonic() - restarted
                break
            await asyncio.sleep(0.25)
    finally:
        await blocker.close()
    load = await load_task
    returned = await returns_task
    assert recovered is not None and recovered <= 30, f"lost batches rewritten after {recovered} s"
    drained = await wait_stored(database_url, load.accepted.values(), timeout=90)
    await wait_queue_empty(redis_client, timeout=60)
    result = await audit(database_url, load)
    result |= await audit_returns(database_url, returned)
    assert len(load.accepted) == load.posted
    assert len(returned.accepted) == returned.posted >= load.posted // 10
    record(
        **load.summary(),
        **returned.summary(),
        **result,
        pending_entries_at_kills=lost_entries,
        lost_batch_rewritten_after_restart_s=round(recovered, 1),
        drained_after_load_s=round(drained, 1),
    )


# 2 -------------------------------------------------------------------------------------------


async def test_postgres_down_30s_under_load(make_stack, redis_client, database_url, pg_server, record):
    stack = make_stack()
    await stack.start_api()
    await stack.start_worker(redis_client)
    live = LoadResult()
    load_task = asyncio.create_task(
        run_load(stack.base_url, count=9000, rate=150, prefix="pgdown", deadline_s=150, result=live)
    )
    load_done = asyncio.Event()
    load_task.add_done_callback(lambda _: load_done.set())
    returns_task = asyncio.create_task(run_returns(stack.base_url, live, every=20, stop=load_done, deadline_s=240))
    await asyncio.sleep(12)  # the API sizes its id blocks to the recent rate
    down_at = time.monotonic()
    await asyncio.to_thread(pg_server.stop, "fast")
    health = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while time.monotonic() - down_at < 30:
            async with session.get(stack.base_url + "/health") as response:
                health.append((response.status, (await response.json())))
            await asyncio.sleep(3)
    await asyncio.to_thread(pg_server.start)
    up_at = time.monotonic()
    backlog = list(live.accepted.values())  # everything accepted while PostgreSQL was away
    caught_up_backlog = await wait_stored(database_url, backlog, timeout=120)
    load = await load_task
    during = [s for t, s in load.status_times if down_at + 1 < t < up_at]
    caught_up = await wait_stored(database_url, load.accepted.values(), timeout=120)
    returned = await returns_task
    await wait_queue_empty(redis_client, timeout=60)
    result = await audit(database_url, load)
    result |= await audit_returns(database_url, returned)
    assert len(load.accepted) == load.posted
    assert len(returned.accepted) == returned.posted >= load.posted // 20
    assert during and all(s == 202 for s in during), f"answers while PostgreSQL was down: {set(during)}"
    assert load.statuses.get(500, 0) == 0
    assert health and all(s == 503 and b["postgres"].startswith("down") and b["redis"] == "ok" for s, b in health), (
        health[:3]
    )
    record(
        **load.summary(),
        **returned.summary(),
        **result,
        accepted_while_pg_down=len(during),
        health_while_down=health[0][1].get("error"),
        backlog_at_pg_return=len(backlog),
        backlog_written_after_pg_back_s=round(caught_up_backlog, 1),
        caught_up_after_load_end_s=round(caught_up, 1),
    )


# 3 -------------------------------------------------------------------------------------------


async def test_redis_down_answers_503_fast_and_recovers(make_stack, redis_client, redis_server, database_url, record):
    stack = make_stack()
    await stack.start_api()
    await stack.start_worker(redis_client)
    before = await run_load(stack.base_url, count=1000, prefix="before")
    api_pid = stack.api.pid

    redis_server.kill()
    down = await run_load(stack.base_url, count=300, concurrency=16, retry=False, prefix="down")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        reports = {}
        for path in ("/items/", "/stores/", "/items/top/?cnt=5", "/stores/top/?cnt=5"):
            async with session.get(stack.base_url + path) as response:
                reports[path] = response.status
        async with session.get(stack.base_url + "/health") as response:
            health = (response.status, await response.json())
    await asyncio.sleep(3)  # long enough for every process to notice
    worker_survived = stack.worker.alive()
    redis_server.start()
    back_at = time.monotonic()
    accepting = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while time.monotonic() - back_at < 30:
            async with session.post(
                stack.base_url + "/sales/", json={"item_id": 1, "store_id": 1, "idempotency_key": "probe"}
            ) as response:
                if response.status == 202:
                    accepting = time.monotonic() - back_at
                    probe_id = (await response.json())["id"]
                    break
            await asyncio.sleep(0.2)
    after = await run_load(stack.base_url, count=1000, prefix="after")

    assert down.statuses == {503: 300}, down.summary()
    assert down.missing_retry_after == 0
    assert down.max_503_seconds < 1.0, down.max_503_seconds
    assert all(status == 200 for status in reports.values()), reports
    assert health[0] == 503 and health[1]["redis"].startswith("down") and health[1]["postgres"] == "ok", health
    assert accepting is not None and stack.api.pid == api_pid and stack.api.alive()
    assert worker_survived and stack.worker.alive(), "the worker exited while Redis was down"
    merged = LoadResult()
    for part in (before, after):
        merged.accepted.update(part.accepted)
        for key, ids in part.answers.items():
            merged.answers[key] |= ids
    merged.accepted["probe"] = probe_id
    merged.posted = before.posted + after.posted + 1
    await wait_stored(database_url, merged.accepted.values(), timeout=60)
    await wait_queue_empty(redis_client, timeout=60)
    result = await audit(database_url, merged)
    assert len(merged.accepted) == merged.posted
    record(
        posted=before.posted + down.posted + after.posted,
        accepted=len(merged.accepted),
        while_down=down.summary(),
        max_503_s=round(down.max_503_seconds, 3),
        reports=reports,
        same_api_accepting_after_s=round(accepting, 2),
        worker_survived=worker_survived,
        **result,
    )


# 4 -------------------------------------------------------------------------------------------


async def test_redis_restart_keeps_queued_sales(make_stack, redis_client, redis_server, database_url, record):
    stack = make_stack()
    await stack.start_api()
    load = await run_load(stack.base_url, count=3000, prefix="aof")
    assert len(load.accepted) == 3000, load.summary()
    depth_before = await queued_sales(redis_client, KEYS)
    redis_server.restart(kill=True)  # SIGKILL: only what appendfsync always put on disk survives
    depth_after = await queued_sales(redis_client, KEYS)
    entries_after = await queued_entries(redis_client, KEYS)
    started = time.monotonic()
    await stack.start_worker(redis_client)
    written = await wait_stored(database_url, load.accepted.values(), timeout=90)
    await wait_queue_empty(redis_client, timeout=60)
    result = await audit(database_url, load)
    assert depth_before == depth_after == 3000
    record(
        **load.summary(),
        **result,
        queued_before_kill=depth_before,
        queued_after_restart=depth_after,
        stream_entries=entries_after,
        written_after_worker_start_s=round(time.monotonic() - started, 1),
        wait_stored_s=round(written, 1),
    )


# 5 -------------------------------------------------------------------------------------------


async def test_unwritable_row_goes_to_dead_letter_and_replays(make_stack, redis_client, database_url, record):
    conn = await asyncpg.connect(database_url)
    doomed = await conn.fetchval("INSERT INTO item (name, price) VALUES ('doomed', 777) RETURNING id")
    stack = make_stack()
    await stack.start_api()  # no worker: sales stay queued
    load = await run_load(
        stack.base_url, count=2000, prefix="dl", item_for=lambda n: doomed if n % 100 == 0 else 1 + n % 20
    )
    assert len(load.accepted) == 2000, load.summary()
    dead_keys = {k for k, item in load.items_of.items() if item == doomed}
    await conn.execute("DELETE FROM item WHERE id = $1", doomed)  # after acceptance
    await stack.start_worker(redis_client)
    started = time.monotonic()
    await wait_stored(database_url, [load.accepted[k] for k in load.accepted if k not in dead_keys], timeout=90)
    await wait_queue_empty(redis_client, timeout=60)
    settled = time.monotonic() - started
    result = await audit(database_url, load, dead_keys=dead_keys)
    reasons = {r["reason"] for r in await conn.fetch("SELECT reason FROM dead_letter")}
    assert all("item" in reason and "foreign key" in reason for reason in reasons), reasons
    dead_total = await metric_value(stack.base_url, "worker_dead_letters_total")
    dead_pending = await metric_value(stack.base_url, "dead_letters_pending")
    assert dead_total == len(dead_keys) and dead_pending == len(dead_keys), (dead_total, dead_pending)

    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": stack.env["REDIS_URL"]}
    listed = subprocess.run(
        [sys.executable, "-m", "worker.dead_letters", "list"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    for key in dead_keys:
        assert str(load.accepted[key]) in listed.stdout
    failing = subprocess.run(
        [sys.executable, "-m", "worker.dead_letters", "replay"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert failing.returncode == 1, failing.stdout + failing.stderr  # the item is still missing
    assert await conn.fetchval("SELECT count(*) FROM dead_letter WHERE replayed_at IS NULL") == len(dead_keys)

    await conn.execute("INSERT INTO item (id, name, price) VALUES ($1, 'doomed', 777)", doomed)
    replayed = subprocess.run(
        [sys.executable, "-m", "worker.dead_letters", "replay"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert await conn.fetchval("SELECT count(*) FROM dead_letter WHERE replayed_at IS NULL") == 0
    after = await audit(database_url, load)  # now every accepted sale is stored, once
    pending_after = await metric_value(stack.base_url, "dead_letters_pending")
    assert pending_after == 0
    await conn.close()
    record(
        **load.summary(),
        dead_letters=len(dead_keys),
        stored_before_replay=result["stored"],
        stored_after_replay=after["stored"],
        settled_s=round(settled, 1),
        reasons=sorted(reasons)[:1],
        metrics={"worker_dead_letters_total": dead_total, "dead_letters_pending": dead_pending},
    )


# 6 -------------------------------------------------------------------------------------------


async def test_overload_answers_503_and_memory_stays_bounded(make_stack, redis_client, database_url, record):
    limit = 1000
    stack = make_stack(QUEUE_MAX_DEPTH=limit)
    await stack.start_api()
    rss_start = stack.api.rss_kib()
    fill = await run_load(stack.base_url, count=3000, retry=False, prefix="fill")
    rss_full = stack.api.rss_kib()
    flood = await run_load(stack.base_url, count=8000, retry=False, prefix="flood", concurrency=32)
    rss_flood = stack.api.rss_kib()
    # The limit is shared out over the partitions; the load's stores fill the ones they fall in.
    held = KEYS.max_depth_per_partition(limit) * len({KEYS.partition_of(s) for s in range(1, STORES + 1)})
    assert len(fill.accepted) == held, fill.summary()
    assert fill.statuses[503] == 3000 - held and fill.missing_retry_after == 0
    assert flood.statuses == {503: 8000} and flood.missing_retry_after == 0, flood.summary()
    assert rss_flood - rss_full < 40 * 1024, (rss_start, rss_full, rss_flood)
    started = time.monotonic()
    await stack.start_worker(redis_client)
    written = await wait_stored(database_url, fill.accepted.values(), timeout=60)
    await wait_queue_empty(redis_client, timeout=60)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            stack.base_url + "/sales/", json={"item_id": 1, "store_id": 1, "idempotency_key": "again"}
        ) as response,
    ):
        assert response.status == 202
        fill.accepted["again"] = (await response.json())["id"]
    await wait_stored(database_url, fill.accepted.values(), timeout=30)
    result = await audit(database_url, fill)
    record(
        posted=fill.posted + flood.posted,
        accepted=len(fill.accepted) - 1,
        queue_max_depth=limit,
        rejected_503=fill.statuses[503] + flood.statuses[503],
        max_503_s=round(max(fill.max_503_seconds, flood.max_503_seconds), 3),
        api_rss_mib={"start": rss_start // 1024, "full": rss_full // 1024, "after_8000_more": rss_flood // 1024},
        written_after_worker_start_s=round(time.monotonic() - started, 1),
        wait_s=round(written, 1),
        **result,
    )


# 7 -------------------------------------------------------------------------------------------


async def test_sigterm_to_api_and_worker_loses_nothing(make_stack, redis_client, database_url, record):
    stack = make_stack()
    await stack.start_api()
    await stack.start_worker(redis_client)
    load_task = asyncio.create_task(
        run_load(stack.base_url, count=5000, rate=200, prefix="term", force_close=True, deadline_s=150)
    )
    await asyncio.sleep(5)
    stopping = time.monotonic()
    api_exit = await asyncio.to_thread(stack.api.sigterm, 60)
    api_stop_s = time.monotonic() - stopping
    await stack.start_api()
    api_gap_s = time.monotonic() - stopping
    await asyncio.sleep(4)
    name = await _consumer_of(redis_client, stack.worker.pid)
    stopping = time.monotonic()
    worker_exit = await asyncio.to_thread(stack.worker.sigterm, 60)
    worker_stop_s = time.monotonic() - stopping
    left_pending = await _pending_of(redis_client, {name})
    await stack.start_worker(redis_client)
    load = await load_task
    await wait_stored(database_url, load.accepted.values(), timeout=90)
    await wait_queue_empty(redis_client, timeout=60)
    result = await audit(database_url, load)
    assert api_exit == 0 and worker_exit == 0, (api_exit, worker_exit)
    assert left_pending == 0, f"the stopped worker left {left_pending} entries unacknowledged"
    # Refused connections (nobody listening during the restart) never carried a request. A
    # connection reset (ClientOSError) can hit a request still in a closing process's accept
    # queue, which the server never read: the client retries it with the same key, and the
    # audit above proves nothing was lost or doubled. Those are counted, not forbidden.
    unanswered = {k: v for k, v in load.errors.items() if k != "ClientConnectorError"}
    assert len(load.accepted) == load.posted
    assert load.statuses.get(500, 0) == 0
    record(
        **load.summary(),
        **result,
        api_exit=api_exit,
        api_stop_s=round(api_stop_s, 1),
        api_down_s=round(api_gap_s, 1),
        worker_exit=worker_exit,
        worker_stop_s=round(worker_stop_s, 1),
        entries_left_pending_by_stopped_worker=left_pending,
        connections_reset=unanswered,
    )


# 8 -------------------------------------------------------------------------------------------


async def test_client_retries_with_same_keys_store_once(make_stack, redis_client, database_url, record):
    stack = make_stack()
    await stack.start_api()
    await stack.start_worker(redis_client)
    keys = 1500
    load = LoadResult()
    timeouts = 0

    async def attempt(session, body, timeout=None):
        nonlocal timeouts
        try:
            async with session.post(
                stack.base_url + "/sales/", json=body, timeout=aiohttp.ClientTimeout(total=timeout) if timeout else None
            ) as response:
                load.statuses[response.status] += 1
                if response.status == 202:
                    sale_id = (await response.json())["id"]
                    load.answers[body["idempotency_key"]].add(sale_id)
                    load.accepted.setdefault(body["idempotency_key"], sale_id)
        except TimeoutError:
            timeouts += 1

    semaphore = asyncio.Semaphore(24)

    async def sale(session, n):
        body = {"item_id": 1 + n % 20, "store_id": 1 + n % 10, "idempotency_key": f"retry-{n}"}
        async with semaphore:
            first = asyncio.create_task(attempt(session, body, timeout=0.004 * (1 + n % 10)))
            await asyncio.sleep(0.001)
            # the client gave up waiting and retries, twice at once, while the first is in flight
            await asyncio.gather(first, attempt(session, body), attempt(session, body))
            load.posted += 1

    connector = aiohttp.TCPConnector(limit=64, force_close=True)  # spread over both API processes
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=20)) as session:
        started = time.monotonic()
        await asyncio.gather(*(sale(session, n) for n in range(keys)))
        # and once more after they were written
        await wait_stored(database_url, load.accepted.values(), timeout=60)
        for n in range(0, keys, 10):
            body = {"item_id": 1 + n % 20, "store_id": 1 + n % 10, "idempotency_key": f"retry-{n}"}
            async with session.post(stack.base_url + "/sales/", json=body) as response:
                assert response.status == 202
                load.answers[body["idempotency_key"]].add((await response.json())["id"])
        elapsed = time.monotonic() - started
    await wait_queue_empty(redis_client, timeout=60)
    result = await audit(database_url, load)
    assert len(load.accepted) == keys
    assert result["stored"] == keys
    record(
        keys=keys,
        requests=sum(load.statuses.values()) + timeouts,
        answered_2xx=load.statuses[202],
        client_timeouts=timeouts,
        distinct_ids_answered=len({i for v in load.answers.values() for i in v}),
        seconds=round(elapsed, 1),
        **result,
    )
