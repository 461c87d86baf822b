"""Sales that arrive late cost a bounded number of rows, whatever their sale_time (issue 21), and
sales the API will not store are refused up front with 422 and nothing queued."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time

from api.app import create_app
from api.appkeys import INTAKE
from shared import retention, rollups
from tests import recount
from tests.queue_state import queued_entries
from tests.recount import NO_DRIFT

RUNNING_TABLES = ("store_running", "item_running")
LATE_TABLES = ("store_running_late", "item_running_late")


async def _rows(db, tables) -> int:
    return sum([await db.fetchval(f"SELECT count(*) FROM {table}") for table in tables])


async def _post(client, path, body, status=202):
    response = await client.post(path, json=body)
    assert response.status == status, await response.text()
    return await response.json()


async def _assert_reports_match_recount(client, db, first: dt.date, last: dt.date) -> None:
    q = f"from={first}&to={last}"
    assert (await (await client.get(f"/stores/top/?{q}&cnt=1000")).json()) == await recount.top_stores_in(
        db, first, last, 1000
    )
    assert (await (await client.get(f"/items/top/?{q}&cnt=1000")).json()) == await recount.top_items_in(
        db, first, last, 1000
    )
    assert (await (await client.get(f"/reports/totals/?{q}")).json()) == await recount.totals(db, first, last)
    page = await (await client.get(f"/stores/1/report/?{q}&cnt=5")).json()
    assert page == {"store": {"id": 1, "address": "store-1"}, **await recount.store_page(db, 1, first, last, 5)}


async def test_a_sale_within_the_window_adds_to_its_days_and_an_older_one_to_one_late_row(client, seed, db, drain):
    await seed(items=4, stores=3, sales=300)
    await _post(client, "/sales/", {"item_id": 1, "store_id": 1})  # today: running_through is today
    await drain()
    now = dt.datetime.now(dt.UTC)
    running, late = await _rows(db, RUNNING_TABLES), await _rows(db, LATE_TABLES)

    # a new store and item, so that every row they have is this test's: 3 days late
    await db.execute("INSERT INTO item (id, name, price) VALUES (40, 'new', 100)")
    await db.execute("INSERT INTO store (id, address) VALUES (50, 'new store')")
    await client.get("/items/")
    three_days_ago = (now - dt.timedelta(days=3)).isoformat()
    await _post(client, "/sales/", {"item_id": 40, "store_id": 50, "sale_time": three_days_ago})
    await drain()
    assert await _rows(db, RUNNING_TABLES) == running + 2 * 4  # days d..today, per store and item
    assert await _rows(db, LATE_TABLES) == late

    # 300 days late: one late row per store and item, no running row
    old = now - dt.timedelta(days=300)
    await _post(client, "/sales/", {"item_id": 2, "store_id": 2, "quantity": 5, "sale_time": old.isoformat()})
    await drain()
    assert await _rows(db, RUNNING_TABLES) == running + 2 * 4
    assert [tuple(r) for r in await db.fetch("SELECT day, store_id, units FROM store_running_late")] == [
        (old.date(), 2, 5)
    ]
    assert [tuple(r) for r in await db.fetch("SELECT day, item_id, units FROM item_running_late")] == [
        (old.date(), 2, 5)
    ]
    # and a return of it today (returns follow the same rule, by return_time)
    sale = await _post(
        client,
        "/sales/",
        {"item_id": 3, "store_id": 3, "quantity": 2, "sale_time": (now - dt.timedelta(days=30)).isoformat()},
    )
    await drain()
    await _post(
        client,
        f"/sales/{sale['id']}/returns/",
        {"quantity": 1, "return_time": (now - dt.timedelta(days=20)).isoformat()},
    )
    await drain()
    assert await rollups.drift(db) == NO_DRIFT
    today = now.date()
    for first, last in (
        (old.date(), old.date()),
        (today - dt.timedelta(days=364), today),
        (today - dt.timedelta(days=31), today - dt.timedelta(days=2)),
        (dt.date(1, 1, 1), today),
    ):
        await _assert_reports_match_recount(client, db, first, last)


async def test_drift_sees_a_late_row_that_is_wrong(client, seed, db, drain):
    await seed(items=3, stores=2, sales=100)
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=60)
    await _post(client, "/sales/", {"item_id": 1, "store_id": 1, "sale_time": old.isoformat()})
    await drain()
    assert await rollups.drift(db) == NO_DRIFT
    await db.execute("UPDATE item_running_late SET units = units + 1")
    assert (await rollups.drift(db))["item_running"] > 0
    await db.execute("UPDATE item_running_late SET units = units - 1")
    await db.execute(
        "INSERT INTO store_running_late (day, store_id, income, units, sales) VALUES (current_date - 90, 2, 1, 1, 1)"
    )
    assert (await rollups.drift(db))["store_running"] > 0


async def test_the_rebuild_keeps_days_before_its_horizon_as_late_rows(aiohttp_client, settings, seed, db, drain):
    """A sale dated 2000 once gave its store and item a running row for every day since."""
    client = await aiohttp_client(create_app(dataclasses.replace(settings, max_sale_age_days=10_000)))
    await seed(items=3, stores=2, sales=200)
    await _post(client, "/sales/", {"item_id": 1, "store_id": 1, "sale_time": "2000-01-02T10:00:00+00:00"})
    await drain()
    async with db.transaction():
        await rollups.rebuild(db)
    assert await db.fetchval("SELECT min(day) FROM store_running") > dt.date.today() - dt.timedelta(days=732)
    assert await db.fetchval("SELECT count(*) FROM store_running_late WHERE day = '2000-01-02'") == 1
    assert await rollups.drift(db) == NO_DRIFT
    await _assert_reports_match_recount(client, db, dt.date(2000, 1, 1), dt.date(2000, 12, 31))
    await _assert_reports_match_recount(client, db, dt.date(1, 1, 1), dt.date.today())


# ---------------------------------------------------------------- refused up front


async def test_a_sale_older_than_the_limit_is_422_naming_the_limit_and_its_time(
    client, seed, db, redis_client, queue_keys
):
    await seed(items=3, stores=2)
    too_old = (dt.datetime.now(dt.UTC) - dt.timedelta(days=401)).replace(microsecond=0)
    body = await _post(client, "/sales/", {"item_id": 1, "store_id": 1, "sale_time": too_old.isoformat()}, 422)
    assert list(body) == ["error"]
    assert "MAX_SALE_AGE_DAYS" in body["error"] and "400 days" in body["error"]
    assert too_old.isoformat() in body["error"]

    batch = [
        {"item_id": 1, "store_id": 1},
        {"item_id": 2, "store_id": 2, "sale_time": "2000-01-02T00:00:00Z"},
        {"item_id": 99, "store_id": 1, "sale_time": "2001-01-02T00:00:00Z"},
    ]
    body = await _post(client, "/sales/batch/", batch, 422)
    assert [e["index"] for e in body["errors"]] == [1, 2]
    assert "2000-01-02T00:00:00+00:00 is more than 400 days ago" in body["errors"][0]["error"]
    assert body["errors"][1]["error"].startswith("unknown item_id 99; sale_time 2001-01-02")
    assert await queued_entries(redis_client, queue_keys) == 0
    # a sale within the limit is taken
    await _post(
        client, "/sales/", {"item_id": 1, "store_id": 1, "sale_time": (too_old + dt.timedelta(days=2)).isoformat()}
    )


async def test_a_return_older_than_the_limit_is_422(client, aiohttp_client, settings, seed, drain):
    strict = await aiohttp_client(create_app(dataclasses.replace(settings, max_sale_age_days=30)))
    await seed(items=3, stores=2)
    now = dt.datetime.now(dt.UTC)
    sale = await _post(
        client,
        "/sales/",
        {"item_id": 1, "store_id": 1, "quantity": 2, "sale_time": (now - dt.timedelta(days=40)).isoformat()},
    )
    await drain()
    body = await _post(
        strict,
        f"/sales/{sale['id']}/returns/",
        {"quantity": 1, "return_time": (now - dt.timedelta(days=31)).isoformat()},
        422,
    )
    assert body["error"].startswith("return_time ") and "more than 30 days ago" in body["error"]
    await _post(
        strict,
        f"/sales/{sale['id']}/returns/",
        {"quantity": 1, "return_time": (now - dt.timedelta(days=29)).isoformat()},
    )


async def test_a_sale_of_an_archived_month_is_422_not_a_dead_letter(
    client, seed, db, redis_client, queue_keys, database_url, tmp_path
):
    now = dt.datetime.now(dt.UTC)
    await seed(items=3, stores=2, sales=400)
    await retention.run(database_url, keep_months=3, directory=None, echo=lambda *_: None)
    first_kept = retention.cutoff(3)
    archived = dt.datetime.combine(first_kept, dt.time(12), dt.UTC) - dt.timedelta(days=20)
    assert now - archived < dt.timedelta(days=400)
    # The archive announces itself on the catalogue's channel; wait for this API to reload.
    catalogue = client.server.app[INTAKE].catalogue
    archived_month = archived.date().replace(day=1)
    deadline = time.monotonic() + 5
    while archived_month not in catalogue.archived_months:
        assert time.monotonic() < deadline, "the catalogue never saw the archived months"
        await asyncio.sleep(0.01)
    body = await _post(client, "/sales/batch/", [{"item_id": 1, "store_id": 1, "sale_time": archived.isoformat()}], 422)
    assert f"falls in {archived.isoformat()[:7]}, whose sales are archived" in body["errors"][0]["error"]
    assert await queued_entries(redis_client, queue_keys) == 0
    assert await db.fetchval("SELECT count(*) FROM dead_letter") == 0
    kept = dt.datetime.combine(first_kept, dt.time(12), dt.UTC)
    await _post(client, "/sales/", {"item_id": 1, "store_id": 1, "sale_time": kept.isoformat()})


async def test_the_window_edge_six_seven_and_eight_days_late(client, seed, db, drain):
    """A sale 7 days late still goes into the running rows (8 of them), one 8 days late into a
    late row; one batch holding both, or only sales up to 6 days late (no late upsert at all)."""
    await seed(items=3, stores=2, sales=100)
    await _post(client, "/sales/", {"item_id": 1, "store_id": 1})  # running_through: today
    await drain()
    await db.execute("INSERT INTO item (id, name, price) VALUES (40, 'new', 100)")
    await db.execute("INSERT INTO store (id, address) VALUES (50, 'new store'), (51, 'other new store')")
    await client.get("/items/")
    now = dt.datetime.now(dt.UTC)
    today = now.date()
    await _post(
        client,
        "/sales/batch/",
        [{"item_id": 40, "store_id": 50, "sale_time": (now - dt.timedelta(days=d)).isoformat()} for d in (6, 7, 8)],
    )
    await _post(
        client, "/sales/batch/", [{"item_id": 1, "store_id": 51, "sale_time": (now - dt.timedelta(days=6)).isoformat()}]
    )
    await drain()
    assert await db.fetchval("SELECT min(day) FROM store_running WHERE store_id = 50") == today - dt.timedelta(days=7)
    assert await db.fetchval("SELECT count(*) FROM store_running WHERE store_id = 50") == 8
    assert [tuple(r) for r in await db.fetch("SELECT day, sales FROM store_running_late WHERE store_id = 50")] == [
        (today - dt.timedelta(days=8), 1)
    ]
    assert await db.fetchval("SELECT count(*) FROM store_running WHERE store_id = 51") == 7
    assert await db.fetchval("SELECT count(*) FROM store_running_late WHERE store_id = 51") == 0
    assert await rollups.drift(db) == NO_DRIFT


async def test_a_keyed_retry_of_an_accepted_sale_is_answered_though_it_grew_too_old(
    client, aiohttp_client, settings, seed, drain, redis_client, queue_keys
):
    """A till's answer was lost; by its retry the sale is past the limit (here: a server with a
    stricter one). The retry gets the sale accepted then, not a 422 that would make the till set
    aside a sale that counts; a new sale of that time is still refused."""
    strict = await aiohttp_client(create_app(dataclasses.replace(settings, max_sale_age_days=300)))
    await seed(items=3, stores=2)
    moment = (dt.datetime.now(dt.UTC) - dt.timedelta(days=350)).isoformat()
    first = await _post(client, "/sales/", {"item_id": 1, "store_id": 1, "sale_time": moment, "idempotency_key": "k1"})
    again = await _post(
        strict, "/sales/batch/", [{"item_id": 1, "store_id": 1, "sale_time": moment, "idempotency_key": "k1"}]
    )
    assert again == [first]
    body = await _post(
        strict, "/sales/", {"item_id": 1, "store_id": 1, "sale_time": moment, "idempotency_key": "k2"}, 422
    )
    assert "more than 300 days ago" in body["error"]
    assert await queued_entries(redis_client, queue_keys) == 1

    # the same for a return
    await drain()
    sale = await _post(client, "/sales/", {"item_id": 2, "store_id": 2, "quantity": 3, "sale_time": moment})
    await drain()
    returned = (dt.datetime.now(dt.UTC) - dt.timedelta(days=340)).isoformat()
    ret = await _post(
        client, f"/sales/{sale['id']}/returns/", {"quantity": 1, "return_time": returned, "idempotency_key": "r1"}
    )
    again = await _post(
        strict, f"/sales/{sale['id']}/returns/", {"quantity": 1, "return_time": returned, "idempotency_key": "r1"}
    )
    assert again == ret
    body = await _post(
        strict, f"/sales/{sale['id']}/returns/", {"quantity": 1, "return_time": returned, "idempotency_key": "r2"}, 422
    )
    assert body["error"].startswith("return_time ") and "more than 300 days ago" in body["error"]


async def test_the_window_edge_is_decided_by_the_database(db, seed, client, drain):
    """MAY_HOLD_LATE: a batch whose earliest sale is 6 days before running_through cannot hold a
    late one (its late upserts are skipped); 7 days, with the day of margin, may; 8 days does."""
    await seed(items=3, stores=2, sales=100)
    await _post(client, "/sales/", {"item_id": 1, "store_id": 1})
    await drain()
    now = dt.datetime.now(dt.UTC)
    for days, may in ((0, False), (6, False), (7, True), (8, True), (400, True)):
        second = int((now - dt.timedelta(days=days)).timestamp())
        assert await db.fetchval(rollups.MAY_HOLD_LATE, second) is may, days
