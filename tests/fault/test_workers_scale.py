"""Workers by count: three worker processes sharing the queue's partitions under load, one
SIGKILLed mid-batch and one added while the load runs, on throwaway servers with the API as a
real process.

Ends with the audit by id (every 202 stored exactly once, nothing else, rollup drift 0) and
with proof that the work was spread: who held which stream entries is sampled from the
partitions' pending lists (XPENDING) every 50 ms, so each worker's share is a count.

    python -m pytest -m slow tests/fault/test_workers_scale.py -s
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time

import asyncpg
import pytest

from shared.queue import GROUP
from tests.queue_state import consumers as queue_consumers

from .conftest import KEYS, audit, run_load, wait_queue_empty, wait_stored

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# The lease time: short enough that the killed worker's partitions are taken over well within
# the load.
RECLAIM_IDLE_MS = 5000
RATE = 200  # sales/s, each from its own client request with its own idempotency key
COUNT = 8000  # 40 s of load


def _name(raw) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


class PendingSampler:
    """Which consumer held which stream entries, from XPENDING every `every` seconds.

    An entry stays pending from its delivery until its transaction committed and it was
    acknowledged (at least the 100 ms linger under this load), so 50 ms sampling sees nearly
    all of them; an entry taken over from a dead consumer counts for both.
    """

    def __init__(self, client, every: float = 0.05):
        self.client, self.every = client, every
        self.entries: dict[str, set[str]] = collections.defaultdict(set)
        self.samples = 0
        self._stop = asyncio.Event()

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                for partition in KEYS.all_partitions:
                    pending = await self.client.xpending_range(partition.stream, GROUP, "-", "+", 10_000)
                    for row in pending:
                        self.entries[_name(row["consumer"])].add(f"{partition.index}/{_name(row['message_id'])}")
                self.samples += 1
            except Exception:  # noqa: BLE001 - no group yet; sampling must not end the test
                pass
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.every)

    def stop(self) -> None:
        self._stop.set()

    def shares(self) -> dict[str, float]:
        total = len(set().union(*self.entries.values())) or 1
        return {name: len(ids) / total for name, ids in self.entries.items()}


async def _consumer_of(client, pid: int) -> str:
    for name in await queue_consumers(client, KEYS):
        if name.endswith(f"-{pid}"):
            return name
    raise AssertionError(f"no consumer for worker pid {pid}")


async def _pending_of(client, name: str) -> int:
    return (await queue_consumers(client, KEYS)).get(name, 0)


async def _kill_mid_batch(stack_worker, name: str, redis_client, database_url: str) -> int:
    """SIGKILL the worker while its batch is inside its transaction; entries it held then.

    A lock on chain_deltas (the last thing a batch writes) holds every writer with its sales
    inserted but not committed; the victim is killed once it holds entries, then the lock goes.
    """
    blocker = await asyncpg.connect(database_url)
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("LOCK TABLE chain_deltas IN SHARE ROW EXCLUSIVE MODE")
        deadline = time.monotonic() + 20
        held = waiting = 0
        while time.monotonic() < deadline:
            waiting = await blocker.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sales-worker' "
                "AND wait_event_type = 'Lock'"
            )
            held = await _pending_of(redis_client, name)
            if waiting and held:
                break
            await asyncio.sleep(0.05)
        assert waiting and held, f"the worker never got stuck mid-batch (waiting {waiting}, held {held})"
        stack_worker.sigkill()
        await tx.rollback()
        return held
    finally:
        await blocker.close()


async def test_three_workers_one_killed_one_added_under_load(make_stack, redis_client, database_url, record):
    stack = make_stack(WORKER_RECLAIM_IDLE_MS=RECLAIM_IDLE_MS)
    await stack.start_api()
    await stack.start_worker(redis_client)
    workers = [stack.worker, await stack.add_worker(redis_client), await stack.add_worker(redis_client)]
    sampler = PendingSampler(redis_client)
    sampling = asyncio.create_task(sampler.run())
    load_task = asyncio.create_task(run_load(stack.base_url, count=COUNT, rate=RATE, prefix="scale", deadline_s=150))
    await asyncio.sleep(8)
    names = {w.name: await _consumer_of(redis_client, w.pid) for w in workers}
    victim = workers[1]
    held_at_kill = await _kill_mid_batch(victim, names[victim.name], redis_client, database_url)
    killed_at = time.monotonic()

    await asyncio.sleep(6)
    added = await stack.add_worker(redis_client)
    names[added.name] = await _consumer_of(redis_client, added.pid)

    taken_over_after = None
    while time.monotonic() - killed_at < 60:
        if await _pending_of(redis_client, names[victim.name]) == 0:
            taken_over_after = time.monotonic() - killed_at
            break
        await asyncio.sleep(0.25)

    load = await load_task
    drained = await wait_stored(database_url, load.accepted.values(), timeout=90)
    await wait_queue_empty(redis_client, timeout=60)
    sampler.stop()
    await sampling
    result = await audit(database_url, load)

    alive = [w for w in (*workers, added) if w is not victim]
    assert all(w.alive() for w in alive), [(w.name, w.proc.returncode) for w in alive]
    assert taken_over_after is not None, "the killed worker's entries were never taken over"
    assert len(load.accepted) == load.posted == COUNT, load.summary()
    assert result["stored"] == COUNT
    takers = [w.name for w in alive if "took over partitions" in w.log.read_text(errors="replace")]
    assert takers, "no live worker logged taking over the killed one's partitions"

    shares = sampler.shares()
    by_worker = {w: round(shares.get(n, 0.0), 3) for w, n in names.items()}
    entries_by_worker = {w: len(sampler.entries.get(n, ())) for w, n in names.items()}
    # The killed worker held entries before it died; each worker that ran through the load,
    # the added one included, wrote a real share of it (an even split would be 1/3 each).
    assert entries_by_worker[victim.name] >= held_at_kill > 0, entries_by_worker
    for worker in alive:
        assert by_worker[worker.name] >= 0.10, f"{worker.name} took {by_worker[worker.name]:.1%}: {by_worker}"
    record(
        **load.summary(),
        **result,
        workers=len(names),
        entries_held_at_kill=held_at_kill,
        taken_over_after_kill_s=round(taken_over_after, 1),
        taken_over_by=takers,
        entry_share_by_worker=by_worker,
        entries_by_worker=entries_by_worker,
        pending_samples=sampler.samples,
        drained_after_load_s=round(drained, 1),
    )
