"""Benchmark 1: POST /sales/ with 64 connections (wrk), baseline vs product, every 2xx stored.

    python -m bench.post_sales --duration 30

Starts the baseline (`python -m bench.baseline`) and the product (`python -m api` +
`python -m worker`) on their own databases and Redis DB 12, seeds both with the same
catalogue (10,000 items, 1,000 stores), runs the same wrk load against each in turn, waits
for the product's queue to drain, and compares the rows added to `sales` with wrk's 2xx count.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from bench.common import log, ms, ratio  # noqa: E402


def run_post(port: int, url: str, *, duration: float, connections: int, threads: int, items: int,
             stores: int, drain_port: int | None, warmup: float) -> dict:
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
    verdict = ("OK: every 2xx stored" if ok else
               "MISMATCH: fewer rows than 2xx answers" if extra < 0 else
               "MISMATCH: more rows than 2xx answers + requests in flight at stop")
    return (f"{name}: 2xx = {stats['ok']}, rows added = {stats['added']} (difference {extra:+d}; up to "
            f"{connections} requests in flight when wrk stops may be stored without wrk counting them), "
            f"non-2xx = {stats['status']}, socket errors = {stats['socket_errors']} -> {verdict}"), ok


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30, help="seconds of load per system")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of load before measuring (0: none)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--ceiling-port", type=int, default=18070)
    args = parser.parse_args(argv)
    common.ensure_tools("wrk")

    product_url, baseline_url = common.prepare_databases(args)
    baseline = common.start_baseline(baseline_url, args.baseline_port)
    api, worker = common.start_product(product_url, args.product_port)

    kwargs = dict(duration=args.duration, connections=args.connections, threads=args.threads,
                  items=args.items, stores=args.stores, warmup=args.warmup)
    log("load on the baseline")
    base = run_post(args.baseline_port, baseline_url, drain_port=None, **kwargs)
    log("load on the product")
    prod = run_post(args.product_port, product_url, drain_port=args.product_port, **kwargs)
    log("load on the ceiling (aiohttp JSON echo, stores nothing)")
    ceiling = common.Service("ceiling", [common.PYTHON, "-m", "bench.ceiling"],
                             {"PORT": str(args.ceiling_port)}, args.ceiling_port)
    common.on_exit(ceiling.stop)
    ceiling.wait_http("/")
    ceil = common.wrk(args.ceiling_port, "/sales/", "bench/post_sale.lua", args.duration, args.connections,
                      args.threads, {"ITEMS": str(args.items), "STORES": str(args.stores)})
    ceiling.stop()

    common.header("POST /sales/ (wrk, %d connections, %g s per system)" % (args.connections, args.duration))
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
    print(f"\nCeiling on this machine, same run and load: a bare aiohttp JSON echo (`bench/ceiling.py`, "
          f"2 processes, stores nothing): {ceil['ok_rps']:.0f} req/s, p50 {ms(ceil['p50_us'])} ms, "
          f"p99 {ms(ceil['p99_us'])} ms; the product reaches {prod['ok_rps'] / ceil['ok_rps']:.0%} of it.")
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
