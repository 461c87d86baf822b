"""Workers by count: the queue's drain rate with 1, 2 and 4 worker processes, and the lock waits
they cause one another in PostgreSQL.

    python -m bench.workers --sales 300000 --workers 1,2,4

The same sales are queued before every configuration (msgpack stream entries of
--sales-per-entry sales of one queue partition, as the API's group commit writes them, with
idempotency keys, sale times in the hour before the run, random items and stores of the
catalogue), into an emptied database. First k `python -m worker` processes start on the empty
queue and share its partitions out (worker.leases; until each holds its fair share). Then the
sales are queued while a lock on `item` (what a batch takes first, FOR KEY SHARE) holds the
workers; once each has a batch in hand and waits on that lock, the lock goes and the clock
starts. Drain = until the queue-depth counter is 0 (every entry
acknowledged after its commit). Meanwhile pg_stat_activity is sampled every --sample-ms for the
workers' backends: the share of samples in which at least one of them waited on a heavyweight
lock, by wait event (transactionid: waiting for another transaction's row; tuple: queued
behind another waiter for a row) and by the table its statement writes, so that a rollup row
serialising the writers shows up as a number. Each configuration ends with the stored count
and the rollups' drift checked.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import os
import random
import re
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import redis.asyncio as aioredis

from bench import common
from bench.common import log
from shared import rollups
from shared.queue import QueuedSale, QueueKeys, depth_and_oldest, every_stream, sale_encoder
from shared.settings import Settings

KEYS = QueueKeys(common.REDIS_PREFIX, Settings.from_env().queue_partitions)
# The lease time: a new worker gets its share within a third of it (the default is 15 s).
LEASE_MS = 3000
WORKER_APP = "sales-worker"  # application_name of the worker's sessions (worker/writer.py)
EMPTY = [
    "sales",
    "sale_keys",
    "dead_letter",
    *(r.table for r in rollups.ROLLUPS),
    *(table for r in rollups.RUNNING for table in (r.table, r.late)),
    rollups.DELTAS.table,
]
_TARGET = re.compile(r"^\s*(?:INSERT\s+INTO|COPY|UPDATE)\s+\"?(\w+)", re.I)


# ---------------------------------------------------------------------------------------------
# The same queue before every configuration


async def make_entries(url: str, sales: int, per_entry: int, stores: int) -> list[tuple[int, dict]]:
    """Stream entries (partition, fields n and d) holding `sales` sales; deterministic for a
    given catalogue."""
    conn = await asyncpg.connect(url)
    try:
        prices = dict(await conn.fetch("SELECT id, price FROM item"))
    finally:
        await conn.close()
    rng = random.Random(1)
    items = sorted(prices)
    now_us = int(dt.datetime.now(dt.UTC).timestamp() * 1e6)
    hour_us = 3600 * 10**6
    entries: list[tuple[int, dict]] = []
    chunks: dict[int, list[QueuedSale]] = collections.defaultdict(list)
    for sale_id in range(1, sales + 1):
        item, store = rng.choice(items), rng.randint(1, stores)
        sold = now_us - rng.randrange(hour_us)
        partition = KEYS.partition_of(store)
        chunks[partition].append(
            QueuedSale(
                id=sale_id,
                sale_time_us=sold,
                item_id=item,
                store_id=store,
                price=prices[item],
                quantity=rng.randint(1, 3),
                idempotency_key=f"bw-{sale_id}",
                accepted_at_us=sold,
            )
        )
        if len(chunks[partition]) == per_entry:
            entries.append((partition, {"n": per_entry, "d": sale_encoder.encode(chunks.pop(partition))}))
    for partition, chunk in sorted(chunks.items()):
        entries.append((partition, {"n": len(chunk), "d": sale_encoder.encode(chunk)}))
    return entries


async def reset(url: str) -> None:
    """An empty database (catalogue kept) and an empty queue."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"TRUNCATE {', '.join(EMPTY)}")
        await conn.execute("UPDATE report_settings SET running_through = NULL")
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    client = aioredis.Redis.from_url(common.redis_url())
    try:
        await client.delete(KEYS.worker_stats, *(key for p in every_stream(KEYS) for key in (p.stream, p.depth)))
    finally:
        await client.aclose()


async def enqueue(entries: list[tuple[int, dict]]) -> None:
    client = aioredis.Redis.from_url(common.redis_url())
    try:
        for start in range(0, len(entries), 1000):
            async with client.pipeline(transaction=False) as pipe:
                for partition, fields in entries[start : start + 1000]:
                    pipe.xadd(KEYS.partition(partition).stream, fields)
                    pipe.incrby(KEYS.partition(partition).depth, fields["n"])
                await pipe.execute()
    finally:
        await client.aclose()


async def queue_depth(client) -> int:
    depth, _oldest = await depth_and_oldest(client, KEYS)
    return depth


async def wait_for_fair_shares(k: int, workers: list) -> None:
    """Until every partition is held and each of the k workers holds its share."""
    client = aioredis.Redis.from_url(common.redis_url())
    deadline = time.monotonic() + 60
    try:
        while True:
            holders = await client.mget([KEYS.lease(p) for p in range(KEYS.partitions)])
            shares = collections.Counter(holders)
            if None not in shares and len(shares) == min(k, KEYS.partitions):
                return
            dead = [w for w in workers if w.proc.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"partitions not shared out ({shares}); log:\n{(dead or workers)[0].log_tail()}")
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()


# ---------------------------------------------------------------------------------------------
# Sampling the workers' backends


class WaitSampler:
    """pg_stat_activity of the workers' backends every `every` seconds."""

    QUERY = (
        "SELECT pid, state, wait_event_type, wait_event, query FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = $1 AND pid <> pg_backend_pid()"
    )

    def __init__(self, url: str, every: float):
        self.url, self.every = url, every
        self.samples = 0
        self.any_lock = 0  # samples with >= 1 backend waiting on a Lock
        self.by_event: collections.Counter = collections.Counter()  # samples with a wait on that event
        self.by_table: collections.Counter = collections.Counter()  # ... in a statement on that table
        self.waiting_backends = 0  # sum over samples of backends waiting on a Lock
        self.active_backends = 0  # ... and of backends running a statement
        self.backend_pids: set[int] = set()
        self._stop = asyncio.Event()

    async def run(self) -> None:
        conn = await asyncpg.connect(self.url)
        try:
            while not self._stop.is_set():
                rows = await conn.fetch(self.QUERY, WORKER_APP)
                self._add(rows)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.every)
        finally:
            await conn.close()

    def _add(self, rows) -> None:
        self.samples += 1
        self.backend_pids.update(r["pid"] for r in rows)
        waiting = [r for r in rows if r["wait_event_type"] == "Lock"]
        self.active_backends += sum(r["state"] == "active" for r in rows)
        self.waiting_backends += len(waiting)
        if waiting:
            self.any_lock += 1
        for event in {r["wait_event"] for r in waiting}:
            self.by_event[event] += 1
        for table in {_target(r["query"]) for r in waiting}:
            self.by_table[table] += 1

    def stop(self) -> None:
        self._stop.set()


def _target(query: str | None) -> str:
    """The table a waiting statement writes (a batch's first statement locks item and store)."""
    if not query:
        return "?"
    if query.lstrip().upper().startswith("WITH ITEMS AS"):
        return "item/store (FOR KEY SHARE)"
    match = _TARGET.match(query)
    return match.group(1) if match else query.split()[0]


def cpu_seconds(pids) -> float:
    """utime + stime of live processes (they are gone once stopped: read before)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


# ---------------------------------------------------------------------------------------------
# One configuration


async def _waiting_on_gate(url: str) -> int:
    return await common.fetchval(
        url,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = $1 AND wait_event_type = 'Lock'",
        WORKER_APP,
    )


async def drain(url: str, k: int, entries: list[tuple[int, dict]], args) -> dict:
    sales = sum(fields["n"] for _, fields in entries)
    env = {
        **common.product_env(url, 0),
        "LOG_LEVEL": "WARNING",
        "WORKER_RECLAIM_IDLE_MS": str(LEASE_MS),
        "QUEUE_PARTITIONS": str(KEYS.partitions),
    }
    command = [common.PYTHON, "-m", "worker"]
    caps = [common.CpuCap(f"worker{i + 1}", args.cap) for i in range(k)] if args.cap else []
    workers = [
        common.Service(f"worker{i + 1}", caps[i].command(command) if caps else command, env, None) for i in range(k)
    ]
    await wait_for_fair_shares(k, workers)
    gate = await asyncpg.connect(url)
    tx = gate.transaction()
    await tx.start()
    await gate.execute("LOCK TABLE item IN EXCLUSIVE MODE")  # conflicts with FOR KEY SHARE only
    await enqueue(entries)
    deadline = time.monotonic() + 120
    while await _waiting_on_gate(url) < k:
        dead = [w for w in workers if w.proc.poll() is not None]
        if dead or time.monotonic() > deadline:
            raise RuntimeError(f"workers not all waiting with a batch in hand; log:\n{(dead or workers)[0].log_tail()}")
        await asyncio.sleep(0.05)

    sampler = WaitSampler(url, args.sample_ms / 1000)
    cpu_before = cpu_seconds(p for w in workers for p in w.pids())
    backends = [
        r["pid"]
        for r in await gate.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1", WORKER_APP
        )
    ]
    backend_cpu_before = cpu_seconds(backends)
    started = time.perf_counter()
    await tx.rollback()  # the clock starts: every worker has a batch in hand
    sampling = asyncio.create_task(sampler.run())  # after the gate, whose waits are not the workers' doing
    client = aioredis.Redis.from_url(common.redis_url())
    try:
        while await queue_depth(client) > 0:
            if time.perf_counter() - started > args.timeout:
                raise RuntimeError(f"not drained in {args.timeout} s")
            await asyncio.sleep(0.005)
    finally:
        await client.aclose()
    seconds = time.perf_counter() - started
    sampler.stop()
    await sampling
    backends = sorted(set(backends) | sampler.backend_pids)
    worker_cpu = cpu_seconds(p for w in workers for p in w.pids()) - cpu_before
    backend_cpu = cpu_seconds(backends) - backend_cpu_before  # a backend opened meanwhile counts whole
    for worker in workers:
        worker.stop()
    for cap in caps:
        cap.remove()
    await gate.close()

    conn = await asyncpg.connect(url)
    try:
        stored = await conn.fetchval("SELECT count(*) FROM sales")
        drift = await rollups.drift(conn)
    finally:
        await conn.close()
    if stored != sales or any(drift.values()):
        raise RuntimeError(f"{k} workers: stored {stored} of {sales}, drift {drift}")
    return {
        "workers": k,
        "sales": sales,
        "seconds": seconds,
        "rate": sales / seconds,
        "sampler": sampler,
        "worker_cpu": worker_cpu,
        "backend_cpu": backend_cpu,
    }


# ---------------------------------------------------------------------------------------------


def combine(runs: list[dict]) -> dict:
    """The median drain of a configuration's runs; the lock samples of all of them together."""
    seconds = sorted(r["seconds"] for r in runs)
    merged = runs[0]["sampler"]
    for run in runs[1:]:
        other = run["sampler"]
        merged.samples += other.samples
        merged.any_lock += other.any_lock
        merged.by_event += other.by_event
        merged.by_table += other.by_table
        merged.waiting_backends += other.waiting_backends
        merged.active_backends += other.active_backends
    median = statistics.median(seconds)
    return {
        "workers": runs[0]["workers"],
        "seconds": median,
        "range": (seconds[0], seconds[-1]),
        "rate": runs[0]["sales"] / median,
        "sampler": merged,
        "worker_cpu": statistics.median(r["worker_cpu"] / r["seconds"] for r in runs),
        "backend_cpu": statistics.median(r["backend_cpu"] / r["seconds"] for r in runs),
    }


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--sales", type=int, default=300_000, help="sales queued before each configuration")
    parser.add_argument(
        "--sales-per-entry",
        type=int,
        default=20,
        help="sales per stream entry (one API group commit of that many requests)",
    )
    parser.add_argument("--workers", default="1,2,4", help="worker process counts, comma-separated")
    parser.add_argument("--sample-ms", type=float, default=10, help="pg_stat_activity sampling interval")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a drain may take at most")
    parser.add_argument("--repeat", type=int, default=3, help="drains per configuration (the median is shown)")
    parser.add_argument(
        "--cap",
        type=int,
        metavar="PERCENT",
        help="each worker in a cgroup of its own capped at PERCENT of one core (15: 0.15 core), "
        "as if each were a small machine of its own (root, cgroup v1 cpu controller)",
    )
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.workers.split(",")]

    url = common.create_database("bench_workers", args.keep)
    common.clean_redis()
    if not args.keep:
        common.on_exit(common.clean_redis)
    common.seed_product(url, args.items, args.stores, 0)
    entries = asyncio.run(make_entries(url, args.sales, args.sales_per_entry, args.stores))
    log(f"{args.sales} sales in {len(entries)} stream entries")

    results = []
    for k in counts:
        runs = []
        for attempt in range(args.repeat):
            asyncio.run(reset(url))
            log(f"{k} worker(s), run {attempt + 1}/{args.repeat}: draining {args.sales} sales")
            runs.append(asyncio.run(drain(url, k, entries, args)))
            log(f"{k} worker(s): {runs[-1]['seconds']:.2f} s, {runs[-1]['rate']:.0f} sales/s")
        results.append(combine(runs))

    batch_entries = int(os.environ.get("WORKER_BATCH_ENTRIES", 200))
    common.header(
        f"Worker drain rate by number of workers ({args.sales:,} sales queued, "
        f"{args.sales_per_entry} per stream entry, {batch_entries * args.sales_per_entry:,} "
        f"per transaction; catalogue {args.items:,} items, {args.stores:,} stores"
        + (f"; each worker capped at {args.cap / 100:g} core" if args.cap else "")
        + ")"
    )
    one = results[0]["rate"]
    events = sorted({e for r in results for e in r["sampler"].by_event})
    tables = sorted({t for r in results for t in r["sampler"].by_table})
    rows = []
    for r in results:
        s: WaitSampler = r["sampler"]
        rows.append(
            [
                str(r["workers"]),
                f"{r['seconds']:.2f} ({r['range'][0]:.2f}-{r['range'][1]:.2f})",
                f"{r['rate']:,.0f}",
                f"{r['rate'] / one:.2f}x",
                str(s.samples),
                _pct(s.any_lock, s.samples),
                *(_pct(s.by_event[e], s.samples) for e in events),
                ", ".join(f"{t} {_pct(s.by_table[t], s.samples)}" for t in tables if s.by_table[t]) or "-",
                f"{s.waiting_backends / s.samples:.2f} / {s.active_backends / s.samples:.2f}" if s.samples else "n/a",
                f"{r['worker_cpu'] + r['backend_cpu']:.2f} ({r['worker_cpu']:.2f} + {r['backend_cpu']:.2f})",
            ]
        )
    print(
        common.table(
            [
                "workers",
                f"drain (s), median of {args.repeat} (min-max)",
                "sales/s (median)",
                "vs 1 worker",
                "samples",
                "samples with a worker waiting on a Lock",
                *(f"... on {e}" for e in events),
                "... by table its statement writes",
                "mean backends waiting on a Lock / running",
                "cores busy (workers + their backends)",
            ],
            rows,
        )
    )
    print(
        f"\nSampled every {args.sample_ms:g} ms (pg_stat_activity, backends with application_name "
        f"{WORKER_APP!r}), all runs of a configuration together; a sample counts once per event and "
        f"table however many backends wait. Cores busy: CPU seconds (/proc) of the worker processes + "
        f"their PostgreSQL backends per second of drain (median of the runs), of {os.cpu_count()} cores. "
        f"Every configuration stored all {args.sales:,} sales with rollup drift 0."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
