"""Benchmark 6: the tills' client: sales recorded per second into the spool (each durable),
and how long a till that was offline for a trading day takes to catch up.

    python -m bench.pos_client

1. Recording, no server involved: `SalesClient.record` (one sale, one fsynced SQLite commit)
   `--records` times from one thread; the same from `--threads` threads at once; and
   `record_many` with baskets of 3. The spool lives in `--spool-dir` (default: a temporary
   directory, on the disk the till would use). Latency per call: p50, p99, max.
2. Catch-up: the product (API + worker, its own Redis with AOF fsync always) on a fresh
   `bench_pos_client` database with `--items` items and `--stores` stores; a till records
   `--offline-sales` sales (10,000: a busy trading day) while the server is unreachable, with
   sale times spread over the 12 hours before; then it is given the server: "accepted" is the
   time until `flush()` returns (every sale answered 202), "written" until the product's queue
   is drained (all in `sales`). Checked: every key in `sales` once, with the id the till got.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import tempfile
import threading
import time
from pathlib import Path

import asyncpg

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.common import log
from pos_client import SalesClient
from pos_client.spool import Spool
from pos_client.transport import TransportError


class Unplugged:
    """The network cable is out: every request fails at once."""

    def request(self, *args, **kwargs):
        raise TransportError("unplugged (benchmark)")

    def close(self) -> None:
        pass


def offline_client(spool: str, store_id: int = 1) -> SalesClient:
    # backoff_base of an hour: the sender tries once and then leaves the spool to the benchmark
    return SalesClient(
        "http://127.0.0.1:9", store_id=store_id, spool=spool, transport=Unplugged(), backoff_base=3600, backoff_cap=3600
    )


def timed_calls(call, count: int) -> list[float]:
    latencies = []
    for i in range(count):
        started = time.perf_counter()
        call(i)
        latencies.append(time.perf_counter() - started)
    return latencies


def recording(directory: Path, records: int, threads: int) -> list[list[str]]:
    rows = []

    def row(name: str, sales: int, seconds: float, latencies: list[float]) -> None:
        rows.append(
            [
                name,
                f"{sales:,}",
                f"{seconds:.2f}",
                f"{sales / seconds:,.0f}",
                f"{common.percentile(latencies, 50) * 1000:.2f}",
                f"{common.percentile(latencies, 99) * 1000:.2f}",
                f"{max(latencies) * 1000:.2f}",
            ]
        )

    client = offline_client(str(directory / "one.db"))
    started = time.perf_counter()
    latencies = timed_calls(lambda i: client.record(item_id=1 + i % 50, quantity=1), records)
    row("record(), 1 thread", records, time.perf_counter() - started, latencies)
    client.close()

    client = offline_client(str(directory / "threads.db"))
    per_thread: list[list[float]] = [[] for _ in range(threads)]
    each = records // threads

    def sell(n: int) -> None:
        per_thread[n] = timed_calls(lambda i: client.record(item_id=1 + i % 50), each)

    workers = [threading.Thread(target=sell, args=(n,)) for n in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    row(
        f"record(), {threads} threads at once",
        each * threads,
        time.perf_counter() - started,
        [x for lat in per_thread for x in lat],
    )
    client.close()

    client = offline_client(str(directory / "baskets.db"))
    baskets = records // 3
    started = time.perf_counter()
    latencies = timed_calls(lambda i: client.record_many([(1 + i % 50, 1), (2, 2), (3, 1)]), baskets)
    row("record_many(), baskets of 3", baskets * 3, time.perf_counter() - started, latencies)
    client.close()
    for name in ("one.db", "threads.db", "baskets.db"):
        spool = Spool(str(directory / name))
        counts = spool.counts()
        spool.close()
        assert counts.pending >= records - threads * 3, f"{name}: {counts}"
    return rows


def catch_up(directory: Path, args) -> list[list[str]]:
    url = common.create_database("bench_pos_client", args.keep)
    common.clean_redis()
    if not args.keep:
        common.on_exit(common.clean_redis)
    common.seed_product(url, args.items, args.stores, 0)
    common.start_product(url, args.product_port)
    spool = str(directory / "offline-day.db")

    log(f"a till records {args.offline_sales:,} sales while offline")
    client = offline_client(spool, store_id=1)
    day = dt.timedelta(hours=12)
    opened = dt.datetime.now(dt.UTC) - day - dt.timedelta(minutes=5)
    for i in range(args.offline_sales):
        client.record(item_id=1 + i % args.items, quantity=1 + i % 3, sale_time=opened + day * i / args.offline_sales)
    client.close()

    log("the network is back")
    started = time.perf_counter()
    client = SalesClient(f"http://127.0.0.1:{args.product_port}", store_id=1, spool=spool)
    flushed = client.flush(timeout=600)
    accepted = time.perf_counter() - started
    common.wait_drained(args.product_port)
    written = time.perf_counter() - started
    status = client.status()
    client.close()
    if not flushed or status.pending:
        raise SystemExit(f"the till did not catch up: {status}")

    check = Spool(spool)
    ledger = check.ledger()
    check.close()

    async def stored() -> dict:
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch("SELECT id, idempotency_key FROM sales WHERE store_id = 1")
        finally:
            await conn.close()
        return {r["idempotency_key"]: r["id"] for r in rows}

    in_db = asyncio.run(stored())
    exact = len(in_db) == len(ledger) and all(in_db.get(s.idempotency_key) == s.server_id for s in ledger)
    if not exact:
        raise SystemExit(f"stored check failed: {len(in_db)} rows for {len(ledger)} sales")
    batches = -(-args.offline_sales // 1000)
    return [
        ["sales waiting in the spool", f"{args.offline_sales:,}"],
        ["requests (batches of up to 1,000)", str(batches)],
        ["until every sale was answered 202 (s)", f"{accepted:.2f}"],
        ["sales/s accepted", f"{args.offline_sales / accepted:,.0f}"],
        ["until every sale was in `sales` (s)", f"{written:.2f}"],
        ["stored check: each key once, with the id the till got", "yes" if exact else "NO"],
    ]


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000, help="sales recorded per recording run")
    parser.add_argument("--threads", type=int, default=4, help="threads recording at once")
    parser.add_argument("--offline-sales", type=int, default=10_000, help="the offline day's sales")
    parser.add_argument("--spool-dir", help="where the spools go (default: a temporary directory)")
    args = parser.parse_args(argv)
    directory = Path(args.spool_dir or tempfile.mkdtemp(prefix="bench-pos-client-"))
    directory.mkdir(parents=True, exist_ok=True)

    common.header("The tills' client: recording into the spool, and a day's catch-up")
    log("recording into the spool")
    rows = recording(directory, args.records, args.threads)
    print(f"Recording (spool in {directory}, SQLite WAL, synchronous=FULL: an fsync per commit):\n")
    print(common.table(["how", "sales", "seconds", "sales/s", "p50 ms", "p99 ms", "max ms"], rows))
    print()
    rows = catch_up(directory, args)
    print(f"Catch-up of a till offline for a day ({args.items:,} items, {args.stores:,} stores):\n")
    print(common.table(["metric", "value"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
