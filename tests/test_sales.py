"""POST /sales/: the answer, the stored row, and every kind of bad input."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from api.appkeys import INTAKE
from tests.conftest import ADMIN_TOKEN, edit_by_hand
from tests.queue_state import queued_entries, queued_sales

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def test_accepted_sale_answers_202_with_final_id_and_is_stored(client, seed, db, drain):
    await seed(items=3, stores=2)
    price = await db.fetchval("SELECT price FROM item WHERE id = 2")

    response = await client.post("/sales/", json={"item_id": 2, "store_id": 1})

    assert response.status == 202
    body = await response.json()
    assert set(body) == {"id", "sale_time", "item_id", "store_id"}
    assert (body["item_id"], body["store_id"]) == (2, 1)
    sale_time = dt.datetime.fromisoformat(body["sale_time"])
    assert sale_time.utcoffset() == dt.timedelta(0)
    assert abs(dt.datetime.now(dt.UTC) - sale_time) < dt.timedelta(seconds=5)

    await drain()
    row = await db.fetchrow("SELECT * FROM sales WHERE id = $1", body["id"])
    assert (row["item_id"], row["store_id"], row["price"], row["quantity"]) == (2, 1, price, 1)
    assert row["sale_time"] == sale_time


async def test_without_trailing_slash_too(client, seed):
    await seed()
    response = await client.post("/sales", json={"item_id": 1, "store_id": 1})
    assert response.status == 202


async def test_quantity_and_past_sale_time_are_kept(client, seed, db, drain):
    await seed()
    response = await client.post(
        "/sales/", json={"item_id": 1, "store_id": 1, "quantity": 7, "sale_time": "2026-03-01T09:30:00+03:00"}
    )
    assert response.status == 202
    body = await response.json()
    assert body["sale_time"] == "2026-03-01T06:30:00+00:00"
    await drain()
    row = await db.fetchrow("SELECT quantity, sale_time FROM sales WHERE id = $1", body["id"])
    assert row["quantity"] == 7
    assert row["sale_time"] == dt.datetime(2026, 3, 1, 6, 30, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    "body, fragment",
    [
        (b'{"item_id": 1, "store_id": 1', "malformed JSON"),
        (b"", "malformed JSON"),
        (b"[1, 2]", "Expected `object`"),
        (b'{"item_id": 1}', "store_id"),
        (b'{"item_id": "1", "store_id": 1}', "item_id"),
        (b'{"item_id": 1.5, "store_id": 1}', "item_id"),
        (b'{"item_id": true, "store_id": 1}', "item_id"),
        (b'{"item_id": 0, "store_id": 1}', "item_id"),
        (b'{"item_id": 1, "store_id": 99999999999}', "store_id"),
        (b'{"item_id": 1, "store_id": 1, "quantity": 0}', "quantity"),
        (b'{"item_id": 1, "store_id": 1, "quantity": 10001}', "quantity"),
        (b'{"item_id": 1, "store_id": 1, "extra": 1}', "unknown field `extra`"),
        (b'{"item_id": 1, "store_id": 1, "sale_time": "yesterday"}', "sale_time"),
        (b'{"item_id": 1, "store_id": 1, "sale_time": "2026-01-01T10:00:00"}', "UTC offset"),
        (b'{"item_id": 1, "store_id": 1, "sale_time": "2999-01-01T10:00:00+00:00"}', "future"),
        (b'{"item_id": 1, "store_id": 1, "idempotency_key": ""}', "idempotency_key"),
        (b'{"item_id": 1, "store_id": 1, "idempotency_key": "' + b"k" * 65 + b'"}', "idempotency_key"),
    ],
)
async def test_bad_input_is_400_and_queues_nothing(client, seed, redis_client, queue_keys, body, fragment):
    await seed()
    response = await client.post("/sales/", data=body)
    assert response.status == 400
    error = (await response.json())["error"]
    assert fragment in error
    assert await queued_entries(redis_client, queue_keys) == 0


@pytest.mark.parametrize(
    "sale, message",
    [
        ({"item_id": 99, "store_id": 1}, "unknown item_id 99"),
        ({"item_id": 1, "store_id": 55}, "unknown store_id 55"),
    ],
)
async def test_unknown_item_or_store_is_422_naming_it(client, seed, redis_client, queue_keys, sale, message):
    await seed()
    response = await client.post("/sales/", json=sale)
    assert response.status == 422
    assert await response.json() == {"error": message}
    assert await queued_entries(redis_client, queue_keys) == 0


async def test_body_over_one_mib_is_413(client, seed):
    await seed()
    response = await client.post(
        "/sales/", data=b'{"item_id": 1, "store_id": 1, "pad": "' + b"x" * (1024 * 1024) + b'"}'
    )
    assert response.status == 413
    assert "error" in await response.json()


async def test_new_item_is_known_without_restart(client, seed, db):
    await seed(items=1)
    new_id = await db.fetchval("INSERT INTO item (name, price) VALUES ('new', 10) RETURNING id")
    response = await client.post("/sales/", json={"item_id": new_id, "store_id": 1})
    assert response.status == 202


async def test_same_idempotency_key_returns_same_sale_and_stores_once(client, seed, db, drain):
    await seed()
    sale = {"item_id": 1, "store_id": 2, "idempotency_key": "pos-7-000123"}
    answers = await asyncio.gather(*(client.post("/sales/", json=sale) for _ in range(5)))
    bodies = [await a.json() for a in answers]
    assert {a.status for a in answers} == {202}
    assert all(b == bodies[0] for b in bodies)
    header = await client.post(
        "/sales/", json={"item_id": 1, "store_id": 2}, headers={"Idempotency-Key": "pos-7-000123"}
    )
    assert await header.json() == bodies[0]
    await drain()
    assert await db.fetchval("SELECT count(*) FROM sales") == 1
    assert await db.fetchval("SELECT id FROM sales") == bodies[0]["id"]


async def test_a_retry_after_its_item_went_is_answered_with_the_stored_sale(client, seed, db, drain):
    """The idempotency key is checked before the catalogue: a till whose answer was lost, and
    that retries after the item was retired or deleted, gets its sale back, not a 422 that
    would make it set aside a sale that counts. A new sale of that item is still refused."""
    await seed(items=3, stores=2)
    sold = {"item_id": 2, "store_id": 1, "quantity": 3, "idempotency_key": "till-1-000042"}
    queued = {"item_id": 3, "store_id": 2, "idempotency_key": "till-2-000007"}
    first = [await (await client.post("/sales/", json=sold)).json()]
    await drain()  # the first is written; the second stays queued
    first.append(await (await client.post("/sales/", json=queued)).json())
    retire = await client.delete(f"/catalogue/items/{sold['item_id']}", headers=ADMIN)
    assert retire.status == 200
    # an item whose only sale is still queued can be deleted by hand (no row refers to it yet)
    await edit_by_hand(db, "DELETE FROM item WHERE id = $1", queued["item_id"])
    await client.server.app[INTAKE].catalogue.reload()
    for sale, answer in zip((sold, queued), first):
        retry = await client.post("/sales/", json=sale)
        assert retry.status == 202, await retry.text()
        assert await retry.json() == answer
    batch = await client.post("/sales/batch/", json=[sold, queued, {"item_id": 1, "store_id": 2}])
    assert batch.status == 202
    assert (await batch.json())[:2] == first
    fresh = await client.post("/sales/", json={**sold, "idempotency_key": "till-1-000043"})
    assert fresh.status == 422 and (await fresh.json())["error"].startswith("item 2 was retired at ")
    fresh = await client.post("/sales/", json={**queued, "idempotency_key": "till-2-000008"})
    assert fresh.status == 422 and (await fresh.json())["error"] == "unknown item_id 3"
    await drain()
    stored = await db.fetch("SELECT id, item_id, quantity FROM sales ORDER BY id")
    assert [tuple(r) for r in stored if r["item_id"] == 2] == [(first[0]["id"], 2, 3)]
    # the sale queued before its item was deleted by hand cannot be written (the retries queued
    # nothing more): it is set aside once, with its reason, as it was before the retries
    letters = await db.fetch("SELECT sale->>'id' AS id, reason FROM dead_letter")
    assert [int(r["id"]) for r in letters] == [first[1]["id"]], letters


async def test_header_and_body_keys_must_agree(client, seed):
    await seed()
    response = await client.post(
        "/sales/", json={"item_id": 1, "store_id": 1, "idempotency_key": "a"}, headers={"Idempotency-Key": "b"}
    )
    assert response.status == 400


async def test_redis_down_answers_503_with_retry_after_quickly(aiohttp_client, settings, seed):
    import dataclasses
    import time

    from api.app import create_app

    await seed()
    app = create_app(dataclasses.replace(settings, redis_url="redis://127.0.0.1:1/0"))
    client = await aiohttp_client(app)
    started = time.monotonic()
    response = await client.post("/sales/", json={"item_id": 1, "store_id": 1})
    assert time.monotonic() - started < 1.5
    assert response.status == 503
    assert response.headers["Retry-After"].isdigit()
    assert "error" in await response.json()


@pytest.mark.parametrize("path", ["/sales/", "/sales/batch/"])
async def test_deeply_nested_json_is_400_not_500(client, seed, path):
    await seed()
    for body in (b"[" * 200_000 + b"]" * 200_000, b'{"item_id": ' * 50_000):
        response = await client.post(path, data=body)
        assert response.status == 400
        assert "error" in await response.json()


async def test_body_that_trickles_in_is_cut_off_with_408(client, seed, monkeypatch):
    from api import validation

    await seed()
    monkeypatch.setattr(validation, "BODY_TIMEOUT_SECONDS", 0.5)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        b'POST /sales/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{"item_id": 1'
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 408")


async def test_a_full_queue_refuses_at_once_for_a_moment_then_asks_again(aiohttp_client, settings, seed):
    import asyncio
    import dataclasses

    from api.app import create_app
    from api.sale_queue import FULL_HOLD_SECONDS

    await seed()
    client = await aiohttp_client(create_app(dataclasses.replace(settings, queue_max_depth=2, queue_partitions=1)))
    for _ in range(2):
        assert (await client.post("/sales/", json={"item_id": 1, "store_id": 1})).status == 202
    full = await client.post("/sales/", json={"item_id": 1, "store_id": 1})
    assert full.status == 503 and full.headers["Retry-After"] == "2"
    assert await full.json() == {"error": "too many sales are waiting to be written; retry shortly"}
    # Right after Redis said "full", bodies are not even decoded: a malformed one gets the 503 too.
    for path in ("/sales/", "/sales/batch/"):
        early = await client.post(path, data=b"not json", headers={"Content-Type": "application/json"})
        assert early.status == 503 and await early.json() == await full.json()
    await asyncio.sleep(FULL_HOLD_SECONDS * 1.5)
    assert (await client.post("/sales/", data=b"not json")).status == 400
    assert (await client.post("/sales/", json={"item_id": 1, "store_id": 1})).status == 503  # asked Redis again


async def test_a_full_partition_refuses_only_its_own_stores(aiohttp_client, settings, seed, redis_client, queue_keys):
    """QUEUE_MAX_DEPTH is shared out over the partitions: a partition whose worker fell behind
    refuses its stores' sales, and a batch that touches it is refused whole."""
    import dataclasses

    from api.app import create_app

    await seed(items=2, stores=4)
    client = await aiohttp_client(create_app(dataclasses.replace(settings, queue_max_depth=4, queue_partitions=2)))
    for _ in range(2):  # store 1: partition 1, which holds 2 at most
        assert (await client.post("/sales/", json={"item_id": 1, "store_id": 1})).status == 202
    assert (await client.post("/sales/", json={"item_id": 1, "store_id": 3})).status == 503
    assert (await client.post("/sales/", json={"item_id": 1, "store_id": 2})).status == 202  # partition 0
    mixed = [{"item_id": 2, "store_id": 4}, {"item_id": 2, "store_id": 1}]
    assert (await client.post("/sales/batch/", json=mixed)).status == 503
    assert await queued_sales(redis_client, dataclasses.replace(queue_keys, partitions=2)) == 3  # nothing of the batch
    assert (await client.post("/sales/batch/", json=mixed[:1])).status == 202
