"""Benchmark 6: one PostgreSQL node vs a 3-node Citus cluster (coordinator + 2 workers), same machine, same run.

    python -m bench.citus                               # sizes 1000000,10000000
    python -m bench.citus --sizes 100000 --duration 10  # a quick look

Both databases are throwaway servers started here with the same settings (tests/servers.py,
tests/citus/cluster.py; Citus is built first if citus.so is missing), each holding the same
catalogue (10,000 items, 1,000 stores). Per engine, in turn, with the product (API + worker)
pointed at it:

1. batch ingestion end to end: wrk with 1,000-sale batches (bench/post_batch.lua), sales/s
   accepted and written (until the queue is drained);
2. POST /sales/ one sale per request, 64 connections: 2xx req/s, p50/p99;
3. per size: seeding with the CLI (timed), then GET /stores/top/ and /items/top/ sequentially,
   answered from the report cache and uncached (a NOTIFY before each request, as a worker
   commit sends), median and p99; the two engines' answers must be identical;
4. where the time goes: the worker's batch transaction alone (1, 1,000 and 10,000 sales),
   a round trip, and the uncached report queries, timed from a client on each engine; and the
   1,000-sale transaction statement by statement, on Citus also with its default of one
   connection per node kept between transactions (the worker keeps 16: worker.writer).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg

from bench import common
from bench.common import log, ms, ratio
from bench.reports import RollupsChanged, sequential
from shared import report_changes, sales_copy
from shared.sale_ids import reserve_blocks
from tests.citus.cluster import CitusCluster
from tests.servers import PgServer
from worker import writer
from worker.batch_columns import BatchColumns

# The same for the single node and every Citus node: durable commits, as in production.
SETTINGS = {
    "fsync": "on",
    "full_page_writes": "on",
    "shared_buffers": "512MB",
    "max_connections": "300",
    "max_prepared_transactions": "300",
    "wal_level": "logical",
}
ENGINES = ("single node", "Citus 1+2")
UNCACHED = "Citus 1+2, connections not kept"


def start_engines() -> dict[str, str]:
    """Database URLs of a fresh single node and a fresh Citus cluster."""
    single = PgServer(settings=SETTINGS, prefix="bench-single-")
    common.on_exit(single.destroy)
    single.start()
    cluster = CitusCluster(settings=SETTINGS)
    common.on_exit(cluster.destroy)
    cluster.start()
    log(
        f"single node on :{single.port}; Citus coordinator on :{cluster.coordinator.port}, "
        f"workers on {', '.join(str(w.port) for w in cluster.workers)}"
    )
    return {"single node": single.url(), "Citus 1+2": cluster.coordinator.url()}


def ingestion(url: str, args, port: int) -> dict:
    api, worker = common.start_product(url, port)
    env = {"ITEMS": str(args.items), "STORES": str(args.stores), "BATCH": "1000"}
    try:
        common.wrk(port, "/sales/batch/", "bench/post_batch.lua", args.warmup, 16, 2, env)
        common.wait_drained(port)
        before = common.count_sales(url)
        started = time.monotonic()
        batch = common.wrk(port, "/sales/batch/", "bench/post_batch.lua", args.duration, 16, 2, env)
        common.wait_drained(port)
        written_s = time.monotonic() - started
        batch["added"] = common.count_sales(url) - before
        batch["accepted_per_s"] = batch["ok"] * 1000 / batch["seconds"]
        batch["written_per_s"] = batch["added"] / written_s

        common.wrk(port, "/sales/", "bench/post_sale.lua", args.warmup, 64, 2, env)
        common.wait_drained(port)
        before = common.count_sales(url)
        single = common.wrk(port, "/sales/", "bench/post_sale.lua", args.duration, 64, 2, env)
        common.wait_drained(port)
        single["added"] = common.count_sales(url) - before
    finally:
        worker.stop()
        api.stop()
    return {"batch": batch, "single": single}


def report_latencies(url: str, args, port: int, paths: dict[str, str]) -> dict:
    api, _ = common.start_product(url, port, worker=False)
    results = {}
    try:
        for endpoint, path in paths.items():
            cached = sequential(port, path, args.requests, 10, 60)
            changed = RollupsChanged(url)
            try:
                cold = sequential(port, path, args.requests, 0, 60, before_each=changed)
            finally:
                changed.close()
            results[endpoint] = {"cached": cached, "cold": cold}
    finally:
        api.stop()
    return results


async def _timed(conn: asyncpg.Connection, runs: int, work) -> float:
    """Median milliseconds of `work()` over `runs` runs."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        await work()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def _anatomy(url: str, items: int, stores: int, runs: int) -> dict[str, float]:
    conn = await asyncpg.connect(url, server_settings=writer.SESSION_SETTINGS)
    try:
        await writer.prepare_connection(conn)
        citus = await writer.is_citus(conn)
        prices = {r["id"]: r["price"] for r in await conn.fetch("SELECT id, price FROM item")}
        now_us = int(time.time() * 1_000_000)

        async def batch_of(count: int, store_ids=None):
            starts = await reserve_blocks(conn, -(-count // 1000))
            ids = [s + i for s in starts for i in range(1000)][:count]
            rows = [
                (
                    sale_id,
                    now_us,
                    1 + n % items,
                    store_ids[n % len(store_ids)] if store_ids else 1 + n % stores,
                    prices[1 + n % items],
                    1,
                    None,
                    now_us,
                    prices[1 + n % items],
                )
                for n, sale_id in enumerate(ids)
            ]
            return await writer.write_batch(conn, rows, citus=citus)

        month = dt.date.today().replace(day=1)
        return {
            "round trip (SELECT 1)": await _timed(conn, runs * 10, lambda: conn.fetchval("SELECT 1")),
            "one store's month (router query)": await _timed(
                conn,
                runs * 10,
                lambda: conn.fetch("SELECT income FROM store_monthly WHERE store_id = 1 AND month = $1", month),
            ),
            "top stores query (all shards)": await _timed(
                conn,
                runs,
                lambda: conn.fetch(
                    "SELECT store_id, income FROM store_monthly WHERE month = $1 "
                    "ORDER BY income DESC, store_id LIMIT 10",
                    month,
                ),
            ),
            "top items query (all shards)": await _timed(
                conn,
                runs,
                lambda: conn.fetch(
                    "SELECT item_id, units FROM item_totals WHERE units > 0 ORDER BY units DESC, item_id LIMIT 10"
                ),
            ),
            "batch of 1 sale (one store)": await _timed(conn, runs, lambda: batch_of(1, [1])),
            "batch of 2 sales (stores 1, 2)": await _timed(conn, runs, lambda: batch_of(2, [1, 2])),
            "batch of 1,000 sales": await _timed(conn, runs, lambda: batch_of(1000)),
            "batch of 10,000 sales": await _timed(conn, max(3, runs // 4), lambda: batch_of(10_000)),
        }
    finally:
        await conn.close()


async def _statements(url: str, items: int, stores: int, runs: int, settings: dict[str, str]) -> dict[str, float]:
    """Median ms of each statement of the worker's transaction for 1,000 new sales of 1,000
    stores (what worker.writer does for such a batch, statement by statement)."""
    conn = await asyncpg.connect(url, server_settings={**writer.SESSION_SETTINGS, **settings})
    try:
        await writer.prepare_connection(conn)
        citus = await writer.is_citus(conn)
        prices = {r["id"]: r["price"] for r in await conn.fetch("SELECT id, price FROM item")}
        now_us = int(time.time() * 1_000_000)
        times: dict[str, list[float]] = {}
        for run in range(runs + 2):  # the first two warm the connections up
            [start] = await reserve_blocks(conn, 1)
            rows = [
                (
                    start + n,
                    now_us,
                    1 + n % items,
                    1 + (n * 7) % stores,
                    prices[1 + n % items],
                    1,
                    None,
                    now_us,
                    prices[1 + n % items],
                )
                for n in range(1000)
            ]
            batch = BatchColumns(rows)
            steps: list[tuple[str, float]] = []
            mark = time.perf_counter()

            def lap(name: str) -> None:
                nonlocal mark
                now = time.perf_counter()
                steps.append((name, (now - mark) * 1000))  # noqa: B023 - called in this iteration only
                mark = now

            transaction = conn.transaction()
            await transaction.start()
            if citus:
                await conn.execute(report_changes.ANNOUNCE, writer.changes_of(rows))
            else:
                await conn.fetchval(
                    writer.LOCK_PARENTS_AND_SKIP_ROW_CHECKS, *writer.parent_ids(rows), writer.changes_of(rows)
                )
            lap("BEGIN; foreign keys (one node) or NOTIFY (Citus)")
            await conn.copy_to_table(
                "sales", source=memoryview(batch.copy_data()), columns=sales_copy.COLUMNS, format="binary"
            )
            lap("COPY 1,000 sales")
            for summed_by, upsert in writer.UPSERT_BATCH_SUMS[False]:
                await conn.execute(upsert, *batch.sums_by(summed_by))
                lap(f"upsert {upsert.split()[2]} (INSERT ... SELECT FROM unnest ... ON CONFLICT)")
            await transaction.commit()
            lap("COMMIT (two-phase on Citus)")
            if run >= 2:
                for name, value in steps:
                    times.setdefault(name, []).append(value)
        return {name: statistics.median(values) for name, values in times.items()}
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,10000000", help="sale counts for the reports, comma-separated")
    parser.add_argument("--duration", type=float, default=20, help="seconds of each wrk load")
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--requests", type=int, default=200, help="sequential requests per report")
    parser.add_argument("--anatomy-runs", type=int, default=40, help="repetitions of each timed statement")
    args = parser.parse_args(argv)
    common.ensure_tools("wrk")
    sizes = [int(s) for s in args.sizes.split(",") if s]
    month = dt.datetime.now(dt.UTC).month
    paths = {"/stores/top/": f"/stores/top/?cnt=10&mm={month}", "/items/top/": "/items/top/?cnt=10"}

    urls = start_engines()
    common.clean_redis()
    ingest, anatomy, seeding, reports, statements = {}, {}, {}, {}, {}
    for engine, url in urls.items():
        common.seed_product(url, args.items, args.stores, 0)
        log(f"{engine}: ingestion")
        ingest[engine] = ingestion(url, args, args.product_port)
        common.clean_redis()
        log(f"{engine}: anatomy of a write and a read")
        anatomy[engine] = asyncio.run(_anatomy(url, args.items, args.stores, args.anatomy_runs))
        statements[engine] = asyncio.run(_statements(url, args.items, args.stores, args.anatomy_runs, {}))
    # Citus's default: one connection per node kept between transactions (the product keeps 16)
    statements[UNCACHED] = asyncio.run(
        _statements(
            urls[ENGINES[1]], args.items, args.stores, args.anatomy_runs, {"citus.max_cached_conns_per_worker": "1"}
        )
    )
    for size in sizes:
        for engine, url in urls.items():
            seeding[(size, engine)] = common.seed_product(url, args.items, args.stores, size)
            log(f"{engine}: {size} sales seeded in {seeding[(size, engine)]:.1f} s; reports")
            reports[(size, engine)] = report_latencies(url, args, args.product_port, paths)
        for endpoint in paths:
            single, citus = (reports[(size, e)][endpoint]["cold"]["body"] for e in ENGINES)
            if single != citus:
                raise RuntimeError(
                    f"{size} sales, {endpoint}: the engines answer differently: {single[:3]} vs {citus[:3]}"
                )

    common.header("Single PostgreSQL node vs Citus (coordinator + 2 workers), the same machine")
    rows = []
    for engine_key, label in (("batch", "POST /sales/batch/ (1,000 per request, 16 connections)"),):
        s, c = (ingest[e][engine_key] for e in ENGINES)
        rows.append(
            [
                label,
                "sales/s accepted",
                f"{s['accepted_per_s']:.0f}",
                f"{c['accepted_per_s']:.0f}",
                ratio(c["accepted_per_s"], s["accepted_per_s"]),
            ]
        )
        rows.append(
            [
                "",
                "sales/s written end to end",
                f"{s['written_per_s']:.0f}",
                f"{c['written_per_s']:.0f}",
                ratio(c["written_per_s"], s["written_per_s"]),
            ]
        )
        rows.append(["", "request p99 (ms)", ms(s["p99_us"]), ms(c["p99_us"]), ratio(c["p99_us"], s["p99_us"])])
    s, c = (ingest[e]["single"] for e in ENGINES)
    rows.append(
        [
            "POST /sales/ (64 connections)",
            "2xx req/s",
            f"{s['ok_rps']:.0f}",
            f"{c['ok_rps']:.0f}",
            ratio(c["ok_rps"], s["ok_rps"]),
        ]
    )
    rows.append(
        [
            "",
            "p50 / p99 (ms)",
            f"{ms(s['p50_us'])} / {ms(s['p99_us'])}",
            f"{ms(c['p50_us'])} / {ms(c['p99_us'])}",
            ratio(c["p99_us"], s["p99_us"]),
        ]
    )
    for size in sizes:
        rows.append(
            [
                f"seeding {size:,} sales (CLI)",
                "seconds",
                f"{seeding[(size, ENGINES[0])]:.1f}",
                f"{seeding[(size, ENGINES[1])]:.1f}",
                ratio(seeding[(size, ENGINES[1])], seeding[(size, ENGINES[0])]),
            ]
        )
        for endpoint in paths:
            s, c = (reports[(size, e)][endpoint] for e in ENGINES)
            for kind, label in (("cached", "from the report cache"), ("cold", "uncached")):
                rows.append(
                    [
                        f"{endpoint} at {size:,} sales",
                        f"{label}: median / p99 (ms)",
                        f"{s[kind]['median']:.2f} / {s[kind]['p99']:.2f}",
                        f"{c[kind]['median']:.2f} / {c[kind]['p99']:.2f}",
                        ratio(c[kind]["median"], s[kind]["median"]),
                    ]
                )
    print(common.table(["what", "metric", ENGINES[0], ENGINES[1], "ratio Citus/single"], rows))

    print(
        "\nWhere the time goes (median ms, timed from one client connection on each engine; "
        "the batches are the worker's whole transaction, worker.writer.write_batch):\n"
    )
    rows = [
        [
            name,
            f"{anatomy[ENGINES[0]][name]:.2f}",
            f"{anatomy[ENGINES[1]][name]:.2f}",
            ratio(anatomy[ENGINES[1]][name], anatomy[ENGINES[0]][name]),
        ]
        for name in anatomy[ENGINES[0]]
    ]
    print(common.table(["statement", ENGINES[0], ENGINES[1], "ratio"], rows))
    print(
        "\nThe worker's transaction for 1,000 new sales of 1,000 stores, statement by statement (median ms; "
        "the last column with Citus's default of one kept connection per node):\n"
    )
    columns = [*ENGINES, UNCACHED]
    rows = [[name, *(f"{statements[c][name]:.2f}" for c in columns)] for name in statements[ENGINES[0]]]
    rows.append(["whole transaction", *(f"{sum(statements[c].values()):.2f}" for c in columns)])
    print(common.table(["statement", *columns], rows))
    print("\nStored check (rows added vs 2xx answers):\n")
    ok = True
    for engine in ENGINES:
        batch, single = ingest[engine]["batch"], ingest[engine]["single"]
        b_extra, s_extra = batch["added"] - batch["ok"] * 1000, single["added"] - single["ok"]
        good = 0 <= b_extra <= 16 * 1000 and 0 <= s_extra <= 64
        ok &= good
        print(
            f"- {engine}: batches {batch['ok'] * 1000} accepted, {batch['added']} added; single {single['ok']} "
            f"accepted, {single['added']} added -> {'OK: every 2xx stored' if good else 'MISMATCH'}"
        )
    print("\nwrk commands:\n")
    for engine in ENGINES:
        print(f"- {engine}: `{ingest[engine]['batch']['cmd']}`; `{ingest[engine]['single']['cmd']}`")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
