"""Benchmark 1: POST /sales/ with 64 connections (wrk), baseline vs product, every 2xx stored.

    python -m bench.post_sales --duration 30

Starts the baseline (`python -m bench.baseline`) and the product (`python -m api` +
`python -m worker`) on their own databases and Redis DB 12, seeds both with the same
catalogue (10,000 items, 1,000 stores), runs the same wrk load against each in turn, waits
for the product's queue to drain, and compares the rows added to `sales` with wrk's 2xx count.

    python -m bench.post_sales --replica --duration 10 --rounds 3

The cost of the replica rule instead: the product on its Redis alone (as with REDIS_URL only)
against the product with a replica attached to that Redis and REDIS_MIN_REPLICAS_ACKED=1 (each
flush waits for the replica: WAIT), the same load, rounds alternating; medians side by side.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.common import log, ms, ratio


def run_post(
    port: int,
    url: str,
    *,
    duration: float,
    connections: int,
    threads: int,
    items: int,
    stores: int,
    drain_port: int | None,
    warmup: float,
) -> dict:
    script = "bench/post_sale.lua"
    env = {"ITEMS": str(items), "STORES": str(stores)}
    if warmup:
        common.wrk(port, "/sales/", script, warmup, connections, threads, env)
        common.settle(url, drain_port)
    before = common.count_sales(url)
    stats = common.wrk(port, "/sales/", script, duration, connections, threads, env)
    drained = common.settle(url, drain_port)
    stats["drain_s"] = drained
    stats["added"] = common.count_sales(url) - before
    return stats


def stored_check(name: str, stats: dict, connections: int) -> tuple[str, bool]:
    extra = stats["added"] - stats["ok"]
    ok = 0 <= extra <= connections
    verdict = (
        "OK: every 2xx stored"
        if ok
        else "MISMATCH: fewer rows than 2xx answers"
        if extra < 0
        else "MISMATCH: more rows than 2xx answers + requests in flight at stop"
    )
    return (
        f"{name}: 2xx = {stats['ok']}, rows added = {stats['added']} (difference {extra:+d}; up to "
        f"{connections} requests in flight when wrk stops may be stored without wrk counting them), "
        f"non-2xx = {stats['status']}, socket errors = {stats['socket_errors']} -> {verdict}"
    ), ok


def start_replica(primary_port: int) -> subprocess.Popen:
    """A replica of the benchmark's Redis, durable as the primary (AOF, fsync always), in sync."""
    import redis as redis_sync

    port = _free_port()
    directory = tempfile.mkdtemp(prefix="bench-redis-replica-")
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            directory,
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--repl-diskless-sync-delay",
            "0",
            "--replicaof",
            "127.0.0.1",
            str(primary_port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    common.on_exit(shutil.rmtree, directory, True)
    common.on_exit(_stop, process)
    primary = redis_sync.Redis(port=primary_port)
    try:
        for _ in range(300):
            replicas = [v for k, v in primary.info("replication").items() if k.startswith("slave")]
            if any(isinstance(v, dict) and v.get("state") == "online" for v in replicas):
                log(f"replica on port {port} in sync with the benchmark's Redis")
                return process
            time.sleep(0.1)
    finally:
        primary.close()
    raise RuntimeError("the replica did not get in sync in 30 s")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=30)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def replica_cost(args) -> int:
    """The product without and with the replica rule, rounds alternating, medians compared."""
    if common.REDIS_BASE:
        log("--replica attaches a replica to the benchmark's own Redis: unset BENCH_REDIS_URL")
        return 2
    product_url, _ = common.prepare_databases(args)
    primary_port = urlparse(common.redis_url()).port
    kwargs = {
        "duration": args.duration,
        "connections": args.connections,
        "threads": args.threads,
        "items": args.items,
        "stores": args.stores,
        "warmup": args.warmup,
    }
    alone, replicated = "Redis alone (REDIS_URL only)", "replica + WAIT (REDIS_MIN_REPLICAS_ACKED=1)"
    runs: dict[str, list[dict]] = {alone: [], replicated: []}
    for round_no in range(1, args.rounds + 1):
        for name in (alone, replicated) if round_no % 2 else (replicated, alone):
            replica = start_replica(primary_port) if name == replicated else None
            # common.start_product passes our environment on; the rule is set for this run only
            os.environ["REDIS_MIN_REPLICAS_ACKED"] = "1" if replica else "0"
            try:
                api, worker = common.start_product(product_url, args.product_port)
            finally:
                del os.environ["REDIS_MIN_REPLICAS_ACKED"]
            log(f"round {round_no}: {name}")
            stats = run_post(args.product_port, product_url, drain_port=args.product_port, **kwargs)
            stats["errors"] = len(api.errors_in_log()) + len(worker.errors_in_log())
            runs[name].append(stats)
            api.stop()
            worker.stop()
            if replica:
                _stop(replica)

    def median(name: str, field: str) -> float:
        return statistics.median(run[field] for run in runs[name])

    def each(name: str, field: str, fmt) -> str:
        return ", ".join(fmt(run[field]) for run in runs[name])

    common.header(
        f"POST /sales/ with and without the replica rule (wrk, {args.connections:d} connections, "
        f"{args.duration:g} s x {args.rounds:d} rounds each)"
    )
    rows = []
    for label, field, fmt in (
        ("2xx requests/s", "ok_rps", lambda v: f"{v:.0f}"),
        ("p50 latency (ms)", "p50_us", ms),
        ("p90 latency (ms)", "p90_us", ms),
        ("p99 latency (ms)", "p99_us", ms),
    ):
        a, b = median(alone, field), median(replicated, field)
        rows.append([label, fmt(a), fmt(b), ratio(b, a), each(alone, field, fmt), each(replicated, field, fmt)])
    rows.append(
        [
            "non-2xx answers (sum)",
            str(sum(r["status"] for r in runs[alone])),
            str(sum(r["status"] for r in runs[replicated])),
            "",
            "",
            "",
        ]
    )
    print(
        common.table(
            ["metric (median of rounds)", alone, replicated, "ratio replica/alone", "rounds, alone", "rounds, replica"],
            rows,
        )
    )
    print("\nStored check, every round (rows added to `sales` after the queue drained, vs wrk's 2xx):\n")
    all_ok = True
    for name, stats_list in runs.items():
        for n, stats in enumerate(stats_list, 1):
            line, ok = stored_check(f"{name}, round {n}", stats, args.connections)
            all_ok &= ok
            print(f"- {line}")
    print(f"\nwrk command: `{runs[alone][0]['cmd']}`")
    return 0 if all_ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30, help="seconds of load per system")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of load before measuring (0: none)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--ceiling-port", type=int, default=18070)
    parser.add_argument(
        "--replica",
        action="store_true",
        help="instead of the baseline: the product without and with a Redis replica and the WAIT rule",
    )
    parser.add_argument("--rounds", type=int, default=3, help="with --replica: rounds of each (medians compared)")
    args = parser.parse_args(argv)
    common.ensure_tools("wrk")
    if args.replica:
        return replica_cost(args)

    product_url, baseline_url = common.prepare_databases(args)
    baseline = common.start_baseline(baseline_url, args.baseline_port)
    api, worker = common.start_product(product_url, args.product_port)

    kwargs = {
        "duration": args.duration,
        "connections": args.connections,
        "threads": args.threads,
        "items": args.items,
        "stores": args.stores,
        "warmup": args.warmup,
    }
    log("load on the baseline")
    base = run_post(args.baseline_port, baseline_url, drain_port=None, **kwargs)
    log("load on the product")
    prod = run_post(args.product_port, product_url, drain_port=args.product_port, **kwargs)
    log("load on the ceiling (aiohttp JSON echo, stores nothing)")
    ceiling = common.Service(
        "ceiling", [common.PYTHON, "-m", "bench.ceiling"], {"PORT": str(args.ceiling_port)}, args.ceiling_port
    )
    common.on_exit(ceiling.stop)
    ceiling.wait_http("/")
    ceil = common.wrk(
        args.ceiling_port,
        "/sales/",
        "bench/post_sale.lua",
        args.duration,
        args.connections,
        args.threads,
        {"ITEMS": str(args.items), "STORES": str(args.stores)},
    )
    ceiling.stop()

    common.header(f"POST /sales/ (wrk, {args.connections:d} connections, {args.duration:g} s per system)")
    rows = [
        ["2xx requests/s", f"{base['ok_rps']:.0f}", f"{prod['ok_rps']:.0f}", ratio(prod["ok_rps"], base["ok_rps"])],
        ["p50 latency (ms)", ms(base["p50_us"]), ms(prod["p50_us"]), ratio(prod["p50_us"], base["p50_us"])],
        ["p90 latency (ms)", ms(base["p90_us"]), ms(prod["p90_us"]), ratio(prod["p90_us"], base["p90_us"])],
        ["p99 latency (ms)", ms(base["p99_us"]), ms(prod["p99_us"]), ratio(prod["p99_us"], base["p99_us"])],
        ["max latency (ms)", ms(base["max_us"]), ms(prod["max_us"]), ratio(prod["max_us"], base["max_us"])],
        ["2xx answers", str(base["ok"]), str(prod["ok"]), ""],
        ["non-2xx answers", str(base["status"]), str(prod["status"]), ""],
        ["socket errors/timeouts", str(base["socket_errors"]), str(prod["socket_errors"]), ""],
        ["rows added to sales", str(base["added"]), str(prod["added"]), ""],
        ["settled after load (s)", f"{base['drain_s']:.2f}", f"{prod['drain_s']:.2f}", ""],
    ]
    print(common.table(["metric", "baseline", "product", "ratio product/baseline"], rows))
    print(
        f"\nCeiling on this machine, same run and load: a bare aiohttp JSON echo (`bench/ceiling.py`, "
        f"2 processes, stores nothing): {ceil['ok_rps']:.0f} req/s, p50 {ms(ceil['p50_us'])} ms, "
        f"p99 {ms(ceil['p99_us'])} ms; the product reaches {prod['ok_rps'] / ceil['ok_rps']:.0%} of it."
    )
    print("\nStored check (rows added to `sales` after the product's queue drained, vs wrk's 2xx):\n")
    all_ok = True
    for name, stats in (("baseline", base), ("product", prod)):
        line, ok = stored_check(name, stats, args.connections)
        all_ok &= ok
        print(f"- {line}")
    common.print_memory({"product API": api, "product worker": worker, "baseline": baseline})
    print("\nwrk commands:\n")
    print(f"- baseline: `{base['cmd']}`")
    print(f"- product: `{prod['cmd']}`")
    for svc in (api, worker, baseline):
        errors = svc.errors_in_log()
        if errors:
            print(f"\n{svc.name} logged {len(errors)} error lines, first: `{errors[0][:300]}`")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
