"""The catalogue over the API: prices with history, the price charged, retirement, bulk CSV,
the tills' copy with its ETag, and every API process seeing a change."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import subprocess
import sys
import time
import zoneinfo

from api.app import create_app
from api.appkeys import CATALOGUE_VIEWS, INTAKE
from api.catalogue import CatalogueViews, PriceHistory
from api.moments import now_us
from shared import catalogue, rollups
from shared.catalogue import ItemEdit
from tests import recount
from tests.conftest import ADMIN_TOKEN, edit_by_hand
from tests.queue_state import queued_entries
from tests.recount import NO_DRIFT

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def _ok(response, status=200):
    assert response.status == status, await response.text()
    return await response.json()


async def _sale(client, status=202, **sale):
    body = {"item_id": 1, "store_id": 1, **sale}
    if isinstance(body.get("sale_time"), dt.datetime):
        body["sale_time"] = body["sale_time"].isoformat()
    return await _ok(await client.post("/sales/", json=body), status)


async def _stored(db, sale_id):
    return tuple(await db.fetchrow("SELECT price, list_price, quantity FROM sales WHERE id = $1", sale_id))


async def _seen_by(client, condition) -> None:
    """Wait (up to 1 s: the bound every API process keeps) until the API's catalogue copy meets it."""
    copy = client.server.app[INTAKE].catalogue
    started = time.monotonic()
    while not condition(copy):
        assert time.monotonic() - started < 1, "the API did not see the change within 1 s"
        await asyncio.sleep(0.01)


async def test_an_offline_sale_counts_at_the_price_of_its_sale_time(client, seed, db, drain):
    await seed(items=2, stores=2)
    created = await _ok(await client.post("/catalogue/items/", json={"name": "tea", "price": 100}, headers=ADMIN), 201)
    assert created == {
        "id": 3,
        "name": "tea",
        "price": 100,
        "prices": [{"price": 100, "from": None}],
        "retired_at": None,
    }
    monday = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)  # sold offline then
    changed = await _ok(await client.patch("/catalogue/items/3", json={"price": 120}, headers=ADMIN))
    assert changed["price"] == 120 and [p["price"] for p in changed["prices"]] == [120]
    offline = await _sale(client, item_id=3, sale_time=monday, quantity=2)  # synced after the change
    today = await _sale(client, item_id=3)
    await drain()
    assert await _stored(db, offline["id"]) == (100, 100, 2)
    assert await _stored(db, today["id"]) == (120, 120, 1)
    history = await db.fetch("SELECT effective_from::text AS since, price FROM item_price WHERE item_id = 3 ORDER BY 1")
    assert [(r["since"] == "-infinity", r["price"]) for r in history] == [(True, 100), (False, 120)]
    totals = await _ok(
        await client.get("/reports/totals/", params={"from": f"{monday:%Y-%m-%d}", "to": f"{dt.date.today()}"})
    )
    assert totals["income"] == 2 * 100 + 120


async def test_a_change_scheduled_at_local_midnight_prices_a_second_either_side(
    settings, seed, db, drain, aiohttp_client
):
    """Scheduled days ago for last midnight in the report zone (Moscow): the sale a second
    before it at the old price, the sale a second after at the new one."""
    await seed(items=2, stores=1, tz="Europe/Moscow")
    zone = zoneinfo.ZoneInfo("Europe/Moscow")
    midnight = dt.datetime.combine(dt.datetime.now(zone).date(), dt.time(0), zone) - dt.timedelta(days=1)
    old_price = await db.fetchval("SELECT price FROM item WHERE id = 1")
    await catalogue.write_items(
        db, [ItemEdit(id=1, price=old_price + 50, price_from=midnight)], now=midnight - dt.timedelta(days=3)
    )
    client = await aiohttp_client(create_app(settings))
    before = await _sale(client, sale_time=midnight - dt.timedelta(seconds=1))
    after = await _sale(client, sale_time=midnight + dt.timedelta(seconds=1))
    await drain()
    assert (await _stored(db, before["id"]))[:2] == (old_price, old_price)
    assert (await _stored(db, after["id"]))[:2] == (old_price + 50, old_price + 50)
    listed = await _ok(await client.get("/catalogue/"))
    assert listed["items"][0]["price"] == old_price + 50
    assert (await _ok(await client.get("/items/")))[0] == {"id": 1, "name": "item-1", "price": old_price + 50}
    assert listed["items"][0]["prices"] == [{"price": old_price + 50, "from": midnight.astimezone(dt.UTC).isoformat()}]


async def test_a_scheduled_price_shows_in_the_lists_once_it_takes_effect(client, seed, db):
    await seed(items=2, stores=1)
    old = await db.fetchval("SELECT price FROM item WHERE id = 2")
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)  # a PATCH on Citus beside other suites took over 1.5 s
    await _ok(
        await client.patch("/catalogue/items/2", json={"price": old + 1, "price_from": soon.isoformat()}, headers=ADMIN)
    )
    assert (await _ok(await client.get("/items/")))[1]["price"] == old
    assert [i["price"] for i in (await _ok(await client.get("/catalogue/")))["items"]][1] == old
    await asyncio.sleep((soon - dt.datetime.now(dt.UTC)).total_seconds() + 0.05)
    assert (await _ok(await client.get("/items/")))[1]["price"] == old + 1  # the cached answer moved on
    assert [i["price"] for i in (await _ok(await client.get("/catalogue/")))["items"]][1] == old + 1


async def test_a_charged_price_below_list_is_income_and_above_list_is_refused(
    client, seed, db, drain, redis_client, queue_keys
):
    await seed(items=2, stores=1)
    listed = await db.fetchval("SELECT price FROM item WHERE id = 1")
    sale = await _sale(client, unit_price=listed - 30, quantity=3)
    moment = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=1)
    refused = await _sale(client, status=422, unit_price=listed + 1, sale_time=moment)
    assert refused == {
        "error": f"unit_price {listed + 1} is above every list price of item 1 in the 7 days up to "
        f"{moment.isoformat()} (at most {listed}): a till charges a list price it knew, or less"
    }
    negative = await client.post("/sales/", json={"item_id": 1, "store_id": 1, "unit_price": -1})
    assert negative.status == 400
    assert await queued_entries(redis_client, queue_keys) == 1
    await drain()
    assert await _stored(db, sale["id"]) == (listed - 30, listed, 3)
    top = await _ok(await client.get("/stores/top/"))
    assert top[0]["income"] == 3 * (listed - 30)
    page = await _ok(await client.get("/stores/1/report/"))
    assert (page["income"], page["discounts"]) == (3 * (listed - 30), 3 * 30)
    assert [(d["income"], d["discounts"]) for d in page["days"]] == [(3 * (listed - 30), 3 * 30)]
    totals = await _ok(await client.get("/reports/totals/"))
    assert (totals["income"], totals["discounts"]) == (3 * (listed - 30), 3 * 30)
    assert totals == await recount.totals(db, *[dt.date.fromisoformat(totals[k]) for k in ("from", "to")])
    assert await rollups.drift(db) == NO_DRIFT


async def test_a_till_that_missed_a_price_cut_is_counted_at_what_it_charged(client, seed, db, drain):
    await seed(items=2, stores=1)
    old = await db.fetchval("SELECT price FROM item WHERE id = 1")
    await _ok(await client.patch("/catalogue/items/1", json={"price": old - 10}, headers=ADMIN))
    stale = await _sale(client, unit_price=old)  # its copy still had the old price
    await drain()
    assert await _stored(db, stale["id"]) == (old, old - 10, 1)


async def test_a_retired_item_is_refused_after_its_retirement_and_accepted_before(client, seed, db, drain):
    await seed(items=2, stores=2)
    before = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    retired = await _ok(await client.delete("/catalogue/items/2", headers=ADMIN))
    assert retired["retired_at"] is not None
    refused = await _sale(client, status=422, item_id=2)
    assert refused["error"].startswith("item 2 was retired at ")
    earlier = await _sale(client, item_id=2, sale_time=before)
    closed = await _ok(await client.delete("/catalogue/stores/2", headers=ADMIN))
    assert closed["address"] and closed["retired_at"]
    assert (await _sale(client, status=422, item_id=1, store_id=2))["error"].startswith("store 2 was retired at ")
    await drain()
    assert await db.fetchval("SELECT count(*) FROM sales WHERE id = $1", earlier["id"]) == 1
    # back on sale
    back = await _ok(await client.patch("/catalogue/items/2", json={"retired_at": None}, headers=ADMIN))
    assert back["retired_at"] is None
    await _sale(client, item_id=2)
    items = await _ok(await client.get("/items/"))
    assert [i["id"] for i in items] == [1, 2]  # a retired item stays in the list and the reports


async def test_ten_thousand_items_imported_in_one_request_and_errors_by_line(client, seed, db):
    await seed(items=1, stores=1)
    lines = ["id,name,price"] + [f",item number {n},{100 + n}" for n in range(10_000)]
    answer = await _ok(await client.post("/catalogue/items.csv", data="\n".join(lines), headers=ADMIN))
    assert answer["imported"] == 10_000
    assert await db.fetchval("SELECT count(*), sum(price) FROM item") == 10_001
    assert await db.fetchval("SELECT sum(price) FROM item WHERE id > 1") == sum(100 + n for n in range(10_000))
    # the same file again changes nothing; a file with two bad lines changes nothing either
    exported = await client.get("/catalogue/items.csv")
    text = await exported.text()
    again = await _ok(await client.post("/catalogue/items.csv", data=text, headers=ADMIN))
    assert again["imported"] == 10_001
    assert await db.fetchval("SELECT count(*) FROM item_price") == 0
    bad = "id,name,price\n1,renamed,10\n2,,abc\n\n5,x,-3\n"
    refused = await client.post("/catalogue/items.csv", data=bad, headers=ADMIN)
    assert refused.status == 422
    assert await refused.json() == {
        "error": "2 lines cannot be made; nothing was written",
        "errors": [
            {"line": 3, "error": "price must be a whole number, got 'abc'"},
            {"line": 5, "error": "price must be a whole number, got '-3'"},
        ],
    }
    assert await db.fetchval("SELECT name FROM item WHERE id = 1") != "renamed"


async def test_the_etag_round_trip_and_changes_since_a_version(client, seed):
    await seed(items=3, stores=2)
    await _seen_by(client, lambda copy: len(copy.item_rows) == 3)  # the seed's NOTIFY reached the API
    first = await client.get("/catalogue/")
    whole = await _ok(first)
    etag = first.headers["ETag"]
    assert [i["id"] for i in whole["items"]] == [1, 2, 3] and [s["id"] for s in whole["stores"]] == [1, 2]
    unchanged = await client.get("/catalogue/", headers={"If-None-Match": etag})
    assert unchanged.status == 304 and unchanged.headers["ETag"] == etag
    await _ok(await client.patch("/catalogue/items/2", json={"name": "renamed"}, headers=ADMIN))
    changed = await client.get("/catalogue/", headers={"If-None-Match": etag})
    assert changed.status == 200 and changed.headers["ETag"] != etag
    since = await _ok(await client.get("/catalogue/", params={"since": str(whole["version"])}))
    assert since["changes_since"] == whole["version"]
    assert [(i["id"], i["name"]) for i in since["items"]] == [(2, "renamed")] and since["stores"] == []
    # a version past this server's (another database, a reseed): the whole catalogue, even one of
    # ten digits and more (versions are bigint)
    ahead = await _ok(await client.get("/catalogue/", params={"since": "12345678901"}))
    assert ahead["changes_since"] is None and [i["id"] for i in ahead["items"]] == [1, 2, 3]


async def test_since_a_version_from_before_a_change_no_version_marks_is_answered_whole(client, seed, db):
    await seed(items=3, stores=1)
    await _seen_by(client, lambda copy: len(copy.item_rows) == 3)
    held = (await _ok(await client.get("/catalogue/")))["version"]  # what a till holds
    await edit_by_hand(db, "UPDATE item SET name = 'by hand' WHERE id = 1")  # no version says it
    await _seen_by(client, lambda copy: copy.item_rows[1][0] == "by hand")
    await _ok(await client.patch("/catalogue/items/2", json={"name": "versioned"}, headers=ADMIN))
    answer = await _ok(await client.get("/catalogue/", params={"since": str(held)}))
    assert answer["changes_since"] is None  # everything, not only what versions say
    assert {i["id"]: i["name"] for i in answer["items"]} == {1: "by hand", 2: "versioned", 3: "item-3"}
    newer = await _ok(await client.get("/catalogue/", params={"since": str(answer["version"])}))
    assert (newer["changes_since"], newer["items"], newer["stores"]) == (answer["version"], [], [])
    future = await _ok(await client.get("/catalogue/", params={"since": str(answer["version"] + 1000)}))
    assert future["changes_since"] is None and len(future["items"]) == 3


async def test_a_change_is_seen_by_every_api_process_within_a_second(settings, seed, aiohttp_client):
    await seed(items=2, stores=1)
    one, other = await aiohttp_client(create_app(settings)), await aiohttp_client(create_app(settings))
    created = await _ok(await one.post("/catalogue/items/", json={"name": "new", "price": 7}, headers=ADMIN), 201)
    # a sale naming it, through the other process at once: accepted
    await _sale(other, item_id=created["id"])
    await _ok(await one.patch(f"/catalogue/items/{created['id']}", json={"name": "newer"}, headers=ADMIN))
    await _seen_by(other, lambda copy: copy.item_rows[created["id"]][0] == "newer")


async def test_a_versioned_write_reloads_only_its_rows_and_a_hand_edit_everything(settings, seed, db, aiohttp_client):
    await seed(items=50, stores=3)
    one, other = await aiohttp_client(create_app(settings)), await aiohttp_client(create_app(settings))
    copy = other.server.app[INTAKE].catalogue
    await _seen_by(other, lambda c: len(c.item_rows) == 50)
    wholes = copy.whole_loads
    views = other.server.app[CATALOGUE_VIEWS]
    await views.whole(now_us())  # every item's JSON kept
    await _ok(await one.patch("/catalogue/items/7", json={"price": 321, "name": "seven"}, headers=ADMIN))
    await _ok(await one.delete("/catalogue/stores/2", headers=ADMIN))
    await _seen_by(other, lambda c: c.item_rows[7][0] == "seven" and 2 in c.retired_stores)
    assert copy.whole_loads == wholes  # only the rows past its version
    assert copy.price_at(7, 2**62) == 321 and copy.item_prices[8] == await db.fetchval(
        "SELECT price FROM item WHERE id = 8"
    )
    assert (await _sale(other, status=422, store_id=2))["error"].startswith("store 2 was retired")
    # the kept JSON of the items that did not change, with the changed one's anew: as built from scratch
    moment = now_us()
    assert (await views.whole(moment))[0] == (await CatalogueViews(copy).whole(moment))[0]
    await edit_by_hand(db, "UPDATE item SET name = 'by hand' WHERE id = 9")  # anything may have changed
    await _seen_by(other, lambda c: c.item_rows[9][0] == "by hand")
    assert copy.whole_loads == wholes + 1
    assert copy.item_rows[7][0] == "seven" and copy.price_at(7, 2**62) == 321


async def test_the_command_line_tool_imports_all_or_nothing_and_exports(settings, seed, db, tmp_path):
    await seed(items=2, stores=1)
    env = {**os.environ, "DATABASE_URL": settings.database_url}

    async def tool(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "shared.catalogue", *args]
        return await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, check=False)

    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    good.write_text("id,address\n,12 Market St\n1,renamed store\n")
    bad.write_text("id,address,retired_at\n,ok\n2,x,yesterday\n")
    done = await tool("import", "stores", str(good))
    version = await db.fetchval("SELECT max(version) FROM store")
    assert (done.returncode, done.stdout) == (0, f"2 stores imported (catalogue version {version})\n")
    refused = await tool("import", "stores", str(bad))
    assert refused.returncode == 1
    assert "line 3: retired_at must be ISO 8601 with a UTC offset, got 'yesterday'" in refused.stderr
    assert [tuple(r) for r in await db.fetch("SELECT id, address FROM store ORDER BY id")] == [
        (1, "renamed store"),
        (2, "12 Market St"),
    ]
    exported = await tool("export", "stores")
    assert exported.stdout.splitlines() == ["id,address,retired_at", "1,renamed store,", "2,12 Market St,"]


async def test_bad_catalogue_edits_are_clear_4xx(client, seed):
    await seed(items=1, stores=1)
    assert (await client.post("/catalogue/items/", json={"name": "x"}, headers=ADMIN)).status == 422
    assert (
        await client.post("/catalogue/items/", json={"id": 1, "name": "x", "price": 1}, headers=ADMIN)
    ).status == 409
    assert (await client.patch("/catalogue/items/99", json={"name": "x"}, headers=ADMIN)).status == 404
    for path_id in ("0", "x", "\u00b2", "9" * 30):  # "²" is a digit to str.isdigit, not to int()
        answer = await client.patch(f"/catalogue/items/{path_id}", json={"name": "x"}, headers=ADMIN)
        assert answer.status == 400 and "the id in the path" in (await answer.json())["error"]
    negative = await client.patch("/catalogue/items/1", json={"price": -5}, headers=ADMIN)
    assert negative.status == 400 and "price" in (await negative.json())["error"]
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    refused = await client.patch("/catalogue/items/1", json={"price": 5, "price_from": past}, headers=ADMIN)
    assert refused.status == 422
    assert await refused.json() == {"error": "price_from is in the past: a price change takes effect now or later"}
    assert (await client.post("/catalogue/items.csv", data="nonsense,header\n1,2\n", headers=ADMIN)).status == 422
    for body, said in ((b"{", "malformed JSON"), (b'{"name": "x", "price": 1, "colour": 2}', "colour")):
        answer = await client.post("/catalogue/items/", data=body, headers=ADMIN)
        assert answer.status == 400 and said in (await answer.json())["error"], await answer.text()
    for body in (
        {"name": "nul\u0000", "price": 1},  # PostgreSQL refuses NUL in text
        {"name": "x", "price": 1, "retired_at": "9999-12-31T23:59:59-01:00"},  # past year 9999 in UTC
    ):
        answer = await client.post("/catalogue/items/", json=body, headers=ADMIN)
        assert answer.status == 422, await answer.text()
    for text, line in (
        ("id,name,price\n99999999999,x,1\n", 2),  # past int4
        ("id,name,price\n1,x,1\r2,y\r\n", 2),  # a stray CR the csv module cannot read
        ("id,name,price\n3000000000,x,1\n", 2),
    ):
        answer = await client.post("/catalogue/items.csv", data=text, headers=ADMIN)
        assert answer.status == 422, await answer.text()
        assert [e["line"] for e in (await answer.json())["errors"]] == [line]


def test_price_history_against_a_plain_scan():
    rng = random.Random(7)
    for _ in range(2000):
        starts = sorted(rng.sample(range(-5, 60), rng.randint(0, 6)))
        history = PriceHistory(starts, [rng.randint(0, 9) for _ in starts])
        base = rng.randint(0, 9)

        def plain_at(moment, history=history, base=base):
            in_effect = [p for s, p in zip(history.starts_us, history.prices) if s <= moment]
            return in_effect[-1] if in_effect else base

        first = rng.randint(-10, 70)
        last = first + rng.randint(0, 30)
        assert history.at(first, base) == plain_at(first)
        assert history.highest(first, last, base) == max(plain_at(m) for m in range(first, last + 1))
