"""/clear/ and /create/: admin token only; what they leave in the tables and the queue."""

from __future__ import annotations

import dataclasses
import datetime as dt
import zoneinfo

import pytest

from api.app import create_app
from shared import rollups
from shared.seeding import month_starts
from tests import recount
from tests.conftest import ADMIN_TOKEN
from tests.queue_state import queued_entries, queued_sales
from tests.recount import NO_DRIFT

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ENDPOINTS = [
    ("GET", "/clear/"),
    ("POST", "/clear/"),
    ("GET", "/create/"),
    ("POST", "/create/"),
    ("GET", "/clear"),
    ("POST", "/create"),
]


async def _counts(db) -> dict[str, int]:
    return {
        t: await db.fetchval(f"SELECT count(*) FROM {t}")
        for t in ("item", "store", "sales", "store_monthly", "item_totals", "daily_totals", "dead_letter")
    }


async def _call(client, method, path, **kwargs):
    response = await client.request(method, path, **kwargs)
    assert response.content_type == "application/json"
    return response.status, await response.json()


async def test_refused_without_the_admin_token(client, seed, db, redis_client, queue_keys):
    await seed(items=3, stores=2, sales=24)
    assert (await client.post("/sales/", json={"item_id": 1, "store_id": 1})).status == 202
    before = await _counts(db)
    for method, path in ENDPOINTS:
        status, body = await _call(client, method, path)
        assert status == 401 and list(body) == ["error"], (method, path)
        for header in (
            {"Authorization": ""},
            {"Authorization": "Bearer"},
            {"Authorization": "Bearer "},
            {"Authorization": f"Basic {ADMIN_TOKEN}"},
            {"Authorization": ADMIN_TOKEN},
        ):
            status, body = await _call(client, method, path, headers=header)
            assert status == 401 and list(body) == ["error"], (method, path, header)
        for token in ("wrong", ADMIN_TOKEN + "x", ADMIN_TOKEN[:-1], ADMIN_TOKEN.upper()):
            status, body = await _call(client, method, path, headers={"Authorization": f"Bearer {token}"})
            assert status == 403 and list(body) == ["error"], (method, path, token)
    assert await _counts(db) == before
    assert await queued_entries(redis_client, queue_keys) == 1


async def test_refused_when_no_admin_token_is_configured(aiohttp_client, settings, seed, db):
    await seed(items=3, stores=2, sales=24)
    before = await _counts(db)
    client = await aiohttp_client(create_app(dataclasses.replace(settings, admin_token=None)))
    for method, path in ENDPOINTS:
        for headers in ({}, AUTH, {"Authorization": "Bearer "}, {"Authorization": "Bearer None"}):
            status, body = await _call(client, method, path, headers=headers)
            assert status == 403 and list(body) == ["error"], (method, path, headers)
    assert await _counts(db) == before


async def test_bearer_scheme_is_case_insensitive(client, seed, db):
    await seed(items=3, stores=2)
    status, _ = await _call(client, "GET", "/clear/", headers={"Authorization": f"bearer {ADMIN_TOKEN}"})
    assert status == 200


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_create_defaults_are_the_seed(client, db, method):
    status, body = await _call(client, method, "/create/", headers=AUTH)
    assert status == 200
    assert body == {"status": "created", "items": 50, "stores": 50, "sales": 3600}
    assert (await _counts(db))["item"] == 50
    assert await db.fetchval("SELECT count(*) FROM item WHERE name <> 'item-' || id") == 0
    assert await db.fetchval("SELECT count(*) FROM store WHERE address <> 'store-' || id") == 0
    assert await db.fetchval("SELECT array_agg(id ORDER BY id) FROM item") == list(range(1, 51))
    assert await db.fetchval("SELECT array_agg(id ORDER BY id) FROM store") == list(range(1, 51))
    assert await db.fetchval("SELECT count(*) FROM item WHERE price <= 0") == 0

    now = dt.datetime.now(dt.UTC)
    per_month = {
        r["month"]: r["n"]
        for r in await db.fetch("""
        SELECT date_trunc('month', sale_time AT TIME ZONE 'UTC')::date AS month, count(*) AS n
        FROM sales GROUP BY 1 ORDER BY 1""")
    }
    starts = month_starts(now, zoneinfo.ZoneInfo("UTC"))
    expected_months = [s.date() for s in starts]
    assert expected_months[-1] == now.date().replace(day=1)
    # Every day of the window sells alike (weekends a little more): a full month gets its days'
    # share; the current month only the days so far (none before opening time on the 1st).
    assert set(expected_months[:-1]) <= set(per_month) <= set(expected_months)
    window_days = (now - starts[0]) / dt.timedelta(days=1)
    for start, following in zip(starts, expected_months[1:]):
        expected = 3600 * (following - start.date()).days / window_days
        assert abs(per_month[start.date()] - expected) < 0.3 * expected, (start, per_month, window_days)
    so_far = 3600 * 1.2 * now.day / window_days  # at most the weekend factor, and today whole
    assert per_month.get(expected_months[-1], 0) < so_far + 6 * so_far**0.5 + 5, per_month
    assert await db.fetchval("SELECT count(*) FROM sales") == 3600
    assert await db.fetchval("SELECT min(sale_time) FROM sales") >= starts[0]
    assert await db.fetchval("SELECT max(sale_time) FROM sales") <= dt.datetime.now(dt.UTC)
    # at shop hours, 08:00-22:00 in the report time zone
    assert (
        await db.fetchval(
            "SELECT count(*) FROM sales WHERE extract(hour FROM sale_time AT TIME ZONE 'UTC') NOT BETWEEN 8 AND 21"
        )
        == 0
    )
    # The price snapshot is the item's price; every id is distinct and within bigint.
    assert (
        await db.fetchval(
            "SELECT count(*) FROM sales s JOIN item i ON i.id = s.item_id WHERE s.price <> i.price OR s.quantity <> 1"
        )
        == 0
    )
    assert await db.fetchval("SELECT count(DISTINCT id) FROM sales") == 3600
    assert await rollups.drift(db) == NO_DRIFT

    # Reports answer from the rollups exactly what a recount of the raw sales gives.
    response = await client.get("/items/top/?cnt=50")
    assert await response.json() == await recount.top_items(db, 50)
    for mm in range(1, 13):
        response = await client.get(f"/stores/top/?mm={mm}&cnt=50")
        month = expected_months[[m.month for m in expected_months].index(mm)]
        expected = await recount.top_stores(db, month, 50)
        assert expected or month == expected_months[-1], f"month {mm} has no data"  # the current: maybe not yet
        assert await response.json() == expected


async def test_create_counts_from_query(client, db):
    status, body = await _call(client, "GET", "/create/?items=3&stores=2&sales=24", headers=AUTH)
    assert status == 200
    assert body == {"status": "created", "items": 3, "stores": 2, "sales": 24}
    counts = await _counts(db)
    assert (counts["item"], counts["store"], counts["sales"], counts["dead_letter"]) == (3, 2, 24, 0)
    assert await rollups.drift(db) == NO_DRIFT
    now = dt.datetime.now(dt.UTC)
    assert await db.fetchval("SELECT min(sale_time) FROM sales") >= month_starts(now, zoneinfo.ZoneInfo("UTC"))[0]
    assert await db.fetchval("SELECT max(sale_time) FROM sales") <= now
    assert await db.fetchval("SELECT max(item_id) FROM sales") <= 3
    assert await db.fetchval("SELECT max(store_id) FROM sales") <= 2


async def test_create_counts_from_json_body(client, db):
    status, body = await _call(client, "POST", "/create/", json={"items": 4, "stores": 3, "sales": 0}, headers=AUTH)
    assert status == 200
    assert body == {"status": "created", "items": 4, "stores": 3, "sales": 0}
    counts = await _counts(db)
    assert (counts["item"], counts["store"], counts["sales"]) == (4, 3, 0)

    # The body overrides the query string; missing counts take their defaults.
    status, body = await _call(client, "POST", "/create/?items=9&stores=9", json={"items": 2}, headers=AUTH)
    assert status == 200
    assert body == {"status": "created", "items": 2, "stores": 9, "sales": 3600}
    assert await db.fetchval("SELECT count(*) FROM item") == 2


BAD_COUNTS = [
    ("GET", "items=0", None),
    ("GET", "stores=0", None),
    ("GET", "sales=-1", None),
    ("GET", "items=abc", None),
    ("GET", "items=100001", None),
    ("GET", "sales=10000001", None),
    ("GET", "items=1.5", None),
    ("GET", "items=", None),
    ("GET", "items=2&items=3", None),
    ("GET", "colour=red", None),
    ("GET", "sales=99999999999999999999", None),
    ("POST", "", b'{"items": 0}'),
    ("POST", "", b'{"items": "3"}'),
    ("POST", "", b'{"items": 2.5}'),
    ("POST", "", b"[1, 2]"),
    ("POST", "", b"{not json"),
    ("POST", "", b'{"bogus": 1}'),
    ("POST", "", b'{"sales": -5}'),
    ("POST", "", b'{"items": 1e400}'),
    ("POST", "", b"null"),
]


async def test_bad_counts_are_400_and_change_nothing(client, seed, db):
    await seed(items=3, stores=2, sales=24)
    before = await _counts(db)
    for method, query, body in BAD_COUNTS:
        status, answer = await _call(client, method, f"/create/?{query}", data=body, headers=AUTH)
        assert status == 400, (query, body, answer)
        assert list(answer) == ["error"]
    assert await _counts(db) == before


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_clear_empties_tables_and_queue(client, seed, db, drain, redis_client, queue_keys, method):
    await seed(items=3, stores=2, sales=24)
    await db.execute("INSERT INTO dead_letter (sale_id, sale, reason) VALUES (1, '{}', 'test')")
    response = await client.post(
        "/sales/", json={"item_id": 1, "store_id": 1}, headers={"Idempotency-Key": "before-clear"}
    )
    assert response.status == 202
    assert await queued_entries(redis_client, queue_keys) == 1

    status, body = await _call(client, method, "/clear/", headers=AUTH)
    assert status == 200
    assert body == {"status": "cleared", "items": 0, "stores": 0, "sales": 0}
    assert set((await _counts(db)).values()) == {0}
    assert await queued_entries(redis_client, queue_keys) == 0
    assert await queued_sales(redis_client, queue_keys) == 0
    assert await redis_client.exists(queue_keys.idempotency(1, "before-clear")) == 0
    await drain()
    assert set((await _counts(db)).values()) == {0}
    for path in ("/items/", "/stores/", "/items/top/", "/stores/top/"):
        assert await (await client.get(path)).json() == []


async def test_after_clear_old_ids_are_unknown_at_once(client, seed, redis_client, queue_keys):
    await seed(items=3, stores=2)
    status, _ = await _call(client, "GET", "/clear/", headers=AUTH)
    assert status == 200
    response = await client.post("/sales/", json={"item_id": 1, "store_id": 1})
    assert response.status == 422
    assert await queued_entries(redis_client, queue_keys) == 0


async def test_sales_after_create_use_the_new_catalogue_at_once(client, seed, db, drain):
    await seed(items=3, stores=3)
    await db.execute("UPDATE item SET price = 1")
    status, _ = await _call(client, "GET", "/create/?items=2&stores=2&sales=0", headers=AUTH)
    assert status == 200
    unknown = await client.post("/sales/", json={"item_id": 3, "store_id": 1})
    assert unknown.status == 422
    response = await client.post("/sales/", json={"item_id": 1, "store_id": 2})
    assert response.status == 202
    sale_id = (await response.json())["id"]
    await drain()
    assert (
        await db.fetchval(
            "SELECT s.price = i.price FROM sales s JOIN item i ON i.id = s.item_id WHERE s.id = $1", sale_id
        )
        is True
    )


async def test_create_discards_queued_sales(client, seed, db, drain, redis_client, queue_keys):
    await seed(items=3, stores=2)
    for _ in range(3):
        assert (await client.post("/sales/", json={"item_id": 1, "store_id": 1})).status == 202
    status, _ = await _call(client, "POST", "/create/", json={"items": 2, "stores": 2, "sales": 12}, headers=AUTH)
    assert status == 200
    assert await queued_entries(redis_client, queue_keys) == 0
    await drain()
    assert await db.fetchval("SELECT count(*) FROM sales") == 12
    assert await rollups.drift(db) == NO_DRIFT
