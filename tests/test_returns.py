"""Returns: what the API accepts and refuses, what the worker writes, and every report net of
them, compared with a recount of raw sales and returns."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import zoneinfo

import pytest

from api.app import create_app
from shared import rollups
from tests import recount
from tests.queue_state import queued, queued_sales
from tests.recount import NO_DRIFT
from tests.test_periods import _assert_periods_match_recount
from worker import dead_letters, writer


async def _sale(client, **sale) -> dict:
    response = await client.post("/sales/", json=sale)
    assert response.status == 202, await response.text()
    return await response.json()


async def _return(client, sale_id: int, status: int = 202, **body):
    response = await client.post(f"/sales/{sale_id}/returns/", json=body)
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    return await response.json()


async def _get(client, url):
    response = await client.get(url)
    assert response.status == 200, await response.text()
    return await response.json()


async def _item_price(db, item_id: int) -> int:
    return await db.fetchval("SELECT price FROM item WHERE id = $1", item_id)


async def test_a_return_is_written_once_and_every_report_counts_it_net(client, seed, db, drain):
    await seed(items=4, stores=3, sales=300)
    sale = await _sale(client, item_id=2, store_id=1, quantity=5)
    await drain()
    price = await _item_price(db, 2)
    answer = await _return(client, sale["id"], quantity=2)
    assert answer["sale_id"] == sale["id"] and answer["store_id"] == 1 and answer["item_id"] == 2
    assert (answer["quantity"], answer["refund"]) == (2, 2 * price)
    assert answer["id"] != sale["id"]
    before = await _get(client, "/stores/1/report/")
    await drain()
    row = await db.fetchrow("SELECT * FROM returns WHERE sale_id = $1", sale["id"])
    assert (row["id"], row["sale_id"], row["store_id"], row["item_id"], row["price"], row["quantity"]) == (
        answer["id"],
        sale["id"],
        1,
        2,
        price,
        2,
    )
    assert await db.fetchval("SELECT returned FROM sale_returned WHERE sale_id = $1", sale["id"]) == 2
    after = await _get(client, "/stores/1/report/")
    assert after["income"] == before["income"] - 2 * price
    assert after["units"] == before["units"] - 2
    assert (after["returns"], after["refunds"]) == (before["returns"] + 1, before["refunds"] + 2 * price)
    assert after["sales"] == before["sales"]
    assert await rollups.drift(db) == NO_DRIFT
    # the reports that were there before returns existed count them too
    assert await _get(client, "/items/top/?cnt=100") == await recount.top_items(db, 100)
    today = dt.datetime.now(dt.UTC).date()
    assert await _get(client, "/stores/top/?cnt=100") == await recount.top_stores(db, today.replace(day=1), 100)
    await _assert_periods_match_recount(client, db, "UTC", stores=3)


async def test_no_more_than_was_sold_comes_back(client, seed, db, drain):
    await seed(items=2, stores=2, sales=10)
    sale = await _sale(client, item_id=1, store_id=2, quantity=3)
    await drain()
    await _return(client, sale["id"], quantity=2)
    refused = await _return(client, sale["id"], status=422, quantity=2)  # the first is still queued
    assert refused == {"error": f"sale {sale['id']} has 1 unit(s) left to return, not 2", "remaining": 1}
    await drain()
    refused = await _return(client, sale["id"], status=422, quantity=2)  # and once it is written
    assert refused["remaining"] == 1
    await _return(client, sale["id"], quantity=1)
    assert (await _return(client, sale["id"], status=422, quantity=1))["remaining"] == 0
    await drain()
    assert await db.fetchval("SELECT sum(quantity) FROM returns WHERE sale_id = $1", sale["id"]) == 3
    assert await db.fetchval("SELECT count(*) FROM dead_letter") == 0


async def test_two_returns_racing_for_the_last_units(client, seed, db, drain):
    await seed(items=2, stores=2, sales=10)
    sale = await _sale(client, item_id=1, store_id=1, quantity=4)
    await drain()
    answers = await asyncio.gather(
        *(client.post(f"/sales/{sale['id']}/returns/", json={"quantity": 3}) for _ in range(5))
    )
    assert sorted(a.status for a in answers) == [202, 422, 422, 422, 422]
    await drain()
    assert await db.fetchval("SELECT sum(quantity) FROM returns WHERE sale_id = $1", sale["id"]) == 3


async def test_a_return_right_after_its_sale_waits_for_it(aiohttp_client, settings, seed, db, drain):
    await seed(items=2, stores=2, sales=10)
    client = await aiohttp_client(create_app(dataclasses.replace(settings, return_wait_ms=3000)))
    sale = await _sale(client, item_id=1, store_id=1, quantity=2)
    # the sale is still queued; the worker writes it a moment later, while the return waits
    posted = asyncio.ensure_future(client.post(f"/sales/{sale['id']}/returns/", json={"quantity": 2}))
    await asyncio.sleep(0.3)
    assert not posted.done()
    await drain()
    response = await posted
    assert response.status == 202, await response.text()


async def test_a_sale_still_queued_answers_409_with_retry_after(aiohttp_client, settings, seed, db, drain):
    await seed(items=2, stores=2, sales=10)
    client = await aiohttp_client(create_app(dataclasses.replace(settings, return_wait_ms=100)))
    sale = await _sale(client, item_id=1, store_id=1)
    response = await client.post(f"/sales/{sale['id']}/returns/", json={"quantity": 1})
    assert response.status == 409
    assert response.headers["Retry-After"] == "2"
    assert (await response.json()) == {
        "error": f"sale {sale['id']} is not written yet (it is still queued); retry shortly"
    }
    await drain()
    await _return(client, sale["id"], quantity=1)  # the retry


async def test_what_cannot_be_returned(client, seed, db, drain, redis_client, queue_keys):
    await seed(items=2, stores=2, sales=10)
    sale = await _sale(
        client,
        item_id=1,
        store_id=1,
        quantity=2,
        sale_time=(dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat(),
    )
    await drain()
    no_sale = await _return(client, 10**15, status=404, quantity=1)
    assert no_sale == {"error": f"no such sale: {10**15}"}
    before = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)).isoformat()
    assert (await _return(client, sale["id"], status=422, quantity=1, return_time=before))["error"].startswith(
        f"return_time is before sale {sale['id']} was made"
    )
    assert await _return(client, sale["id"], status=422, quantity=1, store_id=99) == {"error": "unknown store_id 99"}
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    for body, error in (
        ({"quantity": 0}, "Expected `int` >= 1 - at `$.quantity`"),
        ({}, "Object missing required field `quantity`"),
        ({"quantity": 1, "price": 5}, "unknown field `price`"),
        ({"quantity": 1, "return_time": future}, "return_time is in the future"),
        (
            {"quantity": 1, "return_time": "2026-01-01T10:00:00"},
            "return_time must carry a UTC offset, e.g. 2026-09-01T12:30:00+03:00",
        ),
    ):
        assert await _return(client, sale["id"], status=400, **body) == {"error": error}
    response = await client.post("/sales/abc/returns/", json={"quantity": 1})
    assert response.status == 404 and "error" in await response.json()
    response = await client.post(f"/sales/{sale['id']}/returns/", data=b"{not json")
    assert response.status == 400 and (await response.json())["error"].startswith("malformed JSON")
    assert await queued_sales(redis_client, queue_keys) == 0  # nothing of it was queued


async def test_a_returned_key_gives_the_same_return(client, seed, db, drain):
    await seed(items=2, stores=2, sales=10)
    sale = await _sale(client, item_id=2, store_id=2, quantity=3)
    await drain()
    first = await _return(client, sale["id"], quantity=1, idempotency_key="ret-1")
    again = await _return(client, sale["id"], quantity=1, idempotency_key="ret-1")
    assert again == first
    header = await client.post(
        f"/sales/{sale['id']}/returns/", json={"quantity": 1}, headers={"Idempotency-Key": "ret-1"}
    )
    assert header.status == 202 and await header.json() == first
    await drain()
    assert await db.fetchval("SELECT count(*) FROM returns WHERE sale_id = $1", sale["id"]) == 1
    assert await db.fetchval("SELECT returned FROM sale_returned WHERE sale_id = $1", sale["id"]) == 1


async def test_a_return_in_another_store_counts_there(client, seed, db, drain):
    await seed(items=2, stores=3, sales=30)
    sale = await _sale(client, item_id=1, store_id=1, quantity=2)
    await drain()
    answer = await _return(client, sale["id"], quantity=2, store_id=3)
    assert answer["store_id"] == 3
    await drain()
    today = dt.date.today()
    q = f"from={today}&to={today}"
    page = await _get(client, f"/stores/3/report/?{q}")
    assert page == {"store": {"id": 3, "address": "store-3"}, **await recount.store_page(db, 3, today, today)}
    assert page["returns"] >= 1
    assert await rollups.drift(db) == NO_DRIFT


async def test_a_batch_of_returns_is_all_or_nothing(client, seed, db, drain, redis_client, queue_keys):
    await seed(items=3, stores=2, sales=10)
    sales = [await _sale(client, item_id=i, store_id=1, quantity=2) for i in (1, 2, 3)]
    await drain()
    response = await client.post(
        "/returns/batch/",
        json=[
            {"sale_id": sales[0]["id"], "quantity": 1, "idempotency_key": "a"},
            {"sale_id": sales[1]["id"], "quantity": 3},
            {"sale_id": 10**15, "quantity": 1},
        ],
    )
    assert response.status == 422
    assert await response.json() == {
        "error": "2 returns cannot be accepted; none was",
        "errors": [
            {"index": 1, "error": f"sale {sales[1]['id']} has 2 unit(s) left to return, not 3", "remaining": 2},
            {"index": 2, "error": f"no such sale: {10**15}"},
        ],
    }
    assert await queued_sales(redis_client, queue_keys) == 0
    response = await client.post(
        "/returns/batch/",
        json={
            "returns": [
                {"sale_id": sales[0]["id"], "quantity": 1, "idempotency_key": "a"},
                {"sale_id": sales[0]["id"], "quantity": 1},
                {"sale_id": sales[2]["id"], "quantity": 2},
            ]
        },
    )
    assert response.status == 202, await response.text()
    answers = await response.json()
    assert [(a["sale_id"], a["quantity"]) for a in answers] == [
        (sales[0]["id"], 1),
        (sales[0]["id"], 1),
        (sales[2]["id"], 2),
    ]
    # more of sale 0 than is left, counting the two returns of this very batch
    response = await client.post("/returns/batch/", json=[{"sale_id": sales[0]["id"], "quantity": 1}])
    assert response.status == 422 and (await response.json())["errors"][0]["remaining"] == 0
    for body, error in (
        ([], "a batch holds at least one return"),
        ([{"quantity": 1}], "missing required field `sale_id`"),
        (
            [
                {"sale_id": 1, "quantity": 1, "idempotency_key": "k"},
                {"sale_id": 2, "quantity": 1, "idempotency_key": "k"},
            ],
            "two returns of the batch share an idempotency_key",
        ),
    ):
        response = await client.post("/returns/batch/", json=body)
        assert response.status == 400 and error in str(await response.json())
    await drain()
    assert (
        await db.fetchval("SELECT count(*) FROM returns WHERE sale_id = ANY($1::bigint[])", [s["id"] for s in sales])
        == 3
    )
    assert await rollups.drift(db) == NO_DRIFT


async def test_the_worker_refuses_what_the_api_could_not_see(client, seed, db, drain, redis_client, queue_keys):
    """A sale's reservation lost in Redis (a failover) while a return of it is still queued: the
    API lets a second one through, and the worker files it in dead_letter with the reason."""
    await seed(items=2, stores=2, sales=10)
    sale = await _sale(client, item_id=1, store_id=1, quantity=2)
    await drain()
    first = await _return(client, sale["id"], quantity=2)
    await redis_client.delete(queue_keys.returned(sale["id"]))
    second = await _return(client, sale["id"], quantity=1)
    await drain()
    assert [r["id"] for r in await db.fetch("SELECT id FROM returns WHERE sale_id = $1", sale["id"])] == [first["id"]]
    letter = await db.fetchrow("SELECT sale_id, sale, reason FROM dead_letter")
    assert letter["sale_id"] == second["id"]
    assert "return_not_more_than_sold" in letter["reason"]
    assert await db.fetchval("SELECT returned FROM sale_returned WHERE sale_id = $1", sale["id"]) == 2
    assert await rollups.drift(db) == NO_DRIFT


async def test_a_return_delivered_twice_counts_once(client, seed, db, drain, redis_client, queue_keys):
    await seed(items=2, stores=2, sales=10)
    sale = await _sale(client, item_id=1, store_id=1, quantity=2)
    await drain()
    await _return(client, sale["id"], quantity=1)
    [(partition, _, fields)] = await queued(redis_client, queue_keys)
    await drain()
    await redis_client.xadd(partition.stream, fields)  # as after a lost acknowledgement
    await redis_client.incrby(partition.depth, 1)
    await drain()
    assert await db.fetchval("SELECT count(*) FROM returns WHERE sale_id = $1", sale["id"]) == 1
    assert await db.fetchval("SELECT returned FROM sale_returned WHERE sale_id = $1", sale["id"]) == 1
    assert await rollups.drift(db) == NO_DRIFT


@pytest.mark.parametrize("tz", ["UTC", "America/New_York"])
async def test_totals_and_hours_match_a_recount(aiohttp_client, settings, seed, db, drain, tz):
    client = await aiohttp_client(create_app(dataclasses.replace(settings, report_timezone=tz)))
    await seed(items=6, stores=3, sales=2000, tz=tz)
    zone = zoneinfo.ZoneInfo(tz)
    midnight = dt.datetime.combine(dt.datetime.now(zone).date() - dt.timedelta(days=3), dt.time(), zone)
    sale = await _sale(
        client, item_id=3, store_id=2, quantity=4, sale_time=(midnight - dt.timedelta(hours=5)).isoformat()
    )
    await drain()
    # returns a second either side of local midnight
    for moment in (midnight - dt.timedelta(seconds=1), midnight):
        await _return(client, sale["id"], quantity=1, return_time=moment.isoformat())
    await drain()
    today = dt.datetime.now(zone).date()
    for first, last in (
        (today.replace(day=1), today),
        (today - dt.timedelta(days=3), today),
        (today - dt.timedelta(days=4), today - dt.timedelta(days=4)),
        (today - dt.timedelta(days=364), today),
    ):
        q = f"from={first}&to={last}"
        assert await _get(client, f"/reports/totals/?{q}") == await recount.totals(db, first, last, tz)
        assert await _get(client, f"/reports/hours/?{q}") == await recount.hours(db, first, last, tz)
        assert await _get(client, f"/reports/hours/?{q}&store_id=2") == await recount.hours(db, first, last, tz, 2)
    assert await rollups.drift(db) == NO_DRIFT


async def test_totals_and_hours_default_to_this_month_and_refuse_bad_input(client, seed, db):
    await seed(items=3, stores=2, sales=300)
    today = dt.datetime.now(dt.UTC).date()
    assert await _get(client, "/reports/totals") == await recount.totals(db, today.replace(day=1), today)
    hours = await _get(client, "/reports/hours/")
    assert hours == await recount.hours(db, today.replace(day=1), today)
    assert len(hours["cells"]) == 168
    response = await client.get("/reports/hours/?from=2026-01-01&to=2026-01-31&format=csv")
    assert response.status == 200 and (await response.text()).startswith("weekday,hour,income,units,sales\r\n1,0,")
    for url, status in (
        ("/reports/hours/?store_id=99", 404),
        ("/reports/hours/?from=2026-01-05", 400),
        ("/reports/totals/?from=2026-02-01&to=2026-01-01", 400),
        ("/reports/hours/?store_id=x", 400),
    ):
        response = await client.get(url)
        assert response.status == status and "error" in await response.json()


async def _dead_return(client, db, drain, sale_id: int, quantity: int, before_written=None) -> dict:
    """A return into pop-up store 50, which closes before the worker writes the return: it goes
    to dead_letter (returns_store_id_fkey). `before_written()`: awaited while it is queued."""
    await db.execute("INSERT INTO store (id, address) VALUES (50, 'pop-up')")
    await client.get("/stores/")  # the catalogue reloads on the NOTIFY anyway
    answer = await _return(client, sale_id, quantity=quantity, store_id=50)
    if before_written is not None:
        await before_written()
    await db.execute("DELETE FROM store WHERE id = 50")  # gone before the worker writes the return
    await drain()
    return answer


async def test_a_dead_return_replays_once_its_cause_is_fixed(client, seed, db, drain):
    await writer.prepare_connection(db)  # jsonb as dicts, as the replay command has it
    await seed(items=2, stores=2, sales=10)
    sale = await _sale(client, item_id=2, store_id=1, quantity=3)
    await drain()
    answer = await _dead_return(client, db, drain, sale["id"], 2)
    letter = await db.fetchrow("SELECT id, sale_id, sale, reason FROM dead_letter")
    assert letter["sale_id"] == answer["id"] and "returns_store_id_fkey" in letter["reason"]
    assert letter["sale"]["kind"] == "return" and letter["sale"]["sale_id"] == sale["id"]
    assert await db.fetchval("SELECT count(*) FROM returns WHERE sale_id = $1", sale["id"]) == 0
    assert await db.fetchval("SELECT count(*) FROM sale_returned WHERE sale_id = $1", sale["id"]) == 0

    await db.execute("INSERT INTO store (id, address) VALUES (50, 'pop-up')")
    [outcome] = await dead_letters.replay(db)
    assert (outcome.replayed, outcome.written) == (True, 1)
    assert await dead_letters.replay(db) == []  # nothing pending: replayed once
    row = await db.fetchrow("SELECT id, store_id, quantity FROM returns WHERE sale_id = $1", sale["id"])
    assert tuple(row) == (answer["id"], 50, 2)
    assert await db.fetchval("SELECT returned FROM sale_returned WHERE sale_id = $1", sale["id"]) == 2
    assert await rollups.drift(db) == NO_DRIFT


async def test_a_keyed_retry_after_the_return_was_written_gets_the_same_return(client, seed, db, drain):
    """The till lost the 202 and sends the return again once the worker has written it: the
    same return, not 422 for units that return itself took."""
    await seed(items=2, stores=2, sales=10)
    sale = await _sale(client, item_id=1, store_id=1, quantity=1)
    await drain()
    first = await _return(client, sale["id"], quantity=1, idempotency_key="lost-answer")
    await drain()
    assert await _return(client, sale["id"], quantity=1, idempotency_key="lost-answer") == first
    batch = await client.post(
        "/returns/batch/", json=[{"sale_id": sale["id"], "quantity": 1, "idempotency_key": "lost-answer"}]
    )
    assert batch.status == 202 and (await batch.json())[0] == first
    # a new key asks for units no longer there: refused by the queueing script, with what is left
    assert await _return(client, sale["id"], status=422, quantity=1, idempotency_key="another") == {
        "error": f"sale {sale['id']} has 0 unit(s) left to return, not 1",
        "remaining": 0,
    }
    await drain()
    assert await db.fetchval("SELECT count(*) FROM returns WHERE sale_id = $1", sale["id"]) == 1


async def test_a_dead_return_gives_back_what_it_had_reserved(client, seed, db, drain, redis_client, queue_keys):
    await seed(items=2, stores=2, sales=10)
    sale = await _sale(client, item_id=2, store_id=1, quantity=3)
    await drain()

    async def reserved():
        assert await redis_client.get(queue_keys.returned(sale["id"])) == b"2"

    await _dead_return(client, db, drain, sale["id"], 2, before_written=reserved)
    assert await db.fetchval("SELECT count(*) FROM dead_letter") == 1
    assert await redis_client.get(queue_keys.returned(sale["id"])) == b"0"
    await drain()  # nothing left to write, nothing given back twice
    assert await redis_client.get(queue_keys.returned(sale["id"])) == b"0"
    dead_id = await db.fetchval("SELECT sale_id FROM dead_letter")  # the return's id: no sale has it
    assert await _return(client, dead_id, status=404, quantity=1) == {"error": f"no such sale: {dead_id}"}
    await _return(client, sale["id"], quantity=3)  # all three units are still the customer's to return
    await drain()
    assert await db.fetchval("SELECT returned FROM sale_returned WHERE sale_id = $1", sale["id"]) == 3
    assert await rollups.drift(db) == NO_DRIFT


async def test_a_replayed_return_counts_against_what_is_left(client, seed, db, drain, redis_client, queue_keys):
    """Replay writes a dead return the Redis counter had given back: the database's figure,
    now ahead of the counter, is what the next return is checked against."""
    await writer.prepare_connection(db)
    await seed(items=2, stores=2, sales=10)
    sale = await _sale(client, item_id=2, store_id=1, quantity=3)
    await drain()
    await _dead_return(client, db, drain, sale["id"], 2)
    await db.execute("INSERT INTO store (id, address) VALUES (50, 'pop-up')")
    [outcome] = await dead_letters.replay(db)
    assert outcome.written == 1
    assert await _return(client, sale["id"], status=422, quantity=2) == {
        "error": f"sale {sale['id']} has 1 unit(s) left to return, not 2",
        "remaining": 1,
    }
    # the same check in the queueing script, for a keyed return (which skips the API's own)
    assert (await _return(client, sale["id"], status=422, quantity=2, idempotency_key="k"))["remaining"] == 1
    await _return(client, sale["id"], quantity=1)
    await drain()
    assert await db.fetchval("SELECT returned FROM sale_returned WHERE sale_id = $1", sale["id"]) == 3


async def test_no_such_sale_is_answered_under_steady_traffic(aiohttp_client, settings, seed, db, drain):
    """The queue is never empty while tills keep selling: once every sale queued before the
    return has left it, a sale id still not found does not exist (404), however many sales came
    after."""
    await seed(items=2, stores=2, sales=10)
    client = await aiohttp_client(create_app(dataclasses.replace(settings, return_wait_ms=5000)))
    await _sale(client, item_id=1, store_id=1)  # queued before the return
    posted = asyncio.ensure_future(client.post("/sales/999999999999/returns/", json={"quantity": 1}))
    await asyncio.sleep(0.3)
    assert not posted.done()
    await drain()
    await _sale(client, item_id=2, store_id=2)  # queued after it: no reason to wait
    response = await asyncio.wait_for(posted, 2)
    assert response.status == 404 and await response.json() == {"error": "no such sale: 999999999999"}


async def test_a_return_right_after_a_sale_stamped_ahead_of_the_server(client, seed, db, drain):
    """A till's clock ahead (accepted: api.validation.SALE_TIME_AHEAD): the sale is stored at
    the server's moment, so a return with no return_time, posted at once, comes after it."""
    await seed(items=2, stores=2, sales=10)
    ahead = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3)
    sale = await _sale(client, item_id=1, store_id=1, sale_time=ahead.isoformat())
    assert dt.datetime.fromisoformat(sale["sale_time"]) < ahead
    await drain()
    answer = await _return(client, sale["id"], quantity=1)
    assert sale["sale_time"] <= answer["return_time"] < ahead.isoformat()


async def test_a_sale_id_of_thousands_of_digits_is_not_found(client):
    response = await client.post(f"/sales/{'9' * 5000}/returns/", json={"quantity": 1})
    assert response.status == 404
    assert (await response.json())["error"].startswith("sale id must be a positive integer")
