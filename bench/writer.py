"""The worker's batch write alone: wall time and PostgreSQL CPU per batch, by batch size.

    python -m bench.writer                      # sizes 1,50,300,1000,20000,100000
    python -m bench.writer --sizes 300,100000

No API, no Redis: `worker.writer.write_batch` on one connection set up as the worker sets it
up, into a fresh database (`bench_writer`) holding the benchmark catalogue (10,000 items,
1,000 stores). CPU is the PostgreSQL backend's (utime + stime from /proc, so PostgreSQL must
run on this machine) and this process's, over 20 to 1,000 batches (20,000 sales where that fits) per size.
It shows what a transaction costs whatever its size (the fixed part) and per sale.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg

from bench import common
from worker import writer


def backend_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(url: str, sizes: list[int], items: int, stores: int) -> list[list[str]]:
    conn = await asyncpg.connect(url, server_settings=writer.SESSION_SETTINGS)
    await writer.prepare_connection(conn)
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    rng = random.Random(1)
    next_id = 1
    now_us = time.time_ns() // 1000
    rows_out = []
    try:
        for size in sizes:
            batches = max(20, min(1_000, 20_000 // size))
            pg0, own0, wall0 = backend_cpu_s(pid), time.process_time(), time.perf_counter()
            for _ in range(batches):
                rows = [
                    (next_id + i, now_us, rng.randint(1, items), rng.randint(1, stores), 100, 1, None, now_us, 100)
                    for i in range(size)
                ]
                next_id += size
                result = await writer.write_batch(conn, rows)
                assert result.written == size, result
            pg, own, wall = backend_cpu_s(pid) - pg0, time.process_time() - own0, time.perf_counter() - wall0
            sales = batches * size
            common.log(f"{size} sales per batch: {wall / batches * 1000:.2f} ms per batch")
            rows_out.append(
                [
                    f"{size:,}",
                    str(batches),
                    f"{wall / batches * 1000:.2f}",
                    f"{pg / batches * 1000:.2f}",
                    f"{pg / sales * 1e6:.1f}",
                    f"{own / sales * 1e6:.1f}",
                    f"{sales / wall:,.0f}",
                ]
            )
    finally:
        await conn.close()
    return rows_out


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,50,300,1000,20000,100000", help="sales per batch, comma-separated")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    url = common.create_database("bench_writer", args.keep)
    common.seed_product(url, args.items, args.stores, 0)
    rows = asyncio.run(measure(url, sizes, args.items, args.stores))
    common.header(f"The worker's batch write alone ({args.items} items, {args.stores} stores)")
    print(
        common.table(
            [
                "sales per batch",
                "batches",
                "wall ms per batch",
                "PostgreSQL CPU ms per batch",
                "PostgreSQL CPU µs per sale",
                "worker CPU µs per sale",
                "sales/s (one connection)",
            ],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
