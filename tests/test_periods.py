"""Reports over any period (from/to), one store's items, and one store's page: exact answers,
compared with a recount from raw sales, on periods that cross months and time-zone edges."""

from __future__ import annotations

import dataclasses
import datetime as dt
import zoneinfo

import pytest

from api.app import create_app
from shared import rollups
from tests import recount
from tests.recount import NO_DRIFT


async def _get(client, url, status=200):
    response = await client.get(url)
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    return await response.json()


async def _post_sale(client, **sale):
    response = await client.post("/sales/", json=sale)
    assert response.status == 202, await response.text()


def _periods(today: dt.date) -> list[tuple[dt.date, dt.date]]:
    month = today.replace(day=1)
    last_month = (month - dt.timedelta(days=1)).replace(day=1)
    return [
        (month, today),  # this month so far
        (last_month, month - dt.timedelta(days=1)),  # last month
        (today - dt.timedelta(days=6), today),  # last 7 days
        (last_month.replace(day=15), month.replace(day=14) if today.day >= 14 else today),  # across a month end
        (today - dt.timedelta(days=364), today),  # a year
        (today - dt.timedelta(days=400), today - dt.timedelta(days=200)),  # starting before the first sale
        (today - dt.timedelta(days=40), today - dt.timedelta(days=40)),  # one day
        (today - dt.timedelta(days=3), today + dt.timedelta(days=30)),  # reaching past today
        (today + dt.timedelta(days=1), today + dt.timedelta(days=30)),  # all of it to come
        (dt.date(1, 1, 1), dt.date(9999, 12, 31)),  # everything
        (today - dt.timedelta(days=900), today - dt.timedelta(days=800)),  # no sales at all
    ]


async def _assert_periods_match_recount(client, db, tz: str, stores: int) -> None:
    today = dt.datetime.now(zoneinfo.ZoneInfo(tz)).date()
    for first, last in _periods(today):
        q = f"from={first}&to={last}"
        assert await _get(client, f"/stores/top/?{q}&cnt=1000") == await recount.top_stores_in(
            db, first, last, 1000, tz
        ), (first, last)
        assert await _get(client, f"/items/top/?{q}&cnt=1000") == await recount.top_items_in(
            db, first, last, 1000, tz
        ), (first, last)
        for store_id in (1, stores):
            assert await _get(client, f"/items/top/?{q}&cnt=1000&store_id={store_id}") == await recount.top_items_in(
                db, first, last, 1000, tz, store_id
            ), (first, last, store_id)
            page = await _get(client, f"/stores/{store_id}/report/?{q}&cnt=5")
            assert page == {
                "store": {"id": store_id, "address": f"store-{store_id}"},
                **await recount.store_page(db, store_id, first, last, 5, tz),
            }, (first, last)


@pytest.mark.parametrize("tz", ["UTC", "Europe/Moscow", "America/New_York"])
async def test_any_period_matches_a_recount(aiohttp_client, settings, seed, db, drain, tz):
    client = await aiohttp_client(create_app(dataclasses.replace(settings, report_timezone=tz)))
    await seed(items=25, stores=6, sales=4000, tz=tz)
    # sales a second either side of local midnight, posted through the API and written by the worker;
    # the second charged less than its list price (a discount)
    zone = zoneinfo.ZoneInfo(tz)
    midnight = dt.datetime.combine(dt.datetime.now(zone).date() - dt.timedelta(days=20), dt.time(), zone)
    for n, moment in enumerate((midnight - dt.timedelta(seconds=1), midnight)):
        charged = {"unit_price": await db.fetchval("SELECT price - 5 FROM item WHERE id = 2")} if n else {}
        await _post_sale(client, item_id=n + 1, store_id=1, quantity=7, sale_time=moment.isoformat(), **charged)
    await drain()
    assert await rollups.drift(db) == NO_DRIFT
    await _assert_periods_match_recount(client, db, tz, stores=6)


async def test_days_after_the_last_written_one_are_carried_forward(aiohttp_client, settings, seed, db, drain):
    """Sales seeded up to 10 days ago; then sales of today, and of days before: every day between
    gets its running rows, and every period still matches a recount."""
    client = await aiohttp_client(create_app(settings))
    now = dt.datetime.now(dt.UTC)
    await seed(items=6, stores=3, sales=500, now=now - dt.timedelta(days=10))
    seeded_through = await db.fetchval("SELECT running_through FROM report_settings")
    assert seeded_through <= (now - dt.timedelta(days=10)).date()  # the last day with a sale

    await _post_sale(client, item_id=2, store_id=3, quantity=3)  # now
    await _post_sale(
        client,
        item_id=6,
        store_id=2,
        quantity=1,  # a till back from 40 days offline
        sale_time=(now - dt.timedelta(days=40)).isoformat(),
    )
    await drain()
    assert await db.fetchval("SELECT running_through FROM report_settings") == now.date()
    # every store and item that sold before has a row on every day up to today
    assert (
        await db.fetchval("SELECT count(DISTINCT day) FROM store_running WHERE day > $1", seeded_through)
        == (now.date() - seeded_through).days
    )
    assert await rollups.drift(db) == NO_DRIFT
    await _assert_periods_match_recount(client, db, "UTC", stores=3)


async def test_a_new_store_and_item_count_from_their_first_sale(client, seed, db, drain):
    await seed(items=3, stores=2, sales=200)
    await db.execute("INSERT INTO item (id, name, price) VALUES (50, 'new', 250)")
    await db.execute("INSERT INTO store (id, address) VALUES (60, 'new store')")
    await client.get("/items/")  # any request; the catalogue reloads on the NOTIFY anyway
    today = dt.datetime.now(dt.UTC).date()
    await _post_sale(client, item_id=50, store_id=60, quantity=4)
    await drain()
    q = f"from={today}&to={today}"
    assert {"id": 60, "address": "new store", "income": 1000} in await _get(client, f"/stores/top/?{q}&cnt=100")
    assert await _get(client, f"/items/top/?{q}&store_id=60") == [{"id": 50, "name": "new", "sales_amount": 4}]
    page = await _get(client, f"/stores/60/report/?{q}")
    assert (page["income"], page["units"], page["sales"]) == (1000, 4, 1)
    assert page["days"] == [
        {"day": today.isoformat(), "income": 1000, "units": 4, "sales": 1, "returns": 0, "refunds": 0, "discounts": 0}
    ]
    assert await rollups.drift(db) == NO_DRIFT


async def test_the_store_page_defaults_to_this_month_so_far(client, seed, db):
    await seed(items=5, stores=3, sales=900)
    today = dt.datetime.now(dt.UTC).date()
    page = await _get(client, "/stores/2/report")  # the trailing slash is optional
    assert page == {
        "store": {"id": 2, "address": "store-2"},
        **await recount.store_page(db, 2, today.replace(day=1), today, 10),
    }


async def test_old_answers_stay_as_they_were(client, seed, db):
    """Without from/to/store_id the answers are the month's and all time's, as before."""
    await seed(items=10, stores=5, sales=1500)
    today = dt.datetime.now(dt.UTC).date()
    assert await _get(client, "/items/top/?cnt=100") == await recount.top_items(db, 100)
    assert await _get(client, f"/stores/top/?cnt=100&mm={today.month}") == await recount.top_stores(
        db, today.replace(day=1), 100
    )
    # /items/top/?store_id= alone is that store's all time
    assert await _get(client, "/items/top/?store_id=3&cnt=100") == await recount.top_items_in(
        db, dt.date(1, 1, 1), dt.date(9999, 12, 31), 100, store_id=3
    )


async def test_period_reports_as_csv(client, seed, db):
    await seed(items=4, stores=3, sales=300)
    today = dt.datetime.now(dt.UTC).date()
    first = today - dt.timedelta(days=60)
    response = await client.get(f"/stores/top/?from={first}&to={today}&format=csv")
    assert response.status == 200 and response.content_type == "text/csv"
    assert response.headers["Content-Disposition"] == f'inline; filename="top-stores-{first}-{today}.csv"'
    expected = await recount.top_stores_in(db, first, today)
    assert await response.text() == "id,address,income\r\n" + "".join(
        f"{r['id']},{r['address']},{r['income']}\r\n" for r in expected
    )
    response = await client.get(f"/stores/1/report/?from={first}&to={today}&format=csv")
    page = await recount.store_page(db, 1, first, today)
    assert await response.text() == "day,income,units,sales,returns,refunds,discounts\r\n" + "".join(
        f"{d['day']},{d['income']},{d['units']},{d['sales']},{d['returns']},{d['refunds']},{d['discounts']}\r\n"
        for d in page["days"]
    )


def _trend_recount(totals: dict, last: dt.date, months: int) -> list[dict]:
    rows = []
    for n in range(months - 1, -1, -1):
        index = last.year * 12 + last.month - 1 - n
        month = dt.date(index // 12, index % 12 + 1, 1)
        income, units, sales = totals.get(month, (0, 0, 0))
        before = totals.get(month.replace(year=month.year - 1), (0, 0, 0))[0]
        rows.append(
            {
                "month": f"{month:%Y-%m}",
                "income": income,
                "units": units,
                "sales": sales,
                "income_year_before": before,
                "income_change_pct": None if before == 0 else round((income - before) * 100 / before, 1),
            }
        )
    return rows


@pytest.mark.parametrize("tz", ["UTC", "Asia/Tokyo"])
async def test_trend_matches_a_recount_with_the_year_before(aiohttp_client, settings, seed, db, drain, tz):
    client = await aiohttp_client(create_app(dataclasses.replace(settings, report_timezone=tz)))
    now = dt.datetime.now(zoneinfo.ZoneInfo(tz))
    # two years of sales: seeded up to a year ago, then the last year again
    await seed(items=8, stores=4, sales=2000, tz=tz, now=now - dt.timedelta(days=365))
    year_ago = await db.fetch("SELECT item_id, store_id, quantity, sale_time FROM sales")
    later = [(r["item_id"], r["store_id"], r["quantity"], r["sale_time"] + dt.timedelta(days=365)) for r in year_ago]
    for i in range(0, len(later), 500):
        response = await client.post(
            "/sales/batch/",
            json=[
                {"item_id": item, "store_id": store, "quantity": quantity + (item % 3), "sale_time": moment.isoformat()}
                for item, store, quantity, moment in later[i : i + 500]
                if moment <= now
            ],
        )
        assert response.status == 202, await response.text()
    await drain()
    assert await rollups.drift(db) == NO_DRIFT
    last = now.date().replace(day=1)
    for months, store_id in ((12, None), (24, None), (12, 3), (1, None)):
        url = f"/reports/trend/?months={months}" + (f"&store_id={store_id}" if store_id else "")
        expected = _trend_recount(await recount.month_totals(db, tz, store_id), last, months)
        assert await _get(client, url) == expected, url
    changes = [m["income_change_pct"] for m in await _get(client, "/reports/trend/")]
    assert sum(c is not None for c in changes) >= 10  # both years have sales in (almost) every month


async def test_trend_errors(client, seed):
    await seed(items=2, stores=2)
    assert await _get(client, "/reports/trend/?months=0", 400) == {
        "error": "months must be an integer from 1 to 120, got '0'"
    }
    assert await _get(client, "/reports/trend/?store_id=9", 404) == {"error": "no store with id 9"}


TOGETHER = "from and to go together: give both (YYYY-MM-DD, inclusive, in the report time zone)"


@pytest.mark.parametrize(
    "url, status, error",
    [
        ("/stores/top/?from=2026-01-01", 400, TOGETHER),
        ("/items/top/?to=2026-01-01", 400, TOGETHER),
        ("/stores/top/?from=2026-02-01&to=2026-01-31", 400, "from (2026-02-01) is after to (2026-01-31)"),
        ("/stores/top/?from=2026-02-30&to=2026-03-01", 400, "from must be a date YYYY-MM-DD, got '2026-02-30'"),
        ("/stores/top/?from=26-1-1&to=2026-03-01", 400, "from must be a date YYYY-MM-DD, got '26-1-1'"),
        ("/stores/top/?from=2026-01-01&to=2026-01-02&to=2026-01-03", 400, "to is given more than once"),
        ("/stores/top/?mm=1&from=2026-01-01&to=2026-01-31", 400, "give either mm/year or from/to, not both"),
        ("/items/top/?store_id=0", 400, "store_id must be an integer from 1 to 2147483647, got '0'"),
        ("/items/top/?store_id=99", 404, "no store with id 99"),
        ("/stores/99/report/", 404, "no store with id 99"),
        ("/stores/abc/report/", 404, "no store with id 'abc'"),
        ("/stores/%C2%B2/report/", 404, "no store with id '²'"),
        ("/stores/99999999999/report/", 404, "no store with id '99999999999'"),
        ("/stores/1/report/?from=2026-01-01", 400, TOGETHER),
    ],
)
async def test_bad_periods_are_clear_errors(client, seed, url, status, error):
    await seed(items=2, stores=2)
    assert await _get(client, url, status) == {"error": error}


async def test_running_totals_do_not_depend_on_the_session_time_zone(db, seed):
    """A day series stepped through a session zone whose clocks skip a midnight (Santiago, first
    Sunday of September) would lose its last day; the rebuild and the recount count days."""
    await seed(items=5, stores=3, sales=3000)
    await db.execute("SET TIME ZONE 'America/Santiago'")
    async with db.transaction():
        await rollups.rebuild(db)
    assert await rollups.drift(db) == NO_DRIFT
    first, through = await db.fetchrow("SELECT min(day), max(day) FROM store_running")
    assert through == await db.fetchval("SELECT running_through FROM report_settings")
    assert await db.fetchval("SELECT count(DISTINCT day) FROM store_running") == (through - first).days + 1
    assert await db.fetchval("SELECT count(*) FROM store_running WHERE day = $1", through) == 3


async def test_clear_starts_the_running_totals_again(client, seed, db, drain):
    from shared import seeding

    await seed(items=3, stores=2, sales=300)
    async with db.transaction():
        await seeding.clear(db)
    assert await db.fetchval("SELECT running_through FROM report_settings") is None
    await db.execute("INSERT INTO item (id, name, price) VALUES (1, 'a', 10)")
    await db.execute("INSERT INTO store (id, address) VALUES (1, 'b')")
    await client.get("/items/")
    await _post_sale(client, item_id=1, store_id=1, quantity=2)
    await drain()
    today = dt.datetime.now(dt.UTC).date()
    assert await db.fetchval("SELECT running_through FROM report_settings") == today
    assert await rollups.drift(db) == NO_DRIFT
    assert await _get(client, f"/stores/top/?from={today}&to={today}") == [{"id": 1, "address": "b", "income": 20}]
