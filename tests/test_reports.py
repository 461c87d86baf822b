"""GET /items/, /stores/, /items/top/, /stores/top/: exact answers, compared with a recount."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
import zoneinfo

import pytest

from api.app import create_app
from api.appkeys import INTAKE
from api.reports import report_month
from tests import recount
from tests.conftest import edit_by_hand

UTC = dt.UTC


async def _get_json(client, url, status=200):
    response = await client.get(url)
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    return await response.json()


async def _post_sale(client, **sale):
    response = await client.post("/sales/", json=sale)
    assert response.status == 202, await response.text()
    return await response.json()


def _month_start(moment: dt.datetime, tz: str = "UTC") -> dt.date:
    return moment.astimezone(zoneinfo.ZoneInfo(tz)).date().replace(day=1)


# --- catalogue -------------------------------------------------------------------------------


async def _insert_catalogue(db):
    # Inserted out of id order, so only ORDER BY id can give the expected answer.
    await db.executemany(
        "INSERT INTO item (id, name, price) VALUES ($1, $2, $3)",
        [(3, "Хлеб «Бородинский»", 89), (1, "item-1", 618), (2, 'item "two"', 0)],
    )
    await db.executemany(
        "INSERT INTO store (id, address) VALUES ($1, $2)", [(7, "Москва, ул. Ленина, 1"), (2, "store-2")]
    )


@pytest.mark.parametrize("path", ["/items/", "/items"])
async def test_items_are_all_items_by_id(client, db, path):
    await _insert_catalogue(db)
    assert await _get_json(client, path) == [
        {"id": 1, "name": "item-1", "price": 618},
        {"id": 2, "name": 'item "two"', "price": 0},
        {"id": 3, "name": "Хлеб «Бородинский»", "price": 89},
    ]


@pytest.mark.parametrize("path", ["/stores/", "/stores"])
async def test_stores_are_all_stores_by_id(client, db, path):
    await _insert_catalogue(db)
    assert await _get_json(client, path) == [
        {"id": 2, "address": "store-2"},
        {"id": 7, "address": "Москва, ул. Ленина, 1"},
    ]


async def test_empty_catalogue_is_empty_list(client):
    assert await _get_json(client, "/items/") == []
    assert await _get_json(client, "/stores/") == []
    assert await _get_json(client, "/items/top/") == []
    assert await _get_json(client, "/stores/top/") == []


# --- /items/top/ -----------------------------------------------------------------------------


async def test_top_items_match_recount_for_seeded_data(client, seed, db):
    await seed(items=30, stores=12, sales=600)
    expected_all = await recount.top_items(db, 1000)
    assert len(expected_all) > 10
    assert await _get_json(client, "/items/top/") == expected_all[:10]
    assert await _get_json(client, "/items/top") == expected_all[:10]
    for cnt in (1, 7, 30, 1000):
        assert await _get_json(client, f"/items/top/?cnt={cnt}") == expected_all[:cnt]


async def test_top_items_sum_quantities_ties_by_id_and_omit_unsold(client, seed, db, drain):
    await seed(items=5, stores=2)
    # item 3: 5 units, item 1: 2 + 3 = 5 units (tie with 3: lower id first), item 2: 7 units,
    # items 4 and 5: nothing sold, not listed.
    for item_id, store_id, quantity in ((3, 1, 5), (1, 1, 2), (2, 2, 7), (1, 2, 3)):
        await _post_sale(client, item_id=item_id, store_id=store_id, quantity=quantity)
    await drain()
    names = {r["id"]: r["name"] for r in await db.fetch("SELECT id, name FROM item")}
    expected = [
        {"id": 2, "name": names[2], "sales_amount": 7},
        {"id": 1, "name": names[1], "sales_amount": 5},
        {"id": 3, "name": names[3], "sales_amount": 5},
    ]
    assert await _get_json(client, "/items/top/") == expected
    assert await recount.top_items(db) == expected
    assert await _get_json(client, "/items/top/?cnt=2") == expected[:2]


async def test_top_items_cnt_1000_is_the_upper_bound(client, seed, db):
    await seed(items=1100, stores=1, sales=30_000)
    expected = await recount.top_items(db, 1000)
    assert len(expected) == 1000
    assert await _get_json(client, "/items/top/?cnt=1000") == expected


BAD_CNT = [
    "0",
    "1001",
    "abc",
    "-1",
    "1.5",
    "",
    "99999999999999999999999",
    "2147483648",
    "1e3",
    "0x10",
    " 5",
    "5 ",
    "+5",
    "\N{FULLWIDTH DIGIT ONE}",
    "1;DROP TABLE item",
    "1' OR '1'='1",
    "10)%20UNION%20SELECT%201--",
]


@pytest.mark.parametrize("path", ["/items/top/", "/stores/top/"])
async def test_bad_cnt_is_400(client, seed, db, drain, path):
    await seed(items=3, stores=3, sales=36)
    # seeded sales cover only the current month's days so far (none early on the 1st)
    for store_id in (1, 2):
        await _post_sale(client, item_id=store_id, store_id=store_id)
    await drain()
    for query in [f"cnt={cnt}" for cnt in BAD_CNT] + ["cnt=1&cnt=2", "cnt"]:
        body = await _get_json(client, f"{path}?{query}", status=400)
        assert list(body) == ["error"] and "cnt" in body["error"], query
    assert await db.fetchval("SELECT count(*) FROM item") == 3
    assert len(await _get_json(client, f"{path}?cnt=2")) == 2


# --- /stores/top/ ----------------------------------------------------------------------------


async def test_top_stores_match_recount_for_every_month(client, seed, db, drain):
    await seed(items=10, stores=30, sales=3600)
    # seeded sales cover only the current month's days so far (none early on the 1st): every
    # store sells now too, so that its report is as full as the other months'
    for store_id in range(1, 31):
        await _post_sale(client, item_id=store_id % 10 + 1, store_id=store_id, quantity=store_id % 4 + 1)
    await drain()
    now = dt.datetime.now(UTC)
    current = _month_start(now)
    expected_default = await recount.top_stores(db, current, 10)
    assert len(expected_default) == 10
    assert await _get_json(client, "/stores/top/") == expected_default
    assert await _get_json(client, "/stores/top") == expected_default
    for mm in range(1, 13):
        month = report_month(mm, None, zoneinfo.ZoneInfo("UTC"), now)
        expected = await recount.top_stores(db, month, 1000)
        assert len(expected) > 10, f"seeding left month {month} nearly empty"
        assert await _get_json(client, f"/stores/top/?mm={mm}") == expected[:10]
        assert await _get_json(client, f"/stores/top/?mm={mm}&cnt=3") == expected[:3]
        assert await _get_json(client, f"/stores/top/?cnt=1000&mm={mm}&year={month.year}") == expected
        assert await _get_json(client, f"/stores/top/?cnt=1000&mm={mm}&gg={month.year}") == expected


async def test_income_uses_price_when_accepted_times_quantity_and_ties_by_id(client, seed, db, drain):
    await seed(items=2, stores=4)
    await edit_by_hand(db, "UPDATE item SET price = 100 WHERE id = 1")
    await edit_by_hand(db, "UPDATE item SET price = 30 WHERE id = 2")
    catalogue = client.server.app[INTAKE].catalogue
    deadline = time.monotonic() + 5
    while catalogue.item_prices.get(1) != 100 or catalogue.item_prices.get(2) != 30:
        assert time.monotonic() < deadline, "the catalogue never saw the new prices"
        await asyncio.sleep(0.01)
    await _post_sale(client, item_id=1, store_id=3, quantity=3)  # 300
    await _post_sale(client, item_id=2, store_id=1, quantity=10)  # 300: tie with store 3
    await _post_sale(client, item_id=2, store_id=2, quantity=1)  # 30

    # A new price applies to later sales only.
    await edit_by_hand(db, "UPDATE item SET price = 1000 WHERE id = 1")
    deadline = time.monotonic() + 5
    while catalogue.item_prices.get(1) != 1000:
        assert time.monotonic() < deadline, "the catalogue never saw the new price"
        await asyncio.sleep(0.01)
    await _post_sale(client, item_id=1, store_id=2, quantity=2)  # 2000
    await drain()

    expected = [
        {"id": 2, "address": "store-2", "income": 2030},
        {"id": 1, "address": "store-1", "income": 300},
        {"id": 3, "address": "store-3", "income": 300},
    ]  # store 4 sold nothing: not listed
    assert await _get_json(client, "/stores/top/") == expected
    assert await recount.top_stores(db, _month_start(dt.datetime.now(UTC))) == expected


def test_report_month_is_the_most_recent_begun_month_with_that_number():
    tz = zoneinfo.ZoneInfo("UTC")
    november = dt.datetime(2026, 11, 15, 12, 0, tzinfo=UTC)
    assert report_month(9, None, tz, november) == dt.date(2026, 9, 1)
    assert report_month(11, None, tz, november) == dt.date(2026, 11, 1)
    assert report_month(12, None, tz, november) == dt.date(2025, 12, 1)
    assert report_month(None, None, tz, november) == dt.date(2026, 11, 1)
    assert report_month(12, 2026, tz, november) == dt.date(2026, 12, 1)
    assert report_month(3, 2019, tz, november) == dt.date(2019, 3, 1)
    assert report_month(None, 2024, tz, november) == dt.date(2024, 11, 1)

    january = dt.datetime(2027, 1, 1, 0, 0, tzinfo=UTC)
    assert report_month(1, None, tz, january) == dt.date(2027, 1, 1)
    assert report_month(2, None, tz, january) == dt.date(2026, 2, 1)
    assert report_month(12, None, tz, january) == dt.date(2026, 12, 1)
    december_end = dt.datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert report_month(12, None, tz, december_end) == dt.date(2026, 12, 1)
    assert report_month(1, None, tz, december_end) == dt.date(2026, 1, 1)


def test_report_month_begins_in_the_report_timezone():
    tokyo = zoneinfo.ZoneInfo("Asia/Tokyo")
    new_york = zoneinfo.ZoneInfo("America/New_York")
    # 2026-11-30 20:00 UTC is already 1 December in Tokyo, still 30 November in New York.
    moment = dt.datetime(2026, 11, 30, 20, 0, tzinfo=UTC)
    assert report_month(None, None, tokyo, moment) == dt.date(2026, 12, 1)
    assert report_month(12, None, tokyo, moment) == dt.date(2026, 12, 1)
    assert report_month(None, None, new_york, moment) == dt.date(2026, 11, 1)
    assert report_month(12, None, new_york, moment) == dt.date(2025, 12, 1)


# Sales years back: a chain that accepts them (MAX_SALE_AGE_DAYS is 400 by default).
TEN_YEARS = 3660


async def test_mm_picks_the_most_recent_begun_month_over_http(aiohttp_client, settings, seed, db, drain):
    client = await aiohttp_client(create_app(dataclasses.replace(settings, max_sale_age_days=TEN_YEARS)))
    await seed(items=1, stores=5)
    await edit_by_hand(db, "UPDATE item SET price = 10 WHERE id = 1")
    catalogue = client.server.app[INTAKE].catalogue
    deadline = time.monotonic() + 5
    while catalogue.item_prices.get(1) != 10:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)

    now = dt.datetime.now(UTC)
    this_month = dt.datetime(now.year, now.month, 1, tzinfo=UTC)
    other = now.month % 12 + 1  # next month's number: it began last year (or in January)
    other_year = now.year if other <= now.month else now.year - 1
    sales = [  # (store, quantity, sale_time)
        (1, 1, this_month + (now - this_month) / 2),
        (2, 2, dt.datetime(now.year - 1, now.month, 15, 12, tzinfo=UTC)),
        (3, 3, dt.datetime(other_year, other, 10, tzinfo=UTC)),
        (4, 4, dt.datetime(other_year - 1, other, 10, tzinfo=UTC)),
    ]
    for store_id, quantity, sale_time in sales:
        await _post_sale(client, item_id=1, store_id=store_id, quantity=quantity, sale_time=sale_time.isoformat())
    await drain()

    def store(n, quantity):
        return [{"id": n, "address": f"store-{n}", "income": 10 * quantity}]

    assert await _get_json(client, "/stores/top/") == store(1, 1)
    assert await _get_json(client, f"/stores/top/?mm={now.month}") == store(1, 1)
    assert await _get_json(client, f"/stores/top/?mm={now.month}&year={now.year - 1}") == store(2, 2)
    assert await _get_json(client, f"/stores/top/?mm={now.month}&gg={now.year - 1}") == store(2, 2)
    assert await _get_json(client, f"/stores/top/?year={now.year - 1}") == store(2, 2)
    assert await _get_json(client, f"/stores/top/?mm={other}") == store(3, 3)
    assert await _get_json(client, f"/stores/top/?mm={other}&year={other_year - 1}") == store(4, 4)
    assert await _get_json(client, f"/stores/top/?mm={other}&gg={other_year - 1}&year={other_year - 1}") == store(4, 4)
    assert await _get_json(client, f"/stores/top/?mm={now.month}&year={now.year - 5}") == []


BAD_MONTH_QUERIES = [
    ("mm=0", "mm"),
    ("mm=13", "mm"),
    ("mm=abc", "mm"),
    ("mm=-1", "mm"),
    ("mm=", "mm"),
    ("mm=1.0", "mm"),
    ("mm=1&mm=2", "mm"),
    ("mm=999999999999999999", "mm"),
    ("mm=1%20OR%201=1", "mm"),
    ("year=0", "year"),
    ("year=10000", "year"),
    ("year=abc", "year"),
    ("gg=-2025", "gg"),
    ("gg=", "gg"),
    ("gg=2025&year=2024", "disagree"),
    ("mm=3&year=2026&gg=2025", "disagree"),
    ("year=2025&year=2026", "year"),
]


async def test_bad_mm_or_year_is_400(client):
    for query, name in BAD_MONTH_QUERIES:
        body = await _get_json(client, f"/stores/top/?{query}", status=400)
        assert list(body) == ["error"] and name in body["error"], query


async def test_gg_and_year_agreeing_is_fine(client):
    assert await _get_json(client, "/stores/top/?mm=5&year=2025&gg=2025") == []


async def test_months_are_cut_in_report_timezone(aiohttp_client, settings, seed, db, drain):
    await seed(items=1, stores=2)
    price = await db.fetchval("SELECT price FROM item WHERE id = 1")
    # 2025-03-31 20:00 UTC is 2025-04-01 05:00 in Tokyo; 14:59:59 UTC is still 31 March there.
    tokyo = await aiohttp_client(
        create_app(dataclasses.replace(settings, report_timezone="Asia/Tokyo", max_sale_age_days=TEN_YEARS))
    )
    await _post_sale(tokyo, item_id=1, store_id=1, quantity=2, sale_time="2025-03-31T20:00:00+00:00")
    await _post_sale(tokyo, item_id=1, store_id=2, quantity=1, sale_time="2025-03-31T14:59:59+00:00")
    await drain()
    march = [{"id": 2, "address": "store-2", "income": price}]
    april = [{"id": 1, "address": "store-1", "income": 2 * price}]
    assert await _get_json(tokyo, "/stores/top/?mm=4&year=2025") == april
    assert await _get_json(tokyo, "/stores/top/?mm=3&year=2025") == march
    assert await recount.top_stores(db, dt.date(2025, 4, 1), tz="Asia/Tokyo") == april
    assert await recount.top_stores(db, dt.date(2025, 3, 1), tz="Asia/Tokyo") == march
    assert await db.fetchval("SELECT timezone FROM report_settings") == "Asia/Tokyo"

    # The same data read by a UTC server (its start re-cuts the rollups): both sales in March.
    utc = await aiohttp_client(create_app(settings))
    both = [{"id": 1, "address": "store-1", "income": 2 * price}, {"id": 2, "address": "store-2", "income": price}]
    assert await _get_json(utc, "/stores/top/?mm=3&year=2025") == both
    assert await _get_json(utc, "/stores/top/?mm=4&year=2025") == []
    assert await recount.top_stores(db, dt.date(2025, 3, 1)) == both


async def test_price_change_during_a_catalogue_reload_is_not_lost(client, seed, db, database_url):
    """A change notified while a reload that began before it is running must still be seen."""
    import asyncpg

    await seed(items=2, stores=2)
    catalogue = client.server.app[INTAKE].catalogue
    await catalogue.reload()
    locker = await asyncpg.connect(database_url)
    try:
        tx = locker.transaction()
        await tx.start()
        await locker.execute("LOCK TABLE store IN ACCESS EXCLUSIVE MODE")
        reload = asyncio.create_task(catalogue.reload())  # reads item, then waits on store
        deadline = time.monotonic() + 5
        while not await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query LIKE '%FROM store%'"
        ):
            assert time.monotonic() < deadline, "the reload never reached the store table"
            await asyncio.sleep(0.01)
        await edit_by_hand(db, "UPDATE item SET price = 777 WHERE id = 1")  # notifies while the reload runs
        await asyncio.sleep(0.2)  # let the notification arrive during the reload
        await tx.rollback()
        await reload
    finally:
        await locker.close()

    deadline = time.monotonic() + 3
    while catalogue.item_prices.get(1) != 777:
        assert time.monotonic() < deadline, "the price change was lost until the periodic refresh"
        await asyncio.sleep(0.01)
    sale = await _post_sale(client, item_id=1, store_id=1)
    assert sale["item_id"] == 1
