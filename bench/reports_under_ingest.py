"""Reports while tills sell: a rotation of report shapes from wrk, alone and beside steady
POST /sales/ at a fraction of its maximum, on this checkout and (with --before REV) an earlier
revision, in one run.

    python -m bench.reports_under_ingest                      # this checkout, 1 million sales
    python -m bench.reports_under_ingest --before 600dec0     # and revision 600dec0, alternately

Per revision: a fresh database seeded with the CLI (--items 10000 --stores 1000 --sales N), the
API and one worker. POST /sales/'s maximum is probed once (wrk -c64, unpaced, on this checkout)
and every run then posts at --load-fraction of it (bench/post_paced.lua), so both revisions
take the same load. Two rotations of eight report shapes each (bench/get_rotation.lua, one
connection thread, --connections): "live", periods that include today (this month's top
stores, a year's top stores and items, one store's items this month, a store's page, this
month's totals and hours, the trend), as the issue measured them; and "closed", periods that
ended before today (last month, yesterday). Each: wrk for --duration seconds alone, then again
beside the POST load. Reported: req/s, p50, p99, and what the POST load achieved; with
--per-shape S, also each shape on its own for S seconds beside the load.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.common import log


def rotations(today: dt.date) -> dict[str, list[str]]:
    month = today.replace(day=1)
    last_month_end = month - dt.timedelta(days=1)
    last_month = last_month_end.replace(day=1)
    year = f"from={today - dt.timedelta(days=364)}&to={today}"
    closed = f"from={last_month}&to={last_month_end}"
    yesterday = today - dt.timedelta(days=1)
    return {
        "live": [
            "/stores/top/?cnt=10",
            f"/stores/top/?{year}&cnt=10",
            f"/items/top/?{year}&cnt=10",
            f"/items/top/?store_id={{store}}&from={month}&to={today}",
            "/stores/{store}/report/",
            "/reports/totals/",
            "/reports/hours/",
            "/reports/trend/?months=12",
        ],
        "closed": [
            f"/stores/top/?mm={last_month.month}&year={last_month.year}&cnt=10",
            f"/stores/top/?{closed}&cnt=10",
            f"/items/top/?{closed}&cnt=10",
            f"/items/top/?store_id={{store}}&{closed}",
            f"/stores/{{store}}/report/?{closed}",
            f"/reports/totals/?{closed}",
            f"/reports/hours/?{closed}",
            f"/reports/totals/?from={yesterday}&to={yesterday}",
        ],
    }


def _reports(args, paths: list[str], duration: float | None = None) -> dict:
    return common.wrk(
        args.product_port,
        "/",
        "bench/get_rotation.lua",
        duration or args.duration,
        connections=args.connections,
        threads=1,
        env={"PATHS": "|".join(paths), "STORES": str(args.stores)},
    )


def _posts(args, rate: int, duration: float) -> dict:
    return common.wrk(
        args.product_port,
        "/",
        "bench/post_paced.lua",
        duration,
        connections=16,
        threads=1,
        env={"RATE": str(rate), "THREADS": "1", "ITEMS": str(args.items), "STORES": str(args.stores)},
    )


def probe_post_rate(args) -> float:
    stats = common.wrk(
        args.product_port,
        "/",
        "bench/post_sale.lua",
        8,
        connections=64,
        threads=2,
        env={"ITEMS": str(args.items), "STORES": str(args.stores)},
    )
    return stats["ok_rps"]


def _figures(stats: dict) -> list[str]:
    """req/s, p50 and p99 of a wrk run, as the tables show them."""
    return [f"{stats['ok_rps']:,.0f}", common.ms(stats["p50_us"]), common.ms(stats["p99_us"])]


def _each_shape_beside(args, rate: int, paths: list[str]) -> list[tuple[str, dict]]:
    """Each shape of a rotation alone from wrk for --per-shape seconds, all beside one POST load:
    which shapes the rotation's figure is made of."""
    seconds = args.per_shape
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        posting = pool.submit(_posts, args, rate, len(paths) * (seconds + 0.5) + 3)
        time.sleep(2)
        shapes = [(path, _reports(args, [path], seconds)) for path in paths]
        posting.result()
    return shapes


def measure(label: str, root: Path, args, rate: int | None) -> tuple[list[list[str]], list[list[str]], int]:
    """Rows of the results table for the product at `root`, rows of the per-shape table; the POST
    rate used."""
    common.PRODUCT_ROOT = root
    url = common.create_database("bench_product", args.keep)
    common.clean_redis()
    seeded = common.seed_product(url, args.items, args.stores, args.sales)
    log(f"{label}: seeded {args.sales:,} sales in {seeded:.1f} s")
    api, worker = common.start_product(url, args.product_port)
    rows = []
    shape_rows = []
    try:
        if rate is None:
            maximum = probe_post_rate(args)
            rate = int(maximum * args.load_fraction)
            log(f"POST /sales/ maximum {maximum:,.0f}/s: the load is {rate:,}/s")
            common.settle(url, args.product_port)
        today = dt.datetime.now(dt.UTC).date()  # REPORT_TIMEZONE is UTC here
        for name, paths in rotations(today).items():
            for path in paths:  # every shape answers (and is warm) before it is timed
                status, body = common.http_get(args.product_port, path.replace("{store}", "1"))
                if status != 200:
                    raise RuntimeError(f"{path}: {status} {body[:200]!r}")
            alone = _reports(args, paths)
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                posting = pool.submit(_posts, args, rate, args.duration + 3)
                time.sleep(2)  # the POST load reaches its pace first
                beside = _reports(args, paths)
                posted = posting.result()
            common.settle(url, args.product_port)
            if args.per_shape:
                for path, stats in _each_shape_beside(args, rate, paths):
                    shape_rows.append([label, name, path, *_figures(stats)])
                common.settle(url, args.product_port)
            for condition, stats, post_rps in (
                ("alone", alone, "—"),
                (f"beside {rate:,} POST/s", beside, f"{posted['ok_rps']:,.0f}"),
            ):
                bad = stats["requests"] - stats["ok"] + stats["socket_errors"]
                rows.append([label, name, condition, *_figures(stats), post_rps, str(bad)])
    finally:
        api.stop()
        if worker is not None:
            worker.stop()
    return rows, shape_rows, rate


def main() -> int:
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--sales", type=int, default=1_000_000)
    parser.add_argument("--duration", type=float, default=15)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--load-fraction", type=float, default=0.6)
    parser.add_argument(
        "--per-shape", type=float, default=0, metavar="SECONDS", help="also time each shape alone beside the load"
    )
    parser.add_argument("--before", metavar="REV", help="also measure this revision (a temporary git worktree)")
    args = parser.parse_args()
    common.ensure_tools("wrk")
    common.header("Reports beside live ingest")
    runs = [("this checkout (" + _short("HEAD", common.ROOT) + ")", common.ROOT)]
    if args.before:
        work = Path(tempfile.mkdtemp(prefix="bench-before-"))
        subprocess.run(
            ["git", "-C", str(common.ROOT), "worktree", "add", "-q", "--detach", str(work), args.before], check=True
        )
        common.on_exit(subprocess.run, ["git", "-C", str(common.ROOT), "worktree", "remove", "--force", str(work)])
        runs.append((f"before ({_short(args.before, common.ROOT)})", work))
    rows: list[list[str]] = []
    shape_rows: list[list[str]] = []
    rate = None
    for label, root in runs:
        measured, shapes, rate = measure(label, root, args, rate)
        rows += measured
        shape_rows += shapes
    print(
        common.table(
            ["revision", "rotation", "reports", "req/s", "p50", "p99", "POST/s achieved", "non-2xx or errors"], rows
        )
    )
    if shape_rows:
        print(f"\nEach shape alone beside {rate:,} POST/s, {args.per_shape:g} s each:\n")
        print(common.table(["revision", "rotation", "shape", "req/s", "p50", "p99"], shape_rows))
    print(
        f"\n{args.sales:,} sales, {args.items:,} items, {args.stores:,} stores; reports: wrk -t1 "
        f"-c{args.connections} -d{args.duration:g}s -s bench/get_rotation.lua; POST: wrk -t1 -c16 -s "
        f"bench/post_paced.lua at {args.load_fraction:.0%} of the probed maximum."
    )
    return 0


def _short(rev: str, root: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", rev], capture_output=True, text=True, check=True
    ).stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
