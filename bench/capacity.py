"""Capacity: CPU time per sale of each component (API, Redis, worker, PostgreSQL), end to end.

    python -m bench.capacity --duration 20 --rounds 3

The figures docs/scaling.md plans with. For each shape of load (one sale per POST /sales/, 64
connections; POST /sales/batch/ of 1,000 sales, 16 connections; each with no key, with an
idempotency key per sale, and numbered by tills: `seq` with each till's pos key, sent by a
second API process with AUTH_REQUIRED=true) the product runs as `docker compose up` runs it
(API processes: one per core, one worker, Redis with AOF and fsync always, PostgreSQL), wrk
loads it for --duration seconds, and the CPU time (utime + stime from /proc) each component
used from the start of the load until the queue is drained is divided by the sales stored.
PostgreSQL is every `postgres` process of the cluster (backends, WAL writer, checkpointer):
run it on a cluster nothing else uses. wrk's own CPU is not counted.

"One core's worth" is 1,000,000 / (µs per sale): the rate one fully busy core of that
component reaches. Redis runs commands on one thread, so that figure is also the ceiling of one
Redis primary; the API and the worker are single-threaded processes (one core each);
PostgreSQL spreads sales over its backends (one per connection), so its figure is per core.
Rounds alternate the shapes; the table gives the median of the rounds.

What each shape leaves behind, per sale, is measured too: Redis's used_memory and the size of
the sales tables (partitions and indexes, sale_keys, till_progress) after the queue drained,
minus before. An idempotency key is held in Redis for IDEMPOTENCY_TTL_SECONDS; a till's number
is not (its till keeps one hash: the state per till is stated in bytes).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import redis as redis_sync

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.common import log
from bench.workers import cpu_seconds
from shared import keys

COMPONENTS = ("API", "Redis", "worker", "PostgreSQL")
TILLS = 128  # pos keys, one till each (bench/post_till.lua: more per wrk thread than connections)
HELD_BYTES_SQL = """
SELECT (SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits WHERE inhparent = 'sales'::regclass)
       + pg_total_relation_size('sale_keys') + pg_total_relation_size('till_progress')
"""
STORAGE_SQL = """
SELECT (SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits WHERE inhparent = 'sales'::regclass)
       AS sales_bytes,
       pg_total_relation_size('sale_keys') AS keys_bytes,
       (SELECT count(*) FROM sales) AS sales,
       (SELECT count(*) FROM sale_keys) AS keys
"""


def postgres_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def cpu_by_component(api: common.Service, worker: common.Service) -> dict[str, float]:
    return {
        "API": cpu_seconds(api.pids()),
        "Redis": cpu_seconds([common.private_redis_pid]) if common.private_redis_pid else float("nan"),
        "worker": cpu_seconds(worker.pids()),
        "PostgreSQL": cpu_seconds(postgres_pids()),
    }


def run_shape(shape: dict, args, url: str, api: common.Service, worker: common.Service) -> dict:
    env = {
        "ITEMS": str(args.items),
        "STORES": str(args.stores),
        "BATCH": str(args.batch),
        "KEYED": "1" if shape["keyed"] else "0",
        "KEY_PREFIX": f"k{time.time_ns()}",
    }
    if shape.get("tills"):
        # numbers above any a till sent before (1,000 numbers per till per millisecond since)
        env.update(TILLS_FILE=shape["tills"], THREADS=str(args.threads), SEQ_FROM=str(time.time_ns() // 1000))
        env["BATCH"] = str(shape["per_request"] if shape["path"] == "/sales/batch/" else 0)
    before_sales = common.count_sales(url)
    held_before = held_bytes(url)
    wal_before = common.fetchrow_sync(url, "SELECT pg_current_wal_lsn() AS lsn")["lsn"]
    before = cpu_by_component(api, worker)
    started = time.monotonic()
    load = common.wrk(
        shape.get("port", args.product_port),
        shape["path"],
        shape["script"],
        args.duration,
        shape["connections"],
        args.threads,
        env,
    )
    common.wait_drained(args.product_port)
    seconds = time.monotonic() - started
    after = cpu_by_component(api, worker)
    stored = common.count_sales(url) - before_sales
    wal = common.fetchrow_sync(url, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn) AS b", wal_before)["b"]
    held_after = held_bytes(url)
    accepted = load["ok"] * shape["per_request"]
    # requests in flight when wrk stops, or that it gave up on (timeouts), may be stored uncounted
    if not 0 <= stored - accepted <= (shape["connections"] + load["socket_errors"]) * shape["per_request"]:
        raise RuntimeError(f"{shape['name']}: {accepted} sales answered 2xx but {stored} stored")
    return {
        "stored": stored,
        "rate": stored / seconds,
        "cmd": load["cmd"],
        "non_2xx": load["status"],
        "wal_per_sale": float(wal) / stored,
        "redis_per_sale": (held_after["redis"] - held_before["redis"]) / stored,
        "postgres_per_sale": (held_after["postgres"] - held_before["postgres"]) / stored,
        "us_per_sale": {c: (after[c] - before[c]) * 1e6 / stored for c in COMPONENTS},
    }


def held_bytes(url: str) -> dict[str, int]:
    """What the product holds: Redis's used_memory, and the sales tables' bytes."""
    return {
        "redis": common.redis_memory()["used_memory"],
        "postgres": int(common.fetchrow_sync(url, HELD_BYTES_SQL + " AS b")["b"]),
    }


def issue_tills(url: str, stores: int, count: int) -> str:
    """`count` pos keys, one till each, spread over the stores; the file bench/post_till.lua reads."""

    async def issue() -> list[tuple[str, int]]:
        conn = await asyncpg.connect(url)
        try:
            return [
                ((await keys.issue(conn, "pos", store, f"bench till {n}")).key, store)
                for n in range(count)
                for store in [n % stores + 1]
            ]
        finally:
            await conn.close()

    with tempfile.NamedTemporaryFile("w", prefix="bench-tills-", suffix=".txt", delete=False) as file:
        file.writelines(f"{key} {store}\n" for key, store in asyncio.run(issue()))
    common.on_exit(lambda: os.unlink(file.name))
    return file.name


def till_state_bytes(count: int) -> float:
    """MEMORY USAGE of the tills' hashes (shared.queue.QueueKeys.till), on average."""
    client = redis_sync.Redis.from_url(common.redis_url())
    try:
        sizes = [client.memory_usage(key) or 0 for key in client.scan_iter(match=f"{common.REDIS_PREFIX}*:till:*")]
    finally:
        client.close()
    if len(sizes) != count:
        log(f"{len(sizes)} till hashes found for {count} tills")
    return statistics.mean(sizes) if sizes else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20, help="seconds of load per shape and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1000, help="sales per batch request")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument(
        "--utilisation",
        type=float,
        default=0.6,
        help="planned busy share of each core at peak (headroom for bursts and failover)",
    )
    args = parser.parse_args(argv)
    common.ensure_tools("wrk")

    single = {"path": "/sales/", "script": "bench/post_sale.lua", "connections": 64, "per_request": 1}
    batch = {"path": "/sales/batch/", "script": "bench/post_batch.lua", "connections": 16, "per_request": args.batch}
    url = common.create_database("bench_product", args.keep)
    common.clean_redis()
    if not args.keep:
        common.on_exit(common.clean_redis)
    common.seed_product(url, args.items, args.stores, 0)
    api, worker = common.start_product(url, args.product_port)
    till_api = common.Service(
        "product-api-tills",
        [common.PYTHON, "-m", "api"],
        {**common.product_env(url, args.product_port + 1), "AUTH_REQUIRED": "true"},
        args.product_port + 1,
    )
    till_api.wait_http("/health")
    numbered = {"script": "bench/post_till.lua", "tills": issue_tills(url, args.stores, TILLS)}
    numbered.update(port=args.product_port + 1, api=till_api)
    shapes = [
        {**single, "name": "single", "keyed": False},
        {**single, "name": "single, keyed", "keyed": True},
        {**single, **numbered, "name": "single, tills", "keyed": False},
        {**batch, "name": f"batch of {args.batch}", "keyed": False},
        {**batch, "name": f"batch of {args.batch}, keyed", "keyed": True},
        {**batch, **numbered, "name": f"batch of {args.batch}, tills", "keyed": False},
    ]
    if common.private_redis_pid is None:
        log("BENCH_REDIS_URL is set: Redis's CPU is not measured")

    results: dict[str, list[dict]] = {s["name"]: [] for s in shapes}
    for shape in shapes:  # warm-up: connection pools, the catalogue, the first partitions
        run_shape(shape, argparse.Namespace(**{**vars(args), "duration": 3}), url, shape.get("api", api), worker)
    for round_no in range(args.rounds):
        for shape in shapes:
            log(f"round {round_no + 1}/{args.rounds}: {shape['name']}")
            results[shape["name"]].append(run_shape(shape, args, url, shape.get("api", api), worker))
    storage = common.fetchrow_sync(url, STORAGE_SQL)
    redis_memory = common.redis_memory()
    per_till = till_state_bytes(TILLS)

    common.header(
        f"Capacity: CPU µs per sale by component ({args.rounds} rounds of {args.duration:g} s per shape, "
        f"median; {os.cpu_count()} cores shared by everything, wrk included)"
    )
    rows = []
    medians = {}
    for shape in shapes:
        runs = results[shape["name"]]
        us = medians[shape["name"]] = {c: statistics.median(r["us_per_sale"][c] for r in runs) for c in COMPONENTS}
        rate = statistics.median(r["rate"] for r in runs)
        rows.append([shape["name"], f"{rate:,.0f}", *(f"{us[c]:.1f}" for c in COMPONENTS), f"{sum(us.values()):.1f}"])
        rows.append(["", "one core's worth (sales/s)", *(f"{1e6 / us[c]:,.0f}" for c in COMPONENTS), ""])
    print(common.table(["load", "sales/s end to end", *(f"{c} µs/sale" for c in COMPONENTS), "total µs/sale"], rows))
    print(
        "\nPostgreSQL WAL written per sale (median of the rounds): "
        + ", ".join(
            f"{shape['name']} {statistics.median(r['wal_per_sale'] for r in results[shape['name']]):.0f} bytes"
            for shape in shapes
        )
    )
    print(
        "\nHeld per sale after the queue drained (median of the rounds; Redis used_memory, PostgreSQL the sales "
        "tables with their indexes, sale_keys and till_progress):\n"
    )
    print(
        common.table(
            ["load", "Redis bytes/sale", "PostgreSQL bytes/sale"],
            [
                [
                    shape["name"],
                    f"{statistics.median(r['redis_per_sale'] for r in results[shape['name']]):.1f}",
                    f"{statistics.median(r['postgres_per_sale'] for r in results[shape['name']]):.1f}",
                ]
                for shape in shapes
            ],
        )
    )
    print(f"\nState per till in Redis (MEMORY USAGE of its hash, mean of {TILLS} tills): {per_till:,.0f} bytes")
    print("\nSpread over the rounds (µs per sale, min-max):\n")
    for shape in shapes:
        runs = results[shape["name"]]
        parts = [
            f"{c} {min(r['us_per_sale'][c] for r in runs):.1f}-{max(r['us_per_sale'][c] for r in runs):.1f}"
            for c in COMPONENTS
        ]
        print(f"- {shape['name']}: " + ", ".join(parts))
    print(
        f"\nStorage after the run: sales {storage['sales_bytes'] / storage['sales']:.0f} bytes per sale "
        f"(table and indexes, {storage['sales']:,} sales); sale_keys "
        f"{(storage['keys_bytes'] / storage['keys']) if storage['keys'] else 0:.0f} bytes per keyed sale "
        f"({storage['keys']:,} keys)"
    )
    if redis_memory["keys"]:
        print(
            f"Redis after the run (queue drained): {redis_memory['used_memory'] / redis_memory['keys']:.0f} bytes "
            f"of used_memory per key held ({redis_memory['keys']:,} keys: the idempotency keys of the run, "
            f"kept IDEMPOTENCY_TTL_SECONDS)"
        )
    print_plan(medians, [s["name"] for s in shapes if s["keyed"]], args.utilisation)
    print("\nwrk commands (last round):\n")
    for shape in shapes:
        print(f"- {shape['name']}: `{results[shape['name']][-1]['cmd']}`")
    common.print_memory({"API": api, "API (tills)": till_api, "worker": worker})
    return 0


PLAN_RATES = (1_000, 10_000, 100_000, 1_000_000)


def print_plan(medians: dict[str, dict[str, float]], shapes: list[str], utilisation: float) -> None:
    """Cores of each component for each rate, from the measured µs per sale (keyed sales, as tills
    send them). API processes, Redis primaries and workers use one core each."""
    print(
        f"\nPlan: cores needed at {utilisation:.0%} busy (rate x µs per sale / 1,000,000 / {utilisation:g}), "
        "keyed sales:\n"
    )
    rows = []
    for name in shapes:
        us = medians[name]
        for rate in PLAN_RATES:
            rows.append([name, f"{rate:,}", *(f"{rate * us[c] / 1e6 / utilisation:,.2f}" for c in COMPONENTS)])
    print(
        common.table(
            [
                "load",
                "sales/s",
                "API processes (cores)",
                "Redis (cores = primaries)",
                "workers (cores)",
                "PostgreSQL cores",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
