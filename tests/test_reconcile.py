"""shared.reconcile: recount the rollups from raw sales, report drift, repair it."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from shared import reconcile, rollups
from tests import recount
from tests.recount import NO_DRIFT

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(database_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "shared.reconcile", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


async def test_clean_rollups_report_no_drift(database_url, seed):
    await seed(items=5, stores=4, sales=500)
    result = _run(database_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rollups match the raw sales" in result.stdout


async def test_drift_is_reported_per_table_then_repaired(database_url, seed, db):
    await seed(items=5, stores=4, sales=500)
    month = await db.fetchval("SELECT min(month) FROM store_monthly")
    await db.execute("UPDATE store_monthly SET income = income + 1 WHERE month = $1 AND store_id = 1", month)
    await db.execute("DELETE FROM item_totals WHERE item_id = 2")
    await db.execute(
        "UPDATE item_running SET units = units + 1 WHERE item_id = 3 "
        "AND day = (SELECT running_through FROM report_settings)"
    )
    await db.execute(
        "UPDATE store_hourly SET refunds = refunds + 5 WHERE (store_id, day, hour) = "
        "(SELECT store_id, day, hour FROM store_hourly ORDER BY 1, 2, 3 LIMIT 1)"
    )
    before = {r["item_id"]: (r["units"], r["income"]) for r in await db.fetch("SELECT * FROM item_totals")}

    found = _run(database_url)
    assert found.returncode == 1, found.stdout
    lines = {line.split()[0]: int(line.split()[1]) for line in found.stdout.splitlines() if line.startswith("  ")}
    assert lines == {
        "store_monthly": 2,
        "item_totals": 1,
        "daily_totals": 0,  # a changed row counts twice
        "store_item_daily": 0,
        "hourly_totals": 0,
        "store_hourly": 2,
        "store_running": 0,
        "item_running": 2,
    }
    assert await db.fetchval("SELECT count(*) FROM item_totals WHERE item_id = 2") == 0  # untouched

    repaired = _run(database_url, "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "rollups repaired" in repaired.stdout
    assert await rollups.drift(db) == NO_DRIFT
    after = {r["item_id"]: (r["units"], r["income"]) for r in await db.fetch("SELECT * FROM item_totals")}
    assert {k: v for k, v in after.items() if k != 2} == before
    assert after[2] == tuple(
        await db.fetchrow(  # net of returns
            f"SELECT sum(s.units)::bigint, sum(s.income)::bigint FROM {recount.ACTIVITY} WHERE s.item_id = 2"
        )
    )

    assert _run(database_url).returncode == 0


async def test_repair_function_leaves_no_drift(database_url, seed, db):
    await seed(items=3, stores=2, sales=200)
    await db.execute("UPDATE daily_totals SET sales = sales + 5")
    assert (await reconcile.check(db))["daily_totals"] > 0
    assert await reconcile.repair(db) == NO_DRIFT
