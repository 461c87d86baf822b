"""Years of sales: monthly partitions made on demand, retention that archives and drops old
months while reports and reconciliation keep their totals, and the upgrade of a database
migrated before partitioning. Runs on Citus too (TEST_CITUS=1)."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import gzip
import hashlib
import io
import pathlib
import subprocess
import sys
import time

import asyncpg

from api import reports
from shared import partitions, retention, rollups
from shared.migrate import migrate, migration_files
from shared.sale_ids import reserve_blocks
from tests.conftest import CITUS
from tests.recount import NO_DRIFT
from worker import writer


def _us(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


async def _partition_names(db) -> list[str]:
    return [r["relname"] for r in await db.fetch(retention.PARTITIONS)]


async def _write(database_url: str, rows) -> writer.BatchResult:
    conn = await asyncpg.connect(database_url, server_settings=writer.SESSION_SETTINGS)
    try:
        await writer.prepare_connection(conn)
        return await writer.write_batch(conn, rows, citus=await writer.is_citus(conn))
    finally:
        await conn.close()


async def _reports(db) -> dict:
    months = [r["month"] for r in await db.fetch("SELECT DISTINCT month FROM store_monthly ORDER BY 1")]
    return {
        "items": await reports.top_items(db, 1000),
        **{m.isoformat(): await reports.top_stores(db, m, 1000) for m in months},
    }


async def test_a_sale_from_a_month_without_partition_gets_one(db, seed, database_url):
    await seed(items=2, stores=2)
    [start] = await reserve_blocks(db, 1)
    old = dt.datetime(2019, 3, 15, 12, tzinfo=dt.UTC)
    now_us = _us(dt.datetime.now(dt.UTC))
    price = await db.fetchval("SELECT price FROM item WHERE id = 1")
    rows = [
        (start, _us(old), 1, 1, price, 2, "till-1-0001", now_us, price),
        (start + 1, now_us, 1, 2, price, 1, None, now_us, price),
    ]
    assert "sales_2019_03" not in await _partition_names(db)
    result = await _write(database_url, rows)
    assert (result.written, result.dead) == (2, 0)
    assert "sales_2019_03" in await _partition_names(db)
    assert await db.fetchval("SELECT count(*) FROM sales_2019_03") == 1
    assert await db.fetchval("SELECT quantity FROM sales WHERE id = $1", start) == 2
    assert await rollups.drift(db) == NO_DRIFT


async def test_a_key_reused_with_another_sale_time_is_stored_once(db, seed, database_url):
    # the unique key of sales holds sale_time, but keys are unique per store in sale_keys
    await seed(items=2, stores=1)
    [start] = await reserve_blocks(db, 1)
    now_us = _us(dt.datetime.now(dt.UTC))
    first = (start, now_us - 10_000_000, 1, 1, 100, 1, "pos-key-7", now_us, 100)
    again = (start + 1, now_us, 1, 1, 100, 1, "pos-key-7", now_us, 100)  # Redis forgot the key: new id, new time
    assert (await _write(database_url, [first])).written == 1
    result = await _write(database_url, [again])
    assert (result.written, result.dead) == (0, 1)
    assert await db.fetchval("SELECT count(*) FROM sales WHERE idempotency_key = 'pos-key-7'") == 1
    reason = await db.fetchval("SELECT reason FROM dead_letter WHERE sale_id = $1", start + 1)
    assert reason == f"idempotency key 'pos-key-7' already belongs to sale {start}"
    # and within one batch, the lower id wins
    [block] = await reserve_blocks(db, 1)
    twins = [
        (block, now_us, 2, 1, 100, 1, "pos-key-8", now_us, 100),
        (block + 1, now_us - 1, 2, 1, 100, 1, "pos-key-8", now_us, 100),
    ]
    result = await _write(database_url, twins)
    assert (result.written, result.dead) == (1, 1)
    assert await db.fetchval("SELECT id FROM sales WHERE idempotency_key = 'pos-key-8'") == block
    assert await rollups.drift(db) == NO_DRIFT


async def test_retention_archives_old_months_and_reports_keep_their_totals(db, seed, database_url, tmp_path):
    await seed(items=6, stores=4, sales=2400)
    [start] = await reserve_blocks(db, 1)
    oldest = await db.fetchval("SELECT min(sale_time) FROM sales")
    keyed_old = (start, _us(oldest) + 1, 1, 1, 100, 1, "old-key", _us(oldest) + 1, 100)
    assert (await _write(database_url, [keyed_old])).written == 1
    before = await _reports(db)
    total_before = await db.fetchval("SELECT count(*) FROM sales")
    now = dt.datetime.now(dt.UTC)
    old = await retention.old_partitions(db, 6, now)
    expected = {name: await db.fetchval(f"SELECT count(*) FROM {name}") for _, name in old}
    assert len(old) >= 6 and sum(expected.values()) > 0

    lines: list[str] = []
    done = await retention.run(database_url, 6, tmp_path, now=now, echo=lines.append)

    assert [d["partition"] for d in done] == [name for _, name in old]
    assert len(lines) == len(old) and lines[0].startswith(f"[1/{len(old)}]")
    names = await _partition_names(db)
    assert not set(expected) & set(names)
    first_kept = retention.cutoff(6, now)
    assert all(retention.PARTITION_NAME.fullmatch(n) and n >= f"sales_{first_kept:%Y_%m}" for n in names)
    for result in done:
        data = (tmp_path / f"{result['partition']}.csv.gz").read_bytes()
        assert hashlib.sha256(data).hexdigest() == result["sha256"]
        assert (
            tmp_path / f"{result['partition']}.csv.gz.sha256"
        ).read_text() == f"{result['sha256']}  {result['partition']}.csv.gz\n"
        rows = list(csv.DictReader(io.StringIO(gzip.decompress(data).decode())))
        assert len(rows) == expected[result["partition"]] == result["sales"]
        month = dt.date.fromisoformat(result["month"] + "-01")
        assert all(partitions.month_start(dt.datetime.fromisoformat(r["sale_time"])) == month for r in rows)
    archived = sum(expected.values())
    assert await db.fetchval("SELECT count(*) FROM sales") == total_before - archived
    assert await db.fetchval("SELECT sum(sales) FROM archived_months") == archived
    assert await db.fetchval("SELECT count(*) FROM sale_keys WHERE idempotency_key = 'old-key'") == 0
    # reports on archived months still answer, and the recount (raw + archived) finds no drift
    assert await _reports(db) == before
    assert await rollups.drift(db) == NO_DRIFT

    # a till offline since then, and a sale of that month delivered again: neither can be
    # told from what the archive holds, so both go to dead_letter, and nothing is made anew
    [late] = await reserve_blocks(db, 1)
    price = await db.fetchval("SELECT price FROM item WHERE id = 2")
    archived_sale = await _first_archived_row(tmp_path, done[0]["partition"])
    current = (late + 1, _us(now), 2, 3, price, 1, None, _us(now), price)
    result = await _write(
        database_url, [(late, _us(oldest) + 5, 2, 3, price, 3, "late-key", _us(now), price), archived_sale, current]
    )
    assert (result.written, result.dead) == (1, 2)
    assert not set(expected) & set(await _partition_names(db))
    reasons = await db.fetch("SELECT sale_id, reason FROM dead_letter ORDER BY sale_id")
    month = f"{oldest.astimezone(dt.UTC):%Y-%m}"
    assert [(r["sale_id"], r["reason"]) for r in reasons] == sorted(
        [
            (late, writer.archived_reason(dt.date.fromisoformat(month + "-01"))),
            (archived_sale[0], writer.archived_reason(dt.date.fromisoformat(done[0]["month"] + "-01"))),
        ]
    )
    assert (await _write(database_url, [current])).duplicates == 1
    assert await rollups.drift(db) == NO_DRIFT
    after = await reports.top_items(db, 1000)
    assert {r["id"]: r["sales_amount"] for r in after}[2] == {r["id"]: r["sales_amount"] for r in before["items"]}[
        2
    ] + 1
    # the repair rebuilds from raw sales plus the archived part, the same rollups
    async with db.transaction():
        await rollups.rebuild(db)
    assert await rollups.drift(db) == NO_DRIFT
    assert await reports.top_items(db, 1000) == after
    # an item or store whose sales are archived cannot be deleted (the recount would lose it)
    archived_item = await db.fetchval("SELECT item_id FROM item_totals_archived LIMIT 1")
    try:
        await db.execute("DELETE FROM item WHERE id = $1", archived_item)
        raise AssertionError("an item with archived sales was deleted")
    except (asyncpg.ForeignKeyViolationError, asyncpg.InternalServerError) as exc:
        assert "item_totals_archived" in str(exc) or "foreign key" in str(exc)
    # the archived months were cut in UTC: another report zone would mix zones, so it is refused
    try:
        await rollups.ensure_timezone(db, "Asia/Tokyo")
        raise AssertionError("the report zone changed over archived months")
    except ValueError as exc:
        assert "archived month(s) can no longer be recut" in str(exc)
    assert await db.fetchval("SELECT timezone FROM report_settings") == "UTC"


async def _first_archived_row(directory, partition: str) -> tuple:
    """The first sale of an archive file, as the worker's row."""
    with gzip.open(directory / f"{partition}.csv.gz", "rt") as file:
        row = next(csv.DictReader(file))
    return (
        int(row["id"]),
        _us(dt.datetime.fromisoformat(row["sale_time"])),
        int(row["item_id"]),
        int(row["store_id"]),
        int(row["price"]),
        int(row["quantity"]),
        row["idempotency_key"] or None,
        _us(dt.datetime.fromisoformat(row["accepted_at"])),
        int(row["list_price"] or row["price"]),
    )


async def test_an_archive_file_is_never_overwritten_with_other_rows(db, seed, database_url, tmp_path):
    await seed(items=3, stores=2, sales=1200)
    [(_, partition), *_] = await retention.old_partitions(db, 3)
    (tmp_path / f"{partition}.csv.gz").write_bytes(b"an earlier archive")
    try:
        await retention.run(database_url, 3, tmp_path)
        raise AssertionError("the archive was overwritten")
    except RuntimeError as exc:
        assert "not overwritten" in str(exc)
    assert (tmp_path / f"{partition}.csv.gz").read_bytes() == b"an earlier archive"
    assert partition in await _partition_names(db)  # rolled back whole
    # the same bytes, from a run that did not commit, are taken as they are
    (tmp_path / f"{partition}.csv.gz").unlink()
    copied, checksum, _ = await retention._copy_out(db, partition, tmp_path)
    done = await retention.run(database_url, 3, tmp_path)
    assert (done[0]["partition"], done[0]["sha256"]) == (partition, checksum)
    assert hashlib.sha256(copied.read_bytes()).hexdigest() == checksum
    assert await rollups.drift(db) == NO_DRIFT


async def test_two_sessions_making_the_same_partition_at_once(db, database_url):
    first, second = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        month = dt.date(2031, 5, 1)
        async with first.transaction():
            assert await first.fetchval("SELECT sales_partition($1)", month) == "sales_2031_05"
            waiting = asyncio.ensure_future(second.fetchval("SELECT sales_partition($1)", month))
            await asyncio.sleep(0.3)
            assert not waiting.done()  # behind the first one's lock
        assert await waiting == "sales_2031_05"
        assert (
            await db.fetchval("SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = 'sales_2031_05'")
            == "FOR VALUES FROM ('2031-05-01 00:00:00+00') TO ('2031-06-01 00:00:00+00')"
        )
    finally:
        await first.close()
        await second.close()


async def test_retention_without_archive_and_dry_run(db, seed, database_url, tmp_path):
    await seed(items=3, stores=2, sales=1200)
    names = await _partition_names(db)
    lines: list[str] = []
    assert await retention.run(database_url, 3, None, dry_run=True, echo=lines.append) == []
    assert lines and all("would archive" in line for line in lines)
    assert await _partition_names(db) == names
    done = await retention.run(database_url, 3, None, echo=lines.append)
    assert done and all(d["file"] is None for d in done)
    assert await rollups.drift(db) == NO_DRIFT
    again: list[str] = []
    assert await retention.run(database_url, 3, None, echo=again.append) == []
    assert again == [f"nothing older than {retention.cutoff(3):%Y-%m}: no month to archive"]


def test_retention_cli_refuses_to_drop_the_current_month():
    result = subprocess.run(
        [sys.executable, "-m", "shared.retention", "--keep-months", "0"],
        cwd=pathlib.Path(__file__).resolve().parent.parent,  # as the other CLI tests: not wherever pytest is
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--keep-months must be at least 1" in result.stderr


async def test_a_database_migrated_before_partitioning_upgrades_in_place(template_db, tmp_path):
    from tests.conftest import create_database, drop_database

    if CITUS:  # a Citus database is made differently; tests/citus covers its upgrade
        import pytest

        pytest.skip("covered by tests/citus/test_citus.py")
    name = f"sales_upgrade_{int(time.time() * 1000)}"
    url = await create_database(name)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version, label, path in migration_files():
            if version < 5:
                await conn.execute(path.read_text())
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, label)
        await conn.execute("INSERT INTO item (name, price) SELECT 'item-' || g, 100 * g FROM generate_series(1, 4) g")
        await conn.execute("INSERT INTO store (address) SELECT 'store-' || g FROM generate_series(1, 3) g")
        await conn.execute(
            "INSERT INTO sales (sale_time, item_id, store_id, price, quantity, idempotency_key) "
            "SELECT now() - g * interval '5 days', 1 + g % 4, 1 + g % 3, 100 * (1 + g % 4), 1 + g % 2, "
            "CASE WHEN g % 3 = 0 THEN 'key-' || g END FROM generate_series(1, 150) g"
        )
        old_rows = [tuple(r) for r in await conn.fetch("SELECT * FROM sales ORDER BY id")]
        await conn.execute(  # the rollups as the old worker kept them
            "INSERT INTO store_monthly SELECT date_trunc('month', sale_time AT TIME ZONE 'UTC')::date, store_id, "
            "sum(price * quantity), sum(quantity), count(*) FROM sales GROUP BY 1, 2"
        )
        await conn.execute(
            "INSERT INTO item_totals SELECT item_id, sum(price * quantity), sum(quantity), count(*) "
            "FROM sales GROUP BY 1"
        )
        await conn.execute(
            "INSERT INTO daily_totals SELECT (sale_time AT TIME ZONE 'UTC')::date, "
            "sum(price * quantity), sum(quantity), count(*) FROM sales GROUP BY 1"
        )

        assert await migrate(conn, "UTC") == [v for v, _, _ in migration_files() if v >= 5]

        # The sales as they were, no list price (they were charged it) and no till.
        assert [tuple(r)[:-4] for r in await conn.fetch("SELECT * FROM sales ORDER BY id")] == old_rows
        assert await conn.fetchval("SELECT count(list_price) + count(till_id) + count(till_time) FROM sales") == 0
        assert await conn.fetchval("SELECT relkind::text FROM pg_class WHERE relname = 'sales'") == "p"
        assert await conn.fetchval("SELECT count(*) FROM sale_keys") == 50
        assert await rollups.drift(conn) == NO_DRIFT
        assert await conn.fetchval("SELECT to_regclass('sales_unpartitioned')") is None
    finally:
        await conn.close()
        await drop_database(name)
