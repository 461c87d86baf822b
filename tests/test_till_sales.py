"""Tills as producers: a till (its pos key) numbers its sales, and a retry of a number is
answered the sale stored under it; what Redis keeps for that is one hash per till, not a key
per sale. And a till's clock ahead of the server's: the sale stored at the server's moment."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from api.app import create_app
from api.appkeys import ACCESS_CONTROL, REDIS
from shared import keys
from shared.queue import TILL_WINDOW

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture
async def till(db, seed):
    await seed(items=3, stores=2)
    return await keys.issue(db, "pos", 1, "till 1")


@pytest.fixture
async def till_client(aiohttp_client, settings, redis_client, till):
    return await aiohttp_client(create_app(dataclasses.replace(settings, auth_required=True)))


def _as(till) -> dict[str, str]:
    return {"Authorization": f"Bearer {till.key}"}


def _numbered(first: int, count: int, item_id: int = 1) -> list[dict]:
    return [{"item_id": item_id, "store_id": 1, "seq": seq} for seq in range(first, first + count)]


async def _redis_keys(redis_client, settings) -> list[str]:
    found = [k.decode() async for k in redis_client.scan_iter(match=settings.redis_key_prefix + "*")]
    return sorted(k.removeprefix(settings.redis_key_prefix) for k in found)


async def test_a_retried_number_is_answered_the_stored_sale(till_client, till, db, drain, redis_client, settings):
    first = await till_client.post("/sales/", json={"item_id": 1, "store_id": 1, "seq": 1}, headers=_as(till))
    assert first.status == 202
    sale = await first.json()
    # The answer was lost; the till sends the same sale again.
    again = await till_client.post("/sales/", json={"item_id": 1, "store_id": 1, "seq": 1}, headers=_as(till))
    assert (again.status, await again.json()) == (202, sale)
    # Another sale under that number (a second till on this key): refused, not answered the first.
    other = await till_client.post("/sales/", json={"item_id": 2, "store_id": 1, "seq": 1}, headers=_as(till))
    assert other.status == 409
    assert (await other.json())["error"].startswith(f"sale 1 of till {await _till_id(db, till)} is another sale")
    await drain()
    row = await db.fetchrow("SELECT id, item_id, till_id, till_seq, till_time FROM sales")
    assert tuple(row) == (
        sale["id"],
        1,
        await db.fetchval("SELECT id FROM api_key WHERE prefix = $1", till.prefix),
        1,
        None,
    )
    # Redis holds the till's hash, the queue's counters and the tills' contacts: no key per sale.
    partition = 1 % settings.queue_keys.partitions
    queue_keys = ("depth", "stream", "worker-stats", "tills")
    assert [k for k in await _redis_keys(redis_client, settings) if not k.endswith(queue_keys)] == [
        f"{{p{partition}}}:till:{row['till_id']}"
    ]


async def test_a_batch_resent_with_more_gets_the_same_ids_for_the_stored_ones(till_client, till, db, drain):
    first = await till_client.post("/sales/batch/", json=_numbered(1, 3), headers=_as(till))
    assert first.status == 202
    stored = await first.json()
    again = await till_client.post("/sales/batch/", json=_numbered(1, 5), headers=_as(till))
    assert again.status == 202
    answers = await again.json()
    assert answers[:3] == stored
    assert len({a["id"] for a in answers}) == 5
    await drain()
    assert await db.fetchval("SELECT array_agg(till_seq ORDER BY till_seq) FROM sales") == [1, 2, 3, 4, 5]
    assert await db.fetchval("SELECT last_seq FROM till_progress") == 5


async def test_a_number_out_of_the_window_is_refused_as_stored_and_nothing_of_the_request_queued(
    till_client, till, db, drain
):
    for first in (1, TILL_WINDOW + 1):
        response = await till_client.post("/sales/batch/", json=_numbered(first, TILL_WINDOW), headers=_as(till))
        assert response.status == 202, await response.text()
    # Number 1's slot now holds number 1,001: 1 is stored, and too old to be answered again.
    old = await till_client.post("/sales/", json={"item_id": 1, "store_id": 1, "seq": 1}, headers=_as(till))
    assert old.status == 409
    assert await old.json() == {
        "error": f"sale 1 of till {await _till_id(db, till)} is stored already (the till's highest stored is "
        f"{2 * TILL_WINDOW}) and too old to be answered again: a till numbers each new sale above its highest"
    }
    # A number of the window taken by another sale, beside a new one: neither is queued.
    mixed = _numbered(2 * TILL_WINDOW - 1, 1, item_id=2) + _numbered(2 * TILL_WINDOW + 1, 1)
    response = await till_client.post("/sales/batch/", json=mixed, headers=_as(till))
    assert response.status == 409
    body = await response.json()
    assert body["error"] == "1 of 2 sales are stored already; none was accepted"
    assert [e["index"] for e in body["errors"]] == [0]
    await drain()  # the new number of the refused batch was not queued
    assert await db.fetchval("SELECT count(*) FROM sales") == 2 * TILL_WINDOW
    in_window = await till_client.post("/sales/batch/", json=_numbered(TILL_WINDOW + 5, 1), headers=_as(till))
    assert in_window.status == 202


async def _till_id(db, till) -> int:
    return await db.fetchval("SELECT id FROM api_key WHERE prefix = $1", till.prefix)


async def test_seq_needs_a_till_and_goes_without_an_idempotency_key(till_client, till, client):
    open_mode = await client.post("/sales/", json={"item_id": 1, "store_id": 1, "seq": 1})
    assert open_mode.status == 400
    assert (await open_mode.json())["error"].startswith("seq is a till's own number for its sales")
    both = await till_client.post(
        "/sales/", json={"item_id": 1, "store_id": 1, "seq": 1, "idempotency_key": "k"}, headers=_as(till)
    )
    assert (both.status, await both.json()) == (
        400,
        {"error": "a sale carries a till's seq or an idempotency_key, not both"},
    )
    for numbers in ([2, 1], [1, 1], [1, TILL_WINDOW + 1]):
        batch = [{"item_id": 1, "store_id": 1, "seq": seq} for seq in numbers]
        response = await till_client.post("/sales/batch/", json=batch, headers=_as(till))
        assert response.status == 400, numbers
    header = await till_client.post(
        "/sales/", json={"item_id": 1, "store_id": 1, "seq": 1}, headers={**_as(till), "Idempotency-Key": "k"}
    )
    assert (await header.json()) == {"error": "a sale carries a till's seq or an idempotency_key, not both"}
    for bad in (0, -1, 2**53 + 1, "1", 1.5):
        response = await till_client.post("/sales/", json={"item_id": 1, "store_id": 1, "seq": bad}, headers=_as(till))
        assert response.status == 400, bad


async def test_a_retry_after_the_item_was_retired_is_answered_the_stored_sale(till_client, till, settings):
    first = await till_client.post("/sales/", json={"item_id": 3, "store_id": 1, "seq": 7}, headers=_as(till))
    sale = await first.json()
    admin = {"Authorization": f"Bearer {settings.admin_token}"}
    assert (await till_client.delete("/catalogue/items/3", headers=admin)).status == 200
    again = await till_client.post("/sales/", json={"item_id": 3, "store_id": 1, "seq": 7}, headers=_as(till))
    assert (again.status, await again.json()) == (202, sale)
    new = await till_client.post("/sales/", json={"item_id": 3, "store_id": 1, "seq": 8}, headers=_as(till))
    assert new.status == 422


async def test_a_sale_stamped_ahead_is_stored_at_the_servers_moment_with_the_tills_kept(client, seed, db, drain):
    await seed(items=1, stores=1)
    ahead = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=90)
    response = await client.post("/sales/", json={"item_id": 1, "store_id": 1, "sale_time": ahead.isoformat()})
    assert response.status == 202
    answered = dt.datetime.fromisoformat((await response.json())["sale_time"])
    assert answered < ahead - dt.timedelta(seconds=80)
    await drain()
    row = await db.fetchrow("SELECT sale_time, till_time, accepted_at FROM sales")
    assert (row["sale_time"], row["till_time"]) == (answered, ahead)
    assert row["sale_time"] == row["accepted_at"]
    too_far = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=3)
    refused = await client.post("/sales/", json={"item_id": 1, "store_id": 1, "sale_time": too_far.isoformat()})
    assert (refused.status, await refused.json()) == (
        400,
        {"error": "sale_time is in the future (more than 2 minutes ahead of the server's clock)"},
    )


async def test_tills_me_says_the_highest_number_queued_or_stored(till_client, till, db, drain, settings):
    me = await till_client.get("/tills/me", headers=_as(till))
    till_id = await _till_id(db, till)
    assert (me.status, await me.json()) == (200, {"till_id": till_id, "store_id": 1, "last_seq": 0})
    await till_client.post("/sales/batch/", json=_numbered(1, 4), headers=_as(till))
    assert (await (await till_client.get("/tills/me", headers=_as(till))).json())["last_seq"] == 4
    await drain()
    await till_client.app[REDIS].delete(settings.queue_keys.till(1, till_id))  # Redis lost it: the database says
    assert (await (await till_client.get("/tills/me", headers=_as(till))).json())["last_seq"] == 4
    admin = await till_client.get("/tills/me", headers={"Authorization": f"Bearer {settings.admin_token}"})
    assert admin.status == 403


async def test_a_new_key_for_the_same_till_keeps_its_numbers(till_client, till, db, settings):
    assert (await till_client.post("/sales/batch/", json=_numbered(1, 3), headers=_as(till))).status == 202
    till_id = await _till_id(db, till)
    assert till.till_id == till_id
    renewed = await keys.issue(db, "pos", 1, "till 1, new key", till_id=till_id)
    assert renewed.till_id == till_id
    await keys.revoke(db, till.prefix)
    await till_client.app[ACCESS_CONTROL].keys.reload()  # else within 4 s
    me = await till_client.get("/tills/me", headers=_as(renewed))
    assert await me.json() == {"till_id": till_id, "store_id": 1, "last_seq": 3}
    # the same numbers are retries of the same till's sales, whichever key sends them
    again = await till_client.post("/sales/batch/", json=_numbered(3, 2), headers=_as(renewed))
    assert again.status == 202
    assert (await (await till_client.get("/tills/me", headers=_as(renewed))).json())["last_seq"] == 4
    admin = {"Authorization": f"Bearer {settings.admin_token}"}
    board = await (await till_client.get("/tills/", headers=admin)).json()
    assert [(t["till_id"], t["label"]) for t in board["tills"]] == [(till_id, "till 1, new key")]


async def test_a_key_names_a_till_of_its_own_store_only(till_client, till, db, settings):
    till_id = await _till_id(db, till)
    with pytest.raises(ValueError, match=f"there is no till {till_id} of store 2"):
        await keys.issue(db, "pos", 2, "elsewhere", till_id=till_id)
    admin = {"Authorization": f"Bearer {settings.admin_token}"}
    response = await till_client.post(
        "/admin/keys/", json={"kind": "pos", "store_id": 2, "till_id": till_id}, headers=admin
    )
    assert (response.status, await response.json()) == (
        422,
        {"error": f"there is no till {till_id} of store 2 (a till is a pos key's id)"},
    )
    issued = await till_client.post(
        "/admin/keys/", json={"kind": "pos", "store_id": 1, "till_id": till_id}, headers=admin
    )
    assert issued.status == 201 and (await issued.json())["till_id"] == till_id
