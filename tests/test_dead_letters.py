"""worker.dead_letters: list and replay sales the worker could never write."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

from shared import chain_fold, rollups
from shared.db import create_pool
from tests.recount import NO_DRIFT
from worker import dead_letters, writer

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(database_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "worker.dead_letters", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def _post(client, **sale):
    response = await client.post("/sales/", json=sale)
    assert response.status == 202, await response.text()
    return (await response.json())["id"]


async def test_dead_letter_lists_replays_exactly_once(client, seed, db, drain, database_url):
    await seed(items=3, stores=2)
    doomed = await db.fetchval("INSERT INTO item (name, price) VALUES ('doomed', 250) RETURNING id")
    good = [await _post(client, item_id=1, store_id=1, quantity=2) for _ in range(3)]
    bad = await _post(client, item_id=doomed, store_id=2, quantity=4, idempotency_key="pos-7")
    await db.execute("DELETE FROM item WHERE id = $1", doomed)  # after the sale was accepted
    await drain()

    assert sorted(r["id"] for r in await db.fetch("SELECT id FROM sales")) == sorted(good)
    letter = await db.fetchrow("SELECT * FROM dead_letter")
    assert letter["sale_id"] == bad and letter["replayed_at"] is None
    assert "foreign key" in letter["reason"] and "item" in letter["reason"]

    listed = _run(database_url, "list")
    assert listed.returncode == 0 and str(bad) in listed.stdout and "1 dead letter(s)" in listed.stdout

    still = _run(database_url, "replay")  # the item is still missing
    assert still.returncode == 1 and "still failing" in still.stdout
    row = await db.fetchrow("SELECT reason, replayed_at FROM dead_letter WHERE id = $1", letter["id"])
    assert row["replayed_at"] is None and row["reason"].startswith("replay failed:")
    assert await db.fetchval("SELECT count(*) FROM dead_letter") == 1  # no second letter

    await db.execute("INSERT INTO item (id, name, price) VALUES ($1, 'doomed', 999)", doomed)
    replayed = _run(database_url, "replay", "--id", str(letter["id"]))
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    stored = await db.fetchrow("SELECT * FROM sales WHERE id = $1", bad)
    assert (stored["item_id"], stored["store_id"], stored["quantity"], stored["price"]) == (doomed, 2, 4, 250)
    assert stored["idempotency_key"] == "pos-7"
    assert await db.fetchval("SELECT replayed_at FROM dead_letter WHERE id = $1", letter["id"]) is not None
    assert await rollups.drift(db) == NO_DRIFT
    await chain_fold.fold(db)  # the replay wrote a delta
    assert await db.fetchval("SELECT units FROM item_totals WHERE item_id = $1", doomed) == 4

    # replaying again finds nothing pending; forcing the same sale through again stores nothing
    again = _run(database_url, "replay")
    assert again.returncode == 0 and "0 replayed, 0 still failing" in again.stdout
    await db.execute("UPDATE dead_letter SET replayed_at = NULL")
    pool = await create_pool(database_url, max_size=1, prepare=writer.prepare_connection)
    async with pool.acquire() as conn:
        [outcome] = await dead_letters.replay(conn)
    await pool.close()
    assert outcome.replayed and outcome.written == 0 and outcome.already_stored == 1
    assert await db.fetchval("SELECT count(*) FROM sales") == 4
    assert await rollups.drift(db) == NO_DRIFT
    listed_all = _run(database_url, "list", "--all")
    assert str(bad) in listed_all.stdout
    assert "no dead letters" in _run(database_url, "list").stdout


async def test_undecodable_entry_stays_with_reason(db, database_url):
    await db.execute(
        "INSERT INTO dead_letter (sale_id, sale, reason) VALUES (NULL, $1::jsonb, 'undecodable queue entry')",
        json.dumps({"stream_entry": "1-0", "fields_hex": {"d": "c1c1"}}),
    )
    result = _run(database_url, "replay")
    assert result.returncode == 1
    reason = await db.fetchval("SELECT reason FROM dead_letter")
    assert reason.startswith("replay failed: undecodable queue entry")


async def test_bad_rows_are_isolated_and_the_rest_of_the_batch_is_written(seed, db, database_url):
    """worker.writer.write_batch: bad rows found by bisection, everything else written once."""
    await seed(items=3, stores=2)
    base = 10_000_000
    rows = [
        (
            base + n,
            1_700_000_000_000_000 + n,
            99 if n in (3, 50, 51, 199) else 1 + n % 3,
            1 + n % 2,
            100,
            1,
            None,
            1_700_000_000_000_000,
            100,
        )
        for n in range(200)
    ]
    pool = await create_pool(database_url, max_size=1, prepare=writer.prepare_connection)
    async with pool.acquire() as conn:
        first = await writer.write_batch(conn, rows)
        second = await writer.write_batch(conn, rows)  # a redelivery adds nothing
    await pool.close()
    assert (first.written, first.dead, first.duplicates) == (196, 4, 0)
    assert (second.written, second.duplicates, second.dead) == (0, 200, 0)  # bad rows already filed
    assert await db.fetchval("SELECT count(*) FROM sales") == 196
    # a redelivered batch (its ack lost after the commit) does not file its bad rows again
    bad = [base + 3, base + 50, base + 51, base + 199]
    assert sorted(r["sale_id"] for r in await db.fetch("SELECT sale_id FROM dead_letter")) == sorted(bad)
    assert await rollups.drift(db) == NO_DRIFT
