"""Benchmark 3: end-to-end lag, from the 2xx answer to the sale being visible in the reports.

    python -m bench.lag --duration 30

For each system: first its maximum POST /sales/ rate is measured (wrk, 64 connections,
--probe-duration seconds; or give --product-max / --baseline-max), then a sustained load at
--load-fraction (80%) of it runs (wrk with bench/post_paced.lua, which paces requests with
wrk's delay() hook), and meanwhile probe sales are posted --probe-rate times a second. The
time each probe's answer arrived is recorded and `sales` is polled every --poll-ms for the
probes' ids; lag = first poll that sees the row - answer received. In the product a row
in `sales` is written in the same transaction as the rollups the reports read, so visible in
`sales` = visible in the reports. The baseline's INSERT commits before it answers, so its lag
is only the polling granularity (it is there as the reference of what "immediately" measures).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import asyncpg

from bench import common
from bench.common import log, ms, percentile, ratio


async def probe(port: int, url: str, duration: float, rate: float, poll_ms: float, items: int, stores: int) -> dict:
    """Post probe sales at `rate`/s for `duration` s; poll `sales` for them; lags in ms."""
    answered: dict[int, float] = {}  # sale id -> monotonic time its 2xx arrived
    lags: list[float] = []
    post_latencies: list[float] = []
    failures = 0
    conn = await asyncpg.connect(url)
    done_posting = asyncio.Event()

    async def poster(session: aiohttp.ClientSession):
        nonlocal failures
        interval = 1 / rate
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < duration:
            n += 1
            body = {"item_id": 1 + n % items, "store_id": 1 + n % stores}
            t0 = time.monotonic()
            try:
                async with session.post(f"http://127.0.0.1:{port}/sales/", json=body) as resp:
                    data = await resp.json()
                    t1 = time.monotonic()
                    if 200 <= resp.status < 300:
                        answered[int(data["id"])] = t1
                        post_latencies.append((t1 - t0) * 1000)
                    else:
                        failures += 1
            except (TimeoutError, aiohttp.ClientError):
                failures += 1
            await asyncio.sleep(max(0.0, start + n * interval - time.monotonic()))
        done_posting.set()

    async def poller():
        deadline = None
        while True:
            if answered:
                ids = list(answered)
                seen = await conn.fetch("SELECT id FROM sales WHERE id = ANY($1::bigint[])", ids)
                now = time.monotonic()
                for row in seen:
                    lags.append((now - answered.pop(row["id"])) * 1000)
            if done_posting.is_set():
                if not answered:
                    return
                deadline = deadline or time.monotonic() + 60
                if time.monotonic() > deadline:
                    return
            await asyncio.sleep(poll_ms / 1000)

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(poster(session), poller())
    await conn.close()
    return {"lags": lags, "never_seen": len(answered), "failures": failures, "post_latencies": post_latencies}


def run_system(name: str, port: int, url: str, max_rate: float | None, args) -> dict:
    env = {"ITEMS": str(args.items), "STORES": str(args.stores)}
    if max_rate is None:
        log(f"{name}: measuring the maximum rate ({args.probe_duration:g} s)")
        peak = common.wrk(port, "/sales/", "bench/post_sale.lua", args.probe_duration, 64, args.threads, env)
        max_rate = peak["ok_rps"]
        if name == "product":
            common.wait_drained(port)
    rate = max_rate * args.load_fraction
    log(f"{name}: sustained load at {rate:.0f}/s with probes")
    paced_env = {**env, "RATE": f"{rate:.1f}", "THREADS": str(args.threads)}
    holder: dict = {}

    def load():
        holder["stats"] = common.wrk(
            port, "/sales/", "bench/post_paced.lua", args.duration + 2, 64, args.threads, paced_env
        )

    thread = threading.Thread(target=load)
    thread.start()
    time.sleep(1.0)  # let the paced load settle before the first probe
    result = asyncio.run(probe(port, url, args.duration, args.probe_rate, args.poll_ms, args.items, args.stores))
    thread.join()
    result.update(stats=holder["stats"], max_rate=max_rate, target_rate=rate)
    if name == "product":
        common.wait_drained(port)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30, help="seconds of sustained load with probes")
    parser.add_argument("--probe-duration", type=float, default=10, help="seconds of the maximum-rate run")
    parser.add_argument("--product-max", type=float, help="skip measuring: the product's maximum rate")
    parser.add_argument("--baseline-max", type=float, help="skip measuring: the baseline's maximum rate")
    parser.add_argument("--load-fraction", type=float, default=0.8)
    parser.add_argument("--probe-rate", type=float, default=20, help="probe sales per second")
    parser.add_argument("--poll-ms", type=float, default=5, help="how often `sales` is polled for the probes")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    args = parser.parse_args(argv)
    common.ensure_tools("wrk")

    product_url, baseline_url = common.prepare_databases(args)
    baseline = common.start_baseline(baseline_url, args.baseline_port)
    api, worker = common.start_product(product_url, args.product_port)

    base = run_system("baseline", args.baseline_port, baseline_url, args.baseline_max, args)
    prod = run_system("product", args.product_port, product_url, args.product_max, args)

    common.header(
        f"End-to-end lag at {args.load_fraction:.0%} of the maximum rate ({args.duration:g} s, "
        f"{args.probe_rate:g} probes/s, polled every {args.poll_ms:g} ms)"
    )

    def f(v: float) -> str:
        return f"{v:.1f}"

    rows = [
        [
            "maximum POST /sales/ rate measured (2xx/s)",
            f"{base['max_rate']:.0f}",
            f"{prod['max_rate']:.0f}",
            ratio(prod["max_rate"], base["max_rate"]),
        ],
        ["target sustained rate (req/s)", f"{base['target_rate']:.0f}", f"{prod['target_rate']:.0f}", ""],
        ["achieved rate (2xx/s)", f"{base['stats']['ok_rps']:.0f}", f"{prod['stats']['ok_rps']:.0f}", ""],
        [
            "load p50 / p99 latency (ms)",
            f"{ms(base['stats']['p50_us'])} / {ms(base['stats']['p99_us'])}",
            f"{ms(prod['stats']['p50_us'])} / {ms(prod['stats']['p99_us'])}",
            "",
        ],
        ["probes seen", str(len(base["lags"])), str(len(prod["lags"])), ""],
        ["lag p50 (ms)", f(percentile(base["lags"], 50)), f(percentile(prod["lags"], 50)), ""],
        ["lag p99 (ms)", f(percentile(base["lags"], 99)), f(percentile(prod["lags"], 99)), ""],
        ["lag max (ms)", f(max(base["lags"], default=float("nan"))), f(max(prod["lags"], default=float("nan"))), ""],
        ["probes answered 2xx but not seen in 60 s", str(base["never_seen"]), str(prod["never_seen"]), ""],
        ["probes refused / failed", str(base["failures"]), str(prod["failures"]), ""],
        [
            "load non-2xx / socket errors",
            f"{base['stats']['status']} / {base['stats']['socket_errors']}",
            f"{prod['stats']['status']} / {prod['stats']['socket_errors']}",
            "",
        ],
    ]
    print(common.table(["metric", "baseline", "product", "ratio product/baseline"], rows))
    print("\nwrk commands (sustained load):\n")
    print(f"- baseline: `{base['stats']['cmd']}`")
    print(f"- product: `{prod['stats']['cmd']}`")
    for svc in (api, worker, baseline):
        errors = svc.errors_in_log()
        if errors:
            print(f"\n{svc.name} logged {len(errors)} error lines, first: `{errors[0][:300]}`")
    return 0 if prod["never_seen"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
