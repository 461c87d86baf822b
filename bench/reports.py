"""Benchmark 4: the reports at 10 thousand, 1 million and 10 million sales.

    python -m bench.reports                       # sizes 10000,1000000,10000000
    python -m bench.reports --sizes 10000,1000000 # skip 10 million
    python -m bench.reports --endpoints periods   # only the from/to reports (a year ending today)

For each size the product's database is seeded with the CLI (`python -m shared.seed --items
10000 --stores 1000 --sales N --seed 1`) and the same stores, items and sales are copied
(binary COPY) into the baseline's schema, so both answer over the same data (their answers
are compared). Then, per system and endpoint: single-request latency (median and p99 of
--requests sequential requests on one keep-alive connection, after --warmup-requests; the
baseline stops early after --latency-budget seconds); for the product the same requests each
right after a change of everything (a rebuild: nothing from memory) and each right after the
NOTIFYs of a worker commit that added to today at --store-id, with its deltas (what tills cause all day);
and throughput under 64 connections
(wrk, --duration seconds). After each wrk run the server may still be working off requests
whose client is gone (the baseline at 1M+ sales: minutes); those queries are cancelled
(pg_cancel_backend) before the next measurement, unless --no-cancel.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import http.client
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg

from bench import common
from bench.common import log, percentile, ratio
from shared import report_changes

# One transaction: a writer's change and its deltas (shared.report_changes), a delta of nothing
# to item 1 at store $4 now.
COMMIT_WITH_DELTAS = """
SELECT pg_notify($1, $2),
       pg_notify($3, json_build_object(
           'xid', pg_current_xact_id()::text, 'chunks', 1,
           'rows', json_build_array(json_build_array(local::date, extract(hour FROM local)::int, $4::int, 1, 0, 0, 0))
       )::text)
FROM (SELECT now() AT TIME ZONE (SELECT timezone FROM report_settings) AS local) AS now_here
"""


class RollupsChanged:
    """Calling it tells the product its rollups changed, so the next answer is not taken from
    the report cache as it was. `store_id` None: anything changed (a rebuild: every report is
    computed whole again); else the NOTIFYs of a worker commit that added to today at that store,
    with its deltas (what tills cause all day: a period reaching today is its closed days, kept,
    and today, which the API keeps from the deltas). The delta adds nothing: the tables stay as
    the baseline's, whose answers the product's are compared with."""

    def __init__(self, database_url: str, store_id: int | None = None):
        self._loop = asyncio.new_event_loop()
        self._conn = self._loop.run_until_complete(asyncpg.connect(database_url))
        self._store_id = store_id

    def __call__(self) -> None:
        if self._store_id is None:
            self._loop.run_until_complete(self._conn.execute("SELECT pg_notify($1, '')", report_changes.CHANNEL))
            return
        now_us = time.time_ns() // 1000
        payload = report_changes.payload(now_us, now_us, [self._store_id], deltas=True)
        self._loop.run_until_complete(
            self._conn.execute(
                COMMIT_WITH_DELTAS, report_changes.CHANNEL, payload, report_changes.DELTAS_CHANNEL, self._store_id
            )
        )

    def close(self) -> None:
        self._loop.run_until_complete(self._conn.close())
        self._loop.close()


def sequential(port: int, path: str, requests: int, warmup: int, budget_s: float, before_each=None) -> dict:
    """Latencies (ms) of sequential GETs on one keep-alive connection (`before_each()` untimed)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    latencies: list[float] = []
    body = b""
    try:
        for _ in range(warmup):
            conn.request("GET", path)
            conn.getresponse().read()
        started = time.monotonic()
        for _ in range(requests):
            if before_each is not None:
                before_each()
            t0 = time.perf_counter()
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            latencies.append((time.perf_counter() - t0) * 1000)
            if resp.status != 200:
                raise RuntimeError(f"GET {path} on :{port} answered {resp.status}: {body[:200]!r}")
            if time.monotonic() - started > budget_s and len(latencies) >= 5:
                break
    finally:
        conn.close()
    return {
        "n": len(latencies),
        "median": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "body": json.loads(body),
    }


def under_load_p99(load: dict, duration: float) -> str:
    if load["ok"] == 0:
        return f"none answered in {duration:g} s"
    return common.ms(load["p99_us"])


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,1000000,10000000", help="sale counts, comma-separated")
    parser.add_argument("--requests", type=int, default=200, help="sequential requests for the latency")
    parser.add_argument("--warmup-requests", type=int, default=10)
    parser.add_argument(
        "--latency-budget",
        type=float,
        default=60,
        help="stop the sequential requests after this many seconds (slow baseline)",
    )
    parser.add_argument("--duration", type=float, default=10, help="seconds of wrk per system and endpoint")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--cnt", type=int, default=10)
    parser.add_argument(
        "--endpoints",
        choices=("all", "classic", "periods"),
        default="all",
        help="classic: /stores/top/?mm and /items/top/; periods: the from/to reports",
    )
    parser.add_argument("--period-days", type=int, default=365, help="length of the from/to period, ending today")
    parser.add_argument("--store-id", type=int, default=1, help="the store of the one-store reports")
    parser.add_argument(
        "--no-cancel",
        action="store_true",
        help="after each wrk run, wait for the server's leftover queries instead of cancelling them",
    )
    args = parser.parse_args(argv)
    common.ensure_tools("wrk")
    sizes = [int(s) for s in args.sizes.split(",") if s]

    today = dt.datetime.now(dt.UTC).date()
    period = f"from={today - dt.timedelta(days=args.period_days - 1)}&to={today}"
    paths = {}
    if args.endpoints in ("all", "classic"):
        paths |= {
            "/stores/top/": f"/stores/top/?cnt={args.cnt}&mm={today.month}",
            "/items/top/": f"/items/top/?cnt={args.cnt}",
        }
    if args.endpoints in ("all", "periods"):
        paths |= {
            f"/stores/top/ ({args.period_days} days)": f"/stores/top/?cnt={args.cnt}&{period}",
            f"/items/top/ ({args.period_days} days)": f"/items/top/?cnt={args.cnt}&{period}",
            f"/items/top/ (one store, {args.period_days} days)": (
                f"/items/top/?cnt={args.cnt}&store_id={args.store_id}&{period}"
            ),
            f"/stores/{{id}}/report/ ({args.period_days} days)": f"/stores/{args.store_id}/report/?{period}",
            f"/reports/totals/ ({args.period_days} days)": f"/reports/totals/?{period}",
            f"/reports/hours/ ({args.period_days} days)": f"/reports/hours/?{period}",
            f"/reports/hours/ (one store, {args.period_days} days)": (
                f"/reports/hours/?store_id={args.store_id}&{period}"
            ),
        }

    product_url, baseline_url = common.prepare_databases(args)
    baseline = common.start_baseline(baseline_url, args.baseline_port)
    api, _ = common.start_product(product_url, args.product_port, worker=False)
    systems = {"baseline": args.baseline_port, "product": args.product_port}

    results: dict = {}
    notes: list[str] = []
    commands: list[str] = []
    for size in sizes:
        seed_s = common.seed_product(product_url, args.items, args.stores, size)
        copy_s = common.copy_to_baseline(product_url, baseline_url, with_sales=True)
        log(f"{size} sales: seeded product in {seed_s:.1f} s, copied to the baseline in {copy_s:.1f} s")
        notes.append(
            f"{size:,} sales: product seeded with the CLI in {seed_s:.1f} s; copied to the baseline in {copy_s:.1f} s"
        )
        for endpoint, path in paths.items():
            answers = {}
            for name, port in systems.items():
                log(f"{size} sales, {name} {path}: sequential")
                lat = sequential(
                    port, path, args.requests, args.warmup_requests if name == "product" else 2, args.latency_budget
                )
                answers[name] = lat.pop("body")
                log(f"{size} sales, {name} {path}: wrk")
                load = common.wrk(
                    port, path, "bench/get.lua", args.duration, args.connections, args.threads, timeout_s=10
                )
                if args.no_cancel:
                    idle_s, cancelled = common.wait_idle(f"bench_{name}"), 0
                else:
                    idle_s, cancelled = common.cancel_until_idle(f"bench_{name}")
                if cancelled or (args.no_cancel and idle_s > 1):
                    notes.append(
                        f"{size:,} sales, {endpoint}, {name}: still running queries for requests "
                        f"whose client (wrk) was gone: {cancelled} cancelled, {idle_s:.1f} s until idle"
                    )
                commands.append(f"{name}, {size} sales: `{load['cmd']}`")
                results[(size, endpoint, name)] = {**lat, "load": load}
                if name == "product":  # the same requests, each right after a change announced
                    for kind, store_id in (("cold", None), ("today", args.store_id)):
                        log(f"{size} sales, product {path}: sequential, after each {kind} change")
                        changed = RollupsChanged(product_url, store_id)
                        try:
                            results[(size, endpoint, name)][kind] = sequential(
                                port, path, args.requests, 0, args.latency_budget, before_each=changed
                            )
                        finally:
                            changed.close()
            same = answers["baseline"] == answers["product"]
            if not same:
                notes.append(
                    f"{size:,} sales, {endpoint}: the answers DIFFER: baseline {str(answers['baseline'])[:300]}... "
                    f"product {str(answers['product'])[:300]}..."
                )
            else:
                notes.append(
                    f"{size:,} sales, {endpoint}: baseline and product give the same answer "
                    f"({len(answers['product'])} rows)"
                )

    common.header(f"Reports (GET {', '.join(paths.values())}), {args.stores} stores, {args.items} items")
    rows = []
    for size in sizes:
        for endpoint in paths:
            b, p = results[(size, endpoint, "baseline")], results[(size, endpoint, "product")]
            bl, pl = b["load"], p["load"]
            rows.append(
                [
                    f"{size:,}",
                    endpoint,
                    "median latency (ms)",
                    f"{b['median']:.2f}",
                    f"{p['median']:.2f}",
                    ratio(p["median"], b["median"]),
                ]
            )
            rows.append(["", "", "p99 latency (ms)", f"{b['p99']:.2f}", f"{p['p99']:.2f}", ratio(p["p99"], b["p99"])])
            rows.append(["", "", "sequential requests", str(b["n"]), str(p["n"]), ""])
            rows.append(
                [
                    "",
                    "",
                    "median / p99 latency, uncached: after a change of everything (ms)",
                    "-",
                    f"{p['cold']['median']:.2f} / {p['cold']['p99']:.2f}",
                    "",
                ]
            )
            rows.append(
                [
                    "",
                    "",
                    f"median / p99 latency, after a worker commit adding to today at store {args.store_id} (ms)",
                    "-",
                    f"{p['today']['median']:.2f} / {p['today']['p99']:.2f}",
                    "",
                ]
            )
            rows.append(
                [
                    "",
                    "",
                    f"req/s, {args.connections} connections (2xx)",
                    f"{bl['ok_rps']:.0f}",
                    f"{pl['ok_rps']:.0f}",
                    ratio(pl["ok_rps"], bl["ok_rps"]),
                ]
            )
            rows.append(
                [
                    "",
                    "",
                    "p99 under load (ms)",
                    under_load_p99(bl, args.duration),
                    under_load_p99(pl, args.duration),
                    "",
                ]
            )
            rows.append(
                [
                    "",
                    "",
                    "errors under load (non-2xx / socket)",
                    f"{bl['status']} / {bl['socket_errors']}",
                    f"{pl['status']} / {pl['socket_errors']}",
                    "",
                ]
            )
    print(common.table(["sales", "endpoint", "metric", "baseline", "product", "ratio product/baseline"], rows))
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        print(f"\nProduct latency growth from {small:,} to {large:,} sales (median, p99):\n")
        for endpoint in paths:
            a, z = results[(small, endpoint, "product")], results[(large, endpoint, "product")]
            print(
                f"- {endpoint}: median {z['median'] / a['median']:.2f}x, p99 {z['p99'] / a['p99']:.2f}x; "
                f"uncached median {z['cold']['median'] / a['cold']['median']:.2f}x, "
                f"p99 {z['cold']['p99'] / a['cold']['p99']:.2f}x; "
                f"after a commit today median {z['today']['median'] / a['today']['median']:.2f}x, "
                f"p99 {z['today']['p99'] / a['today']['p99']:.2f}x"
            )
    print("\nData:\n")
    for note in notes:
        print(f"- {note}")
    print("\nwrk commands:\n")
    for cmd in commands:
        print(f"- {cmd}")
    for svc in (api, baseline) if args.no_cancel else (api,):
        errors = svc.errors_in_log()
        if errors:
            print(f"\n{svc.name} logged {len(errors)} error lines, first: `{errors[0][:300]}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
