"""Migrations: applied once however many processes start together; the report zone re-cuts rollups."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import asyncpg
import pytest

from shared import rollups
from shared.migrate import migrate, migration_files
from shared.sale_ids import reserve_blocks
from tests.conftest import create_database, drop_database
from tests.recount import NO_DRIFT
from worker import writer


@pytest.fixture
async def empty_database_url():
    name = f"sales_empty_{uuid.uuid4().hex[:12]}"
    yield await create_database(name)
    await drop_database(name)


async def test_concurrent_migrate_on_an_empty_database_applies_each_migration_once(empty_database_url):
    connections = [await asyncpg.connect(empty_database_url) for _ in range(5)]
    try:
        applied = await asyncio.gather(*(migrate(conn, "UTC") for conn in connections))
        versions = [v for v, _, _ in migration_files()]
        assert versions
        assert sorted(v for run in applied for v in run) == versions  # each applied by exactly one caller
        rows = await connections[0].fetch("SELECT version, name FROM schema_migrations ORDER BY version")
        assert [(r["version"], r["name"]) for r in rows] == [(v, n) for v, n, _ in migration_files()]
        for table in ("item", "store", "sales", "store_monthly", "item_totals", "daily_totals", "dead_letter"):
            assert await connections[0].fetchval("SELECT to_regclass($1) IS NOT NULL", table), table
        # Nobody holds the migration lock afterwards, and running again applies nothing.
        assert (
            await connections[0].fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            == 0
        )
        assert await asyncio.gather(*(migrate(conn, "UTC") for conn in connections)) == [[]] * 5
        assert await connections[0].fetchval("SELECT count(*) FROM schema_migrations") == len(versions)
    finally:
        for conn in connections:
            await conn.close()


async def _write(conn, rows):
    await writer.prepare_connection(conn)
    await writer.write_batch(conn, rows)


def _us(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


async def test_changing_the_report_timezone_rebuilds_rollups(seed, db, database_url):
    await seed(items=2, stores=2)
    price = await db.fetchval("SELECT price FROM item WHERE id = 1")
    [start] = await reserve_blocks(db, 1)
    late_march = dt.datetime(2025, 3, 31, 20, 0, tzinfo=dt.UTC)  # 1 April 05:00 in Tokyo
    mid_march = dt.datetime(2025, 3, 15, 12, 0, tzinfo=dt.UTC)
    conn = await asyncpg.connect(database_url)
    try:
        await _write(
            conn,
            [
                (start, _us(late_march), 1, 1, price, 2, None, _us(late_march), price),
                (start + 1, _us(mid_march), 1, 2, price, 1, None, _us(mid_march), price),
            ],
        )
    finally:
        await conn.close()

    async def buckets():
        return [tuple(r) for r in await db.fetch("SELECT month, store_id, income FROM store_monthly ORDER BY 1, 2")]

    async def days():
        return [r["day"] for r in await db.fetch("SELECT day FROM daily_totals ORDER BY 1")]

    march, april = dt.date(2025, 3, 1), dt.date(2025, 4, 1)
    assert await buckets() == [(march, 1, 2 * price), (march, 2, price)]
    assert await days() == [dt.date(2025, 3, 15), dt.date(2025, 3, 31)]

    await migrate(db, "Asia/Tokyo")
    assert await db.fetchval("SELECT timezone FROM report_settings") == "Asia/Tokyo"
    assert await buckets() == [(march, 2, price), (april, 1, 2 * price)]
    assert await days() == [dt.date(2025, 3, 15), dt.date(2025, 4, 1)]
    assert await rollups.drift(db) == NO_DRIFT

    # Sales written while the zone is Tokyo are cut in Tokyo too.
    conn = await asyncpg.connect(database_url)
    try:
        edge = dt.datetime(2025, 4, 30, 15, 0, tzinfo=dt.UTC)  # 1 May 00:00 in Tokyo
        await _write(conn, [(start + 2, _us(edge), 2, 2, price, 1, None, _us(edge), price)])
    finally:
        await conn.close()
    assert (dt.date(2025, 5, 1), 2, price) in await buckets()
    assert await rollups.drift(db) == NO_DRIFT

    await migrate(db, "UTC")
    assert await buckets() == [(march, 1, 2 * price), (march, 2, price), (april, 2, price)]
    assert await rollups.drift(db) == NO_DRIFT
    assert await rollups.ensure_timezone(db, "UTC") is False


async def test_seeding_leaves_the_sales_constraints_as_migrated(db, seed):
    # the seeder drops the primary and foreign keys of sales while it loads, and adds them back
    query = (
        "SELECT conname, pg_get_constraintdef(oid) AS definition FROM pg_constraint "
        "WHERE conrelid = 'sales'::regclass ORDER BY conname"
    )
    before = [tuple(r) for r in await db.fetch(query)]
    await seed(items=3, stores=2, sales=500)
    assert [tuple(r) for r in await db.fetch(query)] == before
    assert ("sales_pkey", "PRIMARY KEY (id, store_id, sale_time)") in before
    assert await db.fetchval("SELECT count(DISTINCT id) FROM sales") == 500
