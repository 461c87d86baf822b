"""A chain's catalogue at size: 100,000 items and 10,000 stores beside today's 10,000 and 1,000.

    python -m bench.catalogue --duration 10

Two databases, seeded alike but for the catalogue's size; the large one then gets a price change
for every item (one CSV import through the API, as a weekly price list would), so every item has
a price history. For each, in one run: the API's memory (peak RSS of its serving processes) after
start and after serving GET /catalogue/; how long a whole load of the catalogue copy takes (at
start and every 30 s), and a load after one item's price changed (in this process, median of 5
each); a change through the API (PATCH, which answers once its own process has
reloaded) and the moment another API process shows it (GET /catalogue/?since=V); GET /catalogue/
(whole, then 304); and POST /sales/ under wrk (64 connections), the sales naming ids of the whole
catalogue, then only ids of today's (the catalogue's size alone: the first load also writes ten
times as many stores' rows). Every figure side by side with its ratio to the smaller catalogue.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.common import log, ratio
from bench.post_sales import run_post

ADMIN_TOKEN = "bench-admin-token-0123"
TODAY = "today (10,000 items, 1,000 stores)"
SIZES = {
    TODAY: (10_000, 1_000),
    "large (100,000 items, 10,000 stores)": (100_000, 10_000),
}


def _request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        started = time.perf_counter()
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        payload = response.read()
        return response.status, dict(response.getheaders()), payload, time.perf_counter() - started
    finally:
        conn.close()


def _admin(extra: dict | None = None) -> dict:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}", **(extra or {})}


async def _reload_seconds(url: str) -> tuple[list[float], list[float]]:
    """Seconds of a whole load of the catalogue copy (a new copy each time), and of a load after
    one item's price changed (a versioned write: only that item's rows), 5 of each."""
    from api.catalogue import Catalogue
    from shared import catalogue
    from shared.db import create_pool

    pool = await create_pool(url, max_size=2)
    try:
        whole = []
        for _ in range(5):
            copy = Catalogue(pool, url)
            started = time.perf_counter()
            await copy.reload()
            whole.append(time.perf_counter() - started)
        after_change = []
        for n in range(5):
            async with pool.acquire() as conn:
                await catalogue.write_items(conn, [catalogue.ItemEdit(id=5, price=1000 + n)])
            started = time.perf_counter()
            await copy.reload()
            after_change.append(time.perf_counter() - started)
            assert copy.item_prices[5] == 1000 + n
        return whole, after_change
    finally:
        await pool.close()


def _serving_rss(service: common.Service) -> float:
    rows = common.memory_rows({"api": service})
    return float(rows[0][3])


def measure(name: str, items: int, stores: int, args) -> dict:
    url = common.create_database(f"bench_catalogue_{items}", args.keep)
    common.clean_redis()
    common.seed_product(url, items, stores, 0)
    env_extra = {"ADMIN_TOKEN": ADMIN_TOKEN}
    port, other_port = 18_420, 18_421
    result: dict = {"name": name}
    api = common.Service(
        "product-api", [common.PYTHON, "-m", "api"], {**common.product_env(url, port), **env_extra}, port
    )
    api.wait_http("/health")
    if items > 10_000:  # a price list for every item: each then has a history
        lines = ["id,price"] + [f"{i},{200 + i % 1000}" for i in range(1, items + 1)]
        status, _, body, seconds = _request(
            port, "POST", "/catalogue/items.csv", "\n".join(lines).encode(), _admin({"Content-Type": "text/csv"})
        )
        assert status == 200, body
        result["import_s"] = seconds
        log(f"{name}: imported a price for each of {items} items in {seconds:.2f} s")
    result["rss_started"] = _serving_rss(api)
    status, headers, body, seconds = _request(port, "GET", "/catalogue/")
    assert status == 200
    result["get_first_ms"] = seconds * 1000
    result["body_mb"] = len(body) / 1e6
    version = json.loads(body)["version"]
    etag = headers["ETag"]
    result["get_cached_ms"] = statistics.median(_request(port, "GET", "/catalogue/")[3] for _ in range(5)) * 1000
    result["not_modified_ms"] = (
        statistics.median(_request(port, "GET", "/catalogue/", headers={"If-None-Match": etag})[3] for _ in range(5))
        * 1000
    )
    result["rss_served"] = _serving_rss(api)
    whole, after_change = asyncio.run(_reload_seconds(url))
    result["reload_ms"] = statistics.median(whole) * 1000
    result["reload_change_ms"] = statistics.median(after_change) * 1000
    other = common.Service(
        "product-api-2", [common.PYTHON, "-m", "api"], {**common.product_env(url, other_port), **env_extra}, other_port
    )
    other.wait_http("/health")
    patches, seen = [], []
    for n in range(5):
        started = time.perf_counter()
        status, _, body, seconds = _request(
            port, "PATCH", "/catalogue/items/7", json.dumps({"name": f"renamed {n}"}).encode(), _admin()
        )
        assert status == 200, body
        patches.append(seconds)
        while True:
            _, _, answer, _ = _request(other_port, "GET", f"/catalogue/?since={version}")
            if any(i["name"] == f"renamed {n}" for i in json.loads(answer)["items"]):
                break
            time.sleep(0.005)
        seen.append(time.perf_counter() - started)
    result["patch_ms"] = statistics.median(patches) * 1000
    result["seen_ms"] = statistics.median(seen) * 1000
    other.stop()
    worker = common.Service("product-worker", [common.PYTHON, "-m", "worker"], common.product_env(url, port), None)
    time.sleep(1.0)
    stats = run_post(
        port,
        url,
        duration=args.duration,
        connections=64,
        threads=2,
        items=items,
        stores=stores,
        drain_port=port,
        warmup=2,
    )
    result["post_rps"] = stats["rps"]
    result["post_p99_ms"] = stats.get("p99_us", 0) / 1000
    # The same load naming only today's ids (10,000 items, 1,000 stores): the catalogue's size
    # alone, where the load above also writes ten times as many stores' rollup rows.
    today_items, today_stores = SIZES[TODAY]
    stats = (
        stats
        if (items, stores) == SIZES[TODAY]
        else run_post(
            port,
            url,
            duration=args.duration,
            connections=64,
            threads=2,
            items=today_items,
            stores=today_stores,
            drain_port=port,
            warmup=2,
        )
    )
    result["post_today_ids_rps"] = stats["rps"]
    result["post_today_ids_p99_ms"] = stats.get("p99_us", 0) / 1000
    result["rss_after_post"] = _serving_rss(api)
    worker.stop()
    api.stop()
    return result


def main() -> int:
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds of POST /sales/ per catalogue")
    args = parser.parse_args()
    common.ensure_tools("wrk")
    results = [measure(name, items, stores, args) for name, (items, stores) in SIZES.items()]
    small, large = results
    common.header("The catalogue at size: the API's memory, reloads and POST /sales/")
    rows = []
    for label, key, fmt in (
        ("API serving processes, peak RSS after start (MB)", "rss_started", "{:.0f}"),
        ("the same after GET /catalogue/ (MB)", "rss_served", "{:.0f}"),
        ("the same after the POST load (MB)", "rss_after_post", "{:.0f}"),
        ("whole load of the catalogue copy (start, every 5 min), median of 5 (ms)", "reload_ms", "{:.1f}"),
        ("load after one item's price changed, median of 5 (ms)", "reload_change_ms", "{:.2f}"),
        ("PATCH an item: written, own process reloaded (ms, median of 5)", "patch_ms", "{:.1f}"),
        ("the change shown by another API process, from the PATCH (ms, median of 5)", "seen_ms", "{:.1f}"),
        ("GET /catalogue/ first after a change (ms)", "get_first_ms", "{:.1f}"),
        ("GET /catalogue/ again (ms, median of 5)", "get_cached_ms", "{:.1f}"),
        ("GET /catalogue/ with If-None-Match: 304 (ms, median of 5)", "not_modified_ms", "{:.2f}"),
        ("GET /catalogue/ body (MB)", "body_mb", "{:.2f}"),
        ("POST /sales/ (requests/s)", "post_rps", "{:.0f}"),
        ("POST /sales/ p99 (ms)", "post_p99_ms", "{:.2f}"),
        ("POST /sales/ naming today's ids only (requests/s)", "post_today_ids_rps", "{:.0f}"),
        ("POST /sales/ naming today's ids only, p99 (ms)", "post_today_ids_p99_ms", "{:.2f}"),
    ):
        rows.append([label, fmt.format(small[key]), fmt.format(large[key]), ratio(large[key], small[key])])
    print(common.table(["", small["name"], large["name"], "large / today"], rows))
    if "import_s" in large:
        print(
            "\nThe large catalogue's price list (a price for each of its items, one CSV) imported in "
            f"{large['import_s']:.2f} s."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
