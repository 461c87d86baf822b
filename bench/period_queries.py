"""The chain-wide period queries as they are and as they were before migration 010 (running totals
joined without the late rows), on the same database, interleaved in one run.

    python -m bench.period_queries --database-url postgresql://postgres@127.0.0.1:5432/bench_product

The database must hold seeded data (python -m shared.seed ...; e.g. the one bench.reports or
bench.reports_under_ingest leaves with --keep). Each query runs --runs times per shape, the shapes
alternating, over the 365 days ending today; the answers must be equal. Without late rows (demo
data has none) the difference is the price of the full join to the late rows' sums.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg

from api import reports

# The period totals before migration 010: the running totals' difference alone.
_BEFORE = """
SELECT e.{key}, e.income - coalesce(b.income, 0) AS income, e.units - coalesce(b.units, 0) AS units
FROM {table} e
LEFT JOIN {table} b ON b.{key} = e.{key} AND b.day = (SELECT least($1::date - 1, running_through) FROM report_settings)
WHERE e.day = (SELECT least($2::date, running_through) FROM report_settings)
"""
SHAPES = {
    "top items": (
        reports.TOP_ITEMS_PERIOD,
        f"""SELECT i.id, i.name, t.units AS sales_amount
FROM (SELECT item_id, units FROM ({_BEFORE.format(table="item_running", key="item_id")}) p
      WHERE units > 0 ORDER BY units DESC, item_id LIMIT $3) t
JOIN item i ON i.id = t.item_id ORDER BY t.units DESC, t.item_id""",
    ),
    "top stores": (
        reports.TOP_STORES_PERIOD,
        f"""SELECT s.id, s.address, t.income
FROM (SELECT store_id, income FROM ({_BEFORE.format(table="store_running", key="store_id")}) p
      WHERE units > 0 ORDER BY income DESC, store_id LIMIT $3) t
JOIN store s ON s.id = t.store_id ORDER BY t.income DESC, t.store_id""",
    ),
}


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    conn = await asyncpg.connect(args.database_url, server_settings={"jit": "off"})
    try:
        today = dt.datetime.now(dt.UTC).date()
        first = today - dt.timedelta(days=364)
        sales = await conn.fetchval("SELECT count(*) FROM sales")
        late = await conn.fetchval(
            "SELECT (SELECT count(*) FROM item_running_late) + (SELECT count(*) FROM store_running_late)"
        )
        print(f"{sales:,} sales, {late:,} late rows, {first} to {today}, {args.runs} runs per query, alternating\n")
        print("| report | before 010 (median / p90 ms) | now (median / p90 ms) | now / before |")
        print("| --- | --- | --- | --- |")
        for name, (now_sql, before_sql) in SHAPES.items():
            assert [tuple(r) for r in await conn.fetch(now_sql, first, today, 10)] == [
                tuple(r) for r in await conn.fetch(before_sql, first, today, 10)
            ], name
            times: dict[str, list[float]] = {"now": [], "before": []}
            for _ in range(args.runs):
                for label, sql in (("before", before_sql), ("now", now_sql)):
                    started = time.perf_counter()
                    await conn.fetch(sql, first, today, 10)
                    times[label].append((time.perf_counter() - started) * 1000)
            stats = {k: (statistics.median(v), sorted(v)[int(len(v) * 0.9)]) for k, v in times.items()}
            print(
                f"| {name} | {stats['before'][0]:.2f} / {stats['before'][1]:.2f} | {stats['now'][0]:.2f} / "
                f"{stats['now'][1]:.2f} | {stats['now'][0] / stats['before'][0]:.2f}x |"
            )
    finally:
        await conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
