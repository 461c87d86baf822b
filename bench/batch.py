"""Benchmark 2: POST /sales/batch/ with 1,000 sales per request: sales/s accepted and written.

    python -m bench.batch --duration 30

The product gets wrk with bench/post_batch.lua (each request a JSON array of 1,000 random
sales); "written" is measured end to end: from the start of the load until the product's
queue is drained (GET /metrics queue_depth_sales == 0), i.e. the last accepted sale is in
`sales`. The baseline has no batch endpoint: it gets the same kind of sales one per
`POST /sales/` (bench/post_sale.lua, 64 connections) for the same time; for it, accepted and
written are the same thing (the INSERT commits before the answer).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.common import log, ms, ratio


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30, help="seconds of load per system")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of load before measuring (0: none)")
    parser.add_argument("--batch", type=int, default=1000, help="sales per batch request")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections for the batch load")
    parser.add_argument("--baseline-connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    args = parser.parse_args(argv)
    common.ensure_tools("wrk")

    product_url, baseline_url = common.prepare_databases(args)
    baseline = common.start_baseline(baseline_url, args.baseline_port)
    api, worker = common.start_product(product_url, args.product_port)
    env = {"ITEMS": str(args.items), "STORES": str(args.stores), "BATCH": str(args.batch)}

    log("load on the baseline (one sale per request)")
    if args.warmup:
        common.wrk(
            args.baseline_port,
            "/sales/",
            "bench/post_sale.lua",
            args.warmup,
            args.baseline_connections,
            args.threads,
            env,
        )
        common.settle(baseline_url)
    before = common.count_sales(baseline_url)
    base = common.wrk(
        args.baseline_port,
        "/sales/",
        "bench/post_sale.lua",
        args.duration,
        args.baseline_connections,
        args.threads,
        env,
    )
    common.settle(baseline_url)
    base["added"] = common.count_sales(baseline_url) - before

    log("load on the product (batches)")
    if args.warmup:
        common.wrk(
            args.product_port, "/sales/batch/", "bench/post_batch.lua", args.warmup, args.connections, args.threads, env
        )
        common.settle(product_url, args.product_port)
    before = common.count_sales(product_url)
    started = time.monotonic()
    prod = common.wrk(
        args.product_port, "/sales/batch/", "bench/post_batch.lua", args.duration, args.connections, args.threads, env
    )
    load_ended = time.monotonic()
    depth_at_end = common.queue_depth(args.product_port)
    common.wait_drained(args.product_port)
    written_at = time.monotonic()
    prod["added"] = common.count_sales(product_url) - before

    accepted = prod["ok"] * args.batch
    accepted_per_s = accepted / prod["seconds"]
    written_per_s = prod["added"] / (written_at - started)
    base_per_s = base["ok_rps"]

    common.header(
        f"POST /sales/batch/ ({args.batch} sales per request, {args.connections} connections, "
        f"{args.duration:g} s); baseline: one sale per POST /sales/, {args.baseline_connections} connections"
    )
    rows = [
        ["sales/s accepted (2xx)", f"{base_per_s:.0f}", f"{accepted_per_s:.0f}", ratio(accepted_per_s, base_per_s)],
        [
            "sales/s written end to end",
            f"{base['added'] / base['seconds']:.0f}",
            f"{written_per_s:.0f}",
            ratio(written_per_s, base["added"] / base["seconds"]),
        ],
        ["requests/s (2xx)", f"{base['ok_rps']:.0f}", f"{prod['ok_rps']:.1f}", ""],
        ["request p50 latency (ms)", ms(base["p50_us"]), ms(prod["p50_us"]), ""],
        ["request p99 latency (ms)", ms(base["p99_us"]), ms(prod["p99_us"]), ""],
        ["non-2xx answers", str(base["status"]), str(prod["status"]), ""],
        ["socket errors/timeouts", str(base["socket_errors"]), str(prod["socket_errors"]), ""],
        ["sales accepted (2xx)", str(base["ok"]), str(accepted), ""],
        ["rows added to sales", str(base["added"]), str(prod["added"]), ""],
        ["queue depth when the load stopped", "-", str(depth_at_end), ""],
        ["last sale written, s after the load stopped", "-", f"{written_at - load_ended:.2f}", ""],
    ]
    print(common.table(["metric", "baseline", "product", "ratio product/baseline"], rows))
    extra_p = prod["added"] - accepted
    extra_b = base["added"] - base["ok"]
    ok_p = 0 <= extra_p <= args.connections * args.batch
    ok_b = 0 <= extra_b <= args.baseline_connections
    print(
        "\nStored check (rows added vs sales answered 2xx; requests in flight when wrk stops may be "
        "stored without wrk counting them):\n"
    )
    print(
        f"- baseline: {base['ok']} answered 2xx, {base['added']} rows added ({extra_b:+d}) -> "
        f"{'OK: every 2xx stored' if ok_b else 'MISMATCH'}"
    )
    print(
        f"- product: {accepted} sales answered 2xx, {prod['added']} rows added ({extra_p:+d}) -> "
        f"{'OK: every 2xx stored' if ok_p else 'MISMATCH'}"
    )
    common.print_memory({"product API": api, "product worker": worker, "baseline": baseline})
    print("\nwrk commands:\n")
    print(f"- baseline: `{base['cmd']}`")
    print(f"- product: `{prod['cmd']}`")
    for svc in (api, worker, baseline):
        errors = svc.errors_in_log()
        if errors:
            print(f"\n{svc.name} logged {len(errors)} error lines, first: `{errors[0][:300]}`")
    return 0 if ok_p and ok_b else 1


if __name__ == "__main__":
    sys.exit(main())
