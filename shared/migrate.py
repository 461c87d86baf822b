"""Numbered plain-SQL migrations applied under an advisory lock.

Why not a library: the schema is a handful of plain .sql files, and what matters is that
several API processes starting at once apply each file exactly once; a PostgreSQL advisory
lock around a tiny runner does that with no extra dependency.

    python -m shared.migrate        # apply pending migrations by hand
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import re

import asyncpg

from shared import citus, db, partitions, rollups
from shared.settings import Settings

log = logging.getLogger(__name__)

MIGRATIONS_DIR = pathlib.Path(__file__).parent / "sql" / "migrations"
# Any constant works; it only has to be the same for every process of this service.
MIGRATION_LOCK_KEY = 0x5A1E5_0001

_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


def migration_files() -> list[tuple[int, str, pathlib.Path]]:
    found = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        match = re.fullmatch(r"(\d+)_(\w+)\.sql", path.name)
        if not match:
            raise RuntimeError(f"migration file name must look like 001_name.sql: {path.name}")
        found.append((int(match.group(1)), match.group(2), path))
    return found


async def migrate(conn: asyncpg.Connection, report_timezone: str = "UTC") -> list[int]:
    """Apply pending migrations, distribute the tables when the database is a Citus
    coordinator (shared.citus), make this month's and the next months' partitions of sales,
    and make the rollups match `report_timezone`.

    Returns the versions applied. Safe to call from many processes at once.
    """
    applied_now = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(_CREATE_LEDGER)
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, path in migration_files():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
            log.info("applied migration %03d_%s", version, name)
            applied_now.append(version)
        if await citus.has_citus(conn):
            await citus.distribute(conn)
        await partitions.ensure_ahead(conn)
        await rollups.ensure_timezone(conn, report_timezone)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return applied_now


async def _main() -> None:
    settings = Settings.from_env()
    conn = await db.connect(settings.database_url)
    try:
        applied = await migrate(conn, settings.report_timezone)
    finally:
        await conn.close()
    print(f"applied {len(applied)} migration(s)" + (f": {applied}" if applied else ""))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(_main())
