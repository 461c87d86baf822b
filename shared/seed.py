"""Fill the database with demo data, with a progress bar.

    python -m shared.seed --items 10000 --stores 1000 --sales 10000000
"""  # fmt: skip  # else ruff format unindents the example above

from __future__ import annotations

import argparse
import asyncio
import time

from tqdm import tqdm

from shared import db, seeding
from shared.migrate import migrate
from shared.queue import purge
from shared.redis_client import connect_from_settings
from shared.settings import Settings


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Replace all data with demo items, stores and sales.")
    parser.add_argument("--items", type=int, default=50)
    parser.add_argument("--stores", type=int, default=50)
    parser.add_argument("--sales", type=int, default=3600, help="spread over the 12 months ending now")
    parser.add_argument("--seed", type=int, default=None, help="random seed, for repeatable data")
    parser.add_argument("--if-empty", action="store_true", help="do nothing when there are items already")
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    settings = Settings.from_env()
    conn = await db.connect(settings.database_url)
    try:
        await migrate(conn, settings.report_timezone)
        if args.if_empty and await conn.fetchval("SELECT EXISTS (SELECT 1 FROM item)"):
            print("database already holds data; left as it is")
            return
        started = time.perf_counter()
        with tqdm(total=args.sales, unit="sale", unit_scale=True, desc="sales") as bar:
            counts = await seeding.seed(
                conn,
                items=args.items,
                stores=args.stores,
                sales=args.sales,
                tz=settings.timezone,
                seed=args.seed,
                progress=bar.update,
            )
        redis = connect_from_settings(settings)
        try:
            await purge(redis, settings.queue_keys)
        finally:
            await redis.aclose()
    finally:
        await conn.close()
    print(
        f"seeded {counts['items']} items, {counts['stores']} stores, {counts['sales']} sales, "
        f"{counts['returns']} returns in {time.perf_counter() - started:.1f} s"
    )


if __name__ == "__main__":
    asyncio.run(main())
