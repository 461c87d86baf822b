"""Redis failover through Sentinel, on throwaway servers and real processes.

A primary and two replicas (AOF, appendfsync always, as in compose) watched by three
sentinels (quorum 2, down after 1 s); the API and the worker know only the sentinels. Under
load from clients that retry with their idempotency keys, the primary is SIGKILLed: while there
is no primary the API answers 503 + Retry-After with a JSON error, quickly; once Sentinel has
promoted a replica it answers 202 again, nothing restarted. The old primary then comes back and
rejoins as a replica. The audit at the end: every sale answered 202 is stored exactly once,
rollups equal a recount, and the queue (depth counter included) ends empty.

Two replicas, not one: a 202 needs one replica's confirmation (REDIS_MIN_REPLICAS_ACKED=1, the
default with Sentinel), so after losing a machine the promoted primary still needs a replica to
answer 202 (docs/guarantees.md, "Redis with replicas").
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import shutil
import signal
import subprocess
import tempfile
import time

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError, TimeoutError as RedisTimeoutError

from tests.queue_state import queued_entries
from tests.servers import free_port, tail as _tail

from .conftest import KEYS, LoadResult, RedisServer, audit, run_load, wait_queue_empty, wait_stored

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MASTER = "mymaster"
# A full resync (the old primary rejoining) starts at once instead of after the default 5 s.
REPLICATION_ARGS = ("--repl-diskless-sync-delay", "0")


async def wait_replicas(primary_port: int, count: int, timeout: float = 60) -> None:
    """Until the primary on that port has `count` replicas online."""
    deadline = time.monotonic() + timeout
    info = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            async with aioredis.Redis(port=primary_port, socket_timeout=1) as client:
                info = await client.info("replication")
            online = [
                k
                for k, v in info.items()
                if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online"
            ]
            if info.get("role") == "master" and len(online) >= count:
                return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"primary on {primary_port} has not {count} replicas online in {timeout} s: {info}")


class SentinelServer:
    """`redis-server sentinel.conf --sentinel` on a free port; it rewrites its own config file."""

    def __init__(
        self, master_port: int, *, quorum: int = 2, down_after_ms: int = 1000, failover_timeout_ms: int = 3000
    ) -> None:
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="fault-sentinel-"))
        self.port = free_port()
        self.log = self.dir / "sentinel.log"
        self.conf = self.dir / "sentinel.conf"
        self.conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\nlogfile {self.log}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {master_port} {quorum}\n"
            f"sentinel down-after-milliseconds {MASTER} {down_after_ms}\n"
            f"sentinel failover-timeout {MASTER} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {MASTER} 1\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", str(self.conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def client(self) -> aioredis.Redis:
        return aioredis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1)

    def destroy(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


class SentinelRedis:
    """A primary, its replicas and the sentinels watching them."""

    def __init__(self, *, replicas: int = 2, sentinels: int = 3) -> None:
        self.primary = RedisServer(REPLICATION_ARGS)
        self.replicas = [
            RedisServer((*REPLICATION_ARGS, "--replicaof", "127.0.0.1", str(self.primary.port)))
            for _ in range(replicas)
        ]
        self.sentinels = [SentinelServer(self.primary.port) for _ in range(sentinels)]

    @property
    def sentinels_env(self) -> str:
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    @property
    def servers(self) -> list[RedisServer]:
        return [self.primary, *self.replicas]

    async def start(self, timeout: float = 60) -> None:
        for server in self.servers:
            server.start()
        await wait_replicas(self.primary.port, len(self.replicas), timeout)
        for sentinel in self.sentinels:
            sentinel.start()
        # every sentinel knows every replica and the other sentinels before anything is broken
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = []
            for sentinel in self.sentinels:
                with contextlib.suppress(Exception):
                    async with sentinel.client() as client:
                        states.append(await client.sentinel_master(MASTER))
            if len(states) == len(self.sentinels) and all(
                s["num-slaves"] == len(self.replicas) and s["num-other-sentinels"] == len(self.sentinels) - 1
                for s in states
            ):
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"sentinels not ready in {timeout} s\n{_tail(self.sentinels[0].log)}")

    async def primary_port(self) -> int | None:
        """The primary's port as a majority of the sentinels name it."""
        ports = []
        for sentinel in self.sentinels:
            with contextlib.suppress(Exception):
                async with sentinel.client() as client:
                    address = await client.sentinel_get_master_addr_by_name(MASTER)
                    ports.append(int(address[1]))
        for port in set(ports):
            if ports.count(port) * 2 > len(self.sentinels):
                return port
        return None

    async def wait_role(self, server: RedisServer, timeout: float = 60) -> int:
        """Until `server` is a replica, in sync, of the primary the sentinels name now; returns
        that primary's port. (Now, not when the test first saw a promotion: on a loaded machine
        the sentinels may fail over once more, to the other replica, before settling.)"""
        deadline = time.monotonic() + timeout
        info, primary_port = {}, None
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                primary_port = await self.primary_port()
                async with aioredis.Redis(port=server.port, socket_timeout=1) as client:
                    info = await client.info("replication")
                if (
                    info.get("role") == "slave"
                    and info.get("master_port") == primary_port
                    and info.get("master_link_status") == "up"
                ):
                    return primary_port
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{server.port} did not become a replica of {primary_port}: {info}")

    def client(self) -> aioredis.Redis:
        """The test's own client: it follows the primary through the sentinels, and retries."""
        sentinel = Sentinel(
            [("127.0.0.1", s.port) for s in self.sentinels],
            sentinel_kwargs={"socket_timeout": 1, "socket_connect_timeout": 1},
        )
        return sentinel.master_for(
            MASTER,
            socket_timeout=5,
            socket_connect_timeout=1,
            retry=Retry(ExponentialBackoff(cap=1), 10),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )

    def destroy(self) -> None:
        for sentinel in self.sentinels:
            sentinel.destroy()
        for server in self.servers:
            server.destroy()


@pytest.fixture
async def sentinel_redis():
    servers = SentinelRedis()
    try:
        await servers.start()
        yield servers
    finally:
        servers.destroy()


def _merged(*loads: LoadResult) -> LoadResult:
    merged = LoadResult()
    for load in loads:
        merged.posted += load.posted
        merged.accepted.update(load.accepted)
        for key, ids in load.answers.items():
            merged.answers[key] |= ids
    return merged


async def test_primary_sigkill_fails_over_to_a_replica_without_restarts(
    make_stack, sentinel_redis, database_url, record
):
    ha = sentinel_redis
    # REDIS_URL names the first primary, which dies: only its DB number is used with sentinels.
    stack = make_stack(
        REDIS_URL=ha.primary.url,
        REDIS_SENTINELS=ha.sentinels_env,
        REDIS_SENTINEL_MASTER=MASTER,
        WORKER_RECLAIM_IDLE_MS=3000,
    )
    client = ha.client()
    try:
        await stack.start_api()
        await stack.start_worker(client)
        api_pid, worker_pid = stack.api.pid, stack.worker.pid

        live = LoadResult()
        load_task = asyncio.create_task(
            run_load(stack.base_url, count=4500, rate=150, prefix="failover", deadline_s=150, result=live)
        )
        await asyncio.sleep(6)
        old_primary = ha.primary.port
        ha.primary.kill()  # SIGKILL: returns once the process is gone
        killed_at = time.monotonic()

        promoted_port = promoted_after = first_202_after = None
        deadline = killed_at + 60
        while time.monotonic() < deadline and (first_202_after is None or promoted_port is None):
            if promoted_port is None:
                port = await ha.primary_port()
                if port not in (None, old_primary):
                    promoted_port, promoted_after = port, time.monotonic() - killed_at
            answered = [
                answered
                for (sent, status), (answered, _) in zip(live.status_times, live.answered_at)
                if status == 202 and sent > killed_at
            ]
            if answered:
                first_202_after = min(answered) - killed_at
            await asyncio.sleep(0.1)
        assert promoted_port is not None, f"no replica promoted in 60 s\n{_tail(ha.sentinels[0].log)}"
        assert first_202_after is not None, f"no 202 within 60 s of the kill\n{stack.logs()}"
        # every answer to a request sent after the kill and answered before the first 202
        outage = [
            (answered, status)
            for (sent, _), (answered, status) in zip(live.status_times, live.answered_at)
            if sent > killed_at and answered < killed_at + first_202_after
        ]
        load = await load_task

        # The old primary comes back with its AOF; Sentinel makes it a replica of the new one
        # (a full resync replaces whatever it held that the new primary does not).
        ha.primary.start()
        rejoin_started = time.monotonic()
        current_primary = await ha.wait_role(ha.primary)
        rejoined_after = time.monotonic() - rejoin_started
        await wait_replicas(current_primary, 2)
        after = await run_load(stack.base_url, count=1000, prefix="rejoined", deadline_s=60)
        await asyncio.sleep(3)

        both = _merged(load, after)
        await wait_stored(database_url, both.accepted.values(), timeout=90)
        await wait_queue_empty(client, timeout=60)  # the depth counter is back to 0: it did not drift
        result = await audit(database_url, both)
        stream_left = await queued_entries(client, KEYS)
        # arq's own pool (it polls every 0.5 s) failed while there was no primary, and not since
        arq_poll_failures = stack.worker.log.read_text().count("arq poll failed")
        await asyncio.sleep(3)  # a few seconds more: nothing from the old primary's AOF resurfaces
        again = await audit(database_url, both)
        arq_poll_failures_later = stack.worker.log.read_text().count("arq poll failed")
    finally:
        await client.aclose()

    outage_statuses = {status for _, status in outage}
    assert len(load.accepted) == load.posted, load.summary()
    assert len(after.accepted) == after.posted, after.summary()
    assert outage and outage_statuses <= {503}, f"answers while there was no primary: {outage_statuses}"
    for part in (load, after):
        assert part.missing_retry_after == 0
        assert part.error_bodies_without_error == 0
        assert not part.errors, f"the API itself stopped answering: {dict(part.errors)}"
        assert 500 not in part.statuses
    assert load.max_503_seconds < 1.5, load.max_503_seconds  # never a hang: 0.8 s socket + 0.5 s WAIT at most
    assert (stack.api.pid, stack.worker.pid) == (api_pid, worker_pid) and stack.api.alive() and stack.worker.alive()
    assert stream_left == 0
    assert again == result
    assert arq_poll_failures_later == arq_poll_failures, "arq's pool did not follow the failover"
    record(
        **load.summary(),
        kill_to_first_202_s=round(first_202_after, 2),
        kill_to_promotion_seen_s=round(promoted_after, 2),
        answers_during_outage=len(outage),
        old_primary_rejoined_as_replica_s=round(rejoined_after, 1),
        posted_after_rejoin=after.posted,
        accepted_after_rejoin=len(after.accepted),
        arq_poll_failures=arq_poll_failures,
        **result,
    )


async def test_replica_lost_answers_503_then_retries_get_the_same_sale(make_stack, database_url, record):
    """The WAIT rule itself, no Sentinel: a fixed primary with one replica and
    REDIS_MIN_REPLICAS_ACKED=1. The replica is SIGSTOPped (it hangs: WAIT times out) and later
    resumed. Flushes it did not confirm are answered 503 although they are queued and written;
    the clients' retries with the same keys get the same ids, so nothing is stored twice."""
    primary = RedisServer(REPLICATION_ARGS)
    replica = RedisServer((*REPLICATION_ARGS, "--replicaof", "127.0.0.1", str(primary.port)))
    client = aioredis.Redis(port=primary.port, socket_timeout=5)
    try:
        primary.start()
        replica.start()
        await wait_replicas(primary.port, 1)
        stack = make_stack(REDIS_URL=primary.url, REDIS_MIN_REPLICAS_ACKED=1, REDIS_REPLICA_WAIT_MS=300)
        await stack.start_api()
        await stack.start_worker(client)
        live = LoadResult()
        load_task = asyncio.create_task(
            run_load(stack.base_url, count=3000, rate=150, prefix="wait", deadline_s=120, result=live)
        )
        await asyncio.sleep(5)
        replica.proc.send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        await asyncio.sleep(4)
        replica.proc.send_signal(signal.SIGCONT)
        resumed_at = time.monotonic()
        load = await load_task
        await wait_stored(database_url, load.accepted.values(), timeout=90)
        await wait_queue_empty(client, timeout=60)
        result = await audit(database_url, load)
    finally:
        await client.aclose()
        for server in (replica, primary):
            if server.proc and server.proc.poll() is None:
                server.proc.send_signal(signal.SIGCONT)
            server.destroy()
    # sent and answered while the replica was stopped (a request sent then may wait behind earlier
    # flushes, each up to REDIS_REPLICA_WAIT_MS, and be confirmed after the resume: rightly a 202)
    while_stopped = [
        (sent, answered, status)
        for (sent, status), (answered, _) in zip(load.status_times, load.answered_at)
        if stopped_at + 0.5 < sent and answered < resumed_at
    ]
    assert while_stopped and {status for _, _, status in while_stopped} == {503}, [
        (round(sent - stopped_at, 3), round(answered - stopped_at, 3), status)
        for sent, answered, status in while_stopped
        if status != 503
    ]
    assert len(load.accepted) == load.posted, load.summary()
    assert load.missing_retry_after == 0 and load.error_bodies_without_error == 0 and not load.errors
    assert load.max_503_seconds < 1.5, load.max_503_seconds
    record(**load.summary(), answered_503_while_replica_stopped=len(while_stopped), **result)
