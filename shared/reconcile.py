"""Reconciliation: recount the rollups from raw sales, report any drift, and repair it.

    python -m shared.reconcile            # print per-table drift; exit 1 if there is any
    python -m shared.reconcile --repair   # and rebuild the rollups (one transaction); exit 0 when clean

Drift is the number of rollup rows that differ from a recount of `sales` (missing, extra or
with other totals), per table (shared.rollups.drift). The repair holds a SHARE lock on
`sales` while it rebuilds, so the worker's batches wait a moment instead of racing it, and
readers keep seeing the old rollups until the repair commits.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import asyncpg

from shared import db, rollups
from shared.settings import Settings


async def check(conn: asyncpg.Connection) -> dict[str, int]:
    """Per-table drift, from one consistent snapshot."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        return await rollups.drift(conn)


async def repair(conn: asyncpg.Connection) -> dict[str, int]:
    """Rebuild every rollup from raw sales in one transaction; the drift left (all zeros)."""
    async with conn.transaction():
        await conn.execute("LOCK TABLE sales IN SHARE MODE")
        await rollups.rebuild(conn)
        return await rollups.drift(conn)


def _show(title: str, drift: dict[str, int]) -> None:
    print(title)
    for table, rows in drift.items():
        print(f"  {table:<16} {rows:>8} row(s) differ")


async def run(database_url: str, *, do_repair: bool) -> int:
    conn = await db.connect(database_url, timeout=30)
    try:
        drift = await check(conn)
        _show("drift (rollup rows that differ from a recount of sales):", drift)
        if not any(drift.values()):
            print("rollups match the raw sales")
            return 0
        if not do_repair:
            print("rollups drift from the raw sales; run with --repair to rebuild them")
            return 1
        after = await repair(conn)
        _show("after repair:", after)
        if any(after.values()):
            print("rollups still drift after the repair")
            return 1
        print("rollups repaired")
        return 0
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.reconcile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repair", action="store_true", help="rebuild the rollups from raw sales if they drift")
    args = parser.parse_args(argv)
    return asyncio.run(run(Settings.from_env().database_url, do_repair=args.repair))


if __name__ == "__main__":
    sys.exit(main())
