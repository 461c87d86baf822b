"""What a synchronous PostgreSQL standby costs per sale: the same load without and with one.

    python -m bench.standby --duration 10 --rounds 3

A throwaway primary (initdb on a free port, fsync and full_page_writes on, as in production)
and a streaming standby of it (pg_basebackup, `tests/servers.py`), the product on the primary
through the multi-host URL a deployment with a standby uses (primary, standby,
`target_session_attrs=read-write`). Rounds alternate two modes, each shape of load in each:

- no standby: the standby stopped, `synchronous_standby_names` empty: a lone PostgreSQL;
- sync standby: the standby streaming and `synchronous_standby_names = 'ANY 1 (standby)'`
  (`synchronous_commit = on`): every worker COMMIT waits until the standby has flushed it.

Per round: sales/s written end to end (rows added / time from the start of wrk until the queue
is drained) and CPU µs per sale of the worker, the primary's processes (backends, WAL writer,
walsender...) and the standby's (walreceiver, startup process replaying). The table gives the
medians of the rounds and the ratio sync/none. Loads as in `bench.capacity` (keyed sales, as
tills send them): one per POST /sales/ on 64 connections, and POST /sales/batch/ of 1,000 on
16. The machine's shared PostgreSQL is not used; Redis is the benchmark's own (AOF, fsync always).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.common import log
from bench.workers import cpu_seconds
from tests.servers import PgServer

MODES = ("no standby", "sync standby")
SETTINGS = {"fsync": "on", "full_page_writes": "on", "max_connections": "200", "shared_buffers": "256MB"}


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    return {pid: cpu_seconds([pid]) for pid in pids}


def used_since(before: dict[int, float], pids: list[int]) -> float:
    """CPU seconds the processes used since `before` (one started since counts whole)."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in cpu_by_pid(pids).items())


def set_mode(mode: str, primary: PgServer, standby: PgServer) -> None:
    if mode == "sync standby":
        standby.ensure_running()
        primary.psql("ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (standby)'")
        primary.psql("SELECT pg_reload_conf()")
        wanted = "quorum"
    else:
        primary.psql("ALTER SYSTEM SET synchronous_standby_names = ''")
        primary.psql("SELECT pg_reload_conf()")
        standby.stop()
        wanted = ""
    deadline = time.monotonic() + 60
    while primary.psql("SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby'") != wanted:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{mode}: pg_stat_replication does not show {wanted!r}")
        time.sleep(0.1)


def run_shape(shape: dict, args, url: str, api, worker, primary: PgServer, standby: PgServer) -> dict:
    env = {
        "ITEMS": str(args.items),
        "STORES": str(args.stores),
        "BATCH": str(args.batch),
        "KEYED": "1",
        "KEY_PREFIX": f"k{time.time_ns()}",
    }
    before_sales = common.count_sales(url)
    primary_pids, standby_pids = primary.pids(), standby.pids()
    cpu = {
        "worker": cpu_by_pid(worker.pids()),
        "primary": cpu_by_pid(primary_pids),
        "standby": cpu_by_pid(standby_pids),
    }
    started = time.monotonic()
    load = common.wrk(
        args.product_port, shape["path"], shape["script"], args.duration, shape["connections"], args.threads, env
    )
    common.wait_drained(args.product_port)
    seconds = time.monotonic() - started
    used = {
        "worker": used_since(cpu["worker"], worker.pids()),
        "primary": used_since(cpu["primary"], primary.pids()),
        "standby": used_since(cpu["standby"], standby.pids()),
    }
    stored = common.count_sales(url) - before_sales
    accepted = load["ok"] * shape["per_request"]
    if not 0 <= stored - accepted <= (shape["connections"] + load["socket_errors"]) * shape["per_request"]:
        raise RuntimeError(f"{shape['name']}: {accepted} sales answered 2xx but {stored} stored")
    return {
        "rate": stored / seconds,
        "cmd": load["cmd"],
        **{f"{name}_us": value * 1e6 / stored for name, value in used.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds of load per shape, mode and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1000, help="sales per batch request")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    args = parser.parse_args(argv)
    common.ensure_tools("wrk")

    primary = PgServer(settings=SETTINGS, prefix="bench-primary-")
    common.on_exit(primary.destroy)
    primary.start()
    standby = primary.make_standby(name="standby")
    common.on_exit(standby.destroy)
    standby.start()
    log(f"primary on port {primary.port}, standby on port {standby.port} (fsync on)")
    common.PG_ADMIN_URL = primary.url()
    url = common.create_database("bench_product", keep=True)  # dropped with the server
    url = f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/bench_product"
    url += "?target_session_attrs=read-write"
    common.clean_redis()
    if not args.keep:
        common.on_exit(common.clean_redis)
    common.seed_product(url, args.items, args.stores, 0)
    api, worker = common.start_product(url, args.product_port)

    shapes = [
        {
            "name": "single, keyed",
            "path": "/sales/",
            "script": "bench/post_sale.lua",
            "connections": 64,
            "per_request": 1,
        },
        {
            "name": f"batch of {args.batch}, keyed",
            "path": "/sales/batch/",
            "script": "bench/post_batch.lua",
            "connections": 16,
            "per_request": args.batch,
        },
    ]
    results: dict[tuple[str, str], list[dict]] = {(s["name"], m): [] for s in shapes for m in MODES}
    warm = argparse.Namespace(**{**vars(args), "duration": 3})
    for shape in shapes:  # connection pools, the catalogue, the first partitions
        run_shape(shape, warm, url, api, worker, primary, standby)
    for round_no in range(args.rounds):
        for mode in MODES if round_no % 2 == 0 else MODES[::-1]:
            set_mode(mode, primary, standby)
            for shape in shapes:
                log(f"round {round_no + 1}/{args.rounds}: {mode}, {shape['name']}")
                results[(shape["name"], mode)].append(run_shape(shape, args, url, api, worker, primary, standby))

    common.header(
        f"A synchronous standby: cost per sale ({args.rounds} rounds of {args.duration:g} s per shape and mode, "
        f"modes alternating, median; {os.cpu_count()} cores shared by everything, the standby and wrk included)"
    )
    fields = [
        ("sales/s written", "rate", "{:,.0f}"),
        ("worker µs/sale", "worker_us", "{:.1f}"),
        ("PostgreSQL primary µs/sale", "primary_us", "{:.1f}"),
        ("PostgreSQL standby µs/sale", "standby_us", "{:.1f}"),
    ]
    rows = []
    for shape in shapes:
        for label, field, fmt in fields:
            none, sync = (statistics.median(r[field] for r in results[(shape["name"], m)]) for m in MODES)
            each = [", ".join(fmt.format(r[field]) for r in results[(shape["name"], m)]) for m in MODES]
            rows.append([shape["name"], label, fmt.format(none), fmt.format(sync), common.ratio(sync, none), *each])
    print(common.table(["load", "metric (median)", *MODES, "ratio sync/none", *(f"rounds, {m}" for m in MODES)], rows))
    print("\nwrk commands (last round):\n")
    for shape in shapes:
        print(f"- {shape['name']}: `{results[(shape['name'], MODES[1])][-1]['cmd']}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
