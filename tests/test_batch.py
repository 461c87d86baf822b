"""POST /sales/batch/: all sales accepted in order, or none."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from hypothesis import event, given, settings, strategies as st

from tests.queue_state import queued_entries, queued_sales

UTC = dt.UTC


async def _stored(db):
    return [
        dict(r)
        for r in await db.fetch(
            "SELECT id, item_id, store_id, quantity, sale_time, idempotency_key FROM sales ORDER BY id"
        )
    ]


@pytest.mark.parametrize("wrap", [False, True], ids=["array", "object"])
async def test_batch_is_202_with_every_sale_in_order(client, seed, db, drain, redis_client, queue_keys, wrap):
    await seed(items=4, stores=3)
    prices = {r["id"]: r["price"] for r in await db.fetch("SELECT id, price FROM item")}
    sales = [
        {"item_id": 4, "store_id": 1},
        {"item_id": 1, "store_id": 3, "quantity": 9},
        {"item_id": 2, "store_id": 2, "sale_time": "2026-01-02T03:04:05.678901+05:00"},
        {"item_id": 4, "store_id": 1, "idempotency_key": "pos-1-42"},
        {"item_id": 3, "store_id": 2, "quantity": 10000},
    ]
    response = await client.post("/sales/batch/", json={"sales": sales} if wrap else sales)
    assert response.status == 202, await response.text()
    answers = await response.json()
    assert [set(a) for a in answers] == [{"id", "sale_time", "item_id", "store_id"}] * len(sales)
    assert [(a["item_id"], a["store_id"]) for a in answers] == [(s["item_id"], s["store_id"]) for s in sales]
    assert len({a["id"] for a in answers}) == len(sales)
    assert answers[2]["sale_time"] == "2026-01-01T22:04:05.678901+00:00"
    for answer in answers:
        assert dt.datetime.fromisoformat(answer["sale_time"]).utcoffset() == dt.timedelta(0)
    assert await queued_sales(redis_client, queue_keys) == 5

    await drain()
    rows = {r["id"]: r for r in await db.fetch("SELECT * FROM sales")}
    assert set(rows) == {a["id"] for a in answers}
    for sale, answer in zip(sales, answers):
        row = rows[answer["id"]]
        assert (row["item_id"], row["store_id"], row["quantity"], row["price"], row["idempotency_key"]) == (
            sale["item_id"],
            sale["store_id"],
            sale.get("quantity", 1),
            prices[sale["item_id"]],
            sale.get("idempotency_key"),
        )
        assert row["sale_time"] == dt.datetime.fromisoformat(answer["sale_time"])
    assert await queued_entries(redis_client, queue_keys) == 0


async def test_batch_without_trailing_slash(client, seed):
    await seed()
    response = await client.post("/sales/batch", json=[{"item_id": 1, "store_id": 1}])
    assert response.status == 202
    assert len(await response.json()) == 1


FUTURE = "2999-01-01T00:00:00+00:00"


BAD_SALES = [
    ({"item_id": "2", "store_id": 1}, "item_id"),
    ({"item_id": 2}, "store_id"),
    ({"item_id": 2, "store_id": 1, "quantity": 0}, "quantity"),
    ({"item_id": 2, "store_id": 1, "colour": "red"}, "unknown field `colour`"),
    ("not a sale", "Expected `object`"),
    ({"item_id": 99, "store_id": 1}, "unknown item_id 99"),
    ({"item_id": 2, "store_id": 55}, "unknown store_id 55"),
    ({"item_id": 2, "store_id": 1, "sale_time": FUTURE}, "future"),
]


async def test_one_bad_sale_is_422_by_index_and_nothing_is_queued(client, seed, db, drain, redis_client, queue_keys):
    await seed()
    for bad, message in BAD_SALES:
        sales = [
            {"item_id": 1, "store_id": 1},
            {"item_id": 2, "store_id": 2, "idempotency_key": "k-1"},
            bad,
            {"item_id": 3, "store_id": 3},
        ]
        response = await client.post("/sales/batch/", json=sales)
        assert response.status == 422, bad
        body = await response.json()
        assert set(body) == {"error", "errors"}
        assert isinstance(body["error"], str) and body["error"]
        [error] = body["errors"]
        assert set(error) == {"index", "error"}
        assert error["index"] == 2, bad
        assert message in error["error"], (bad, error)

        assert await queued_entries(redis_client, queue_keys) == 0
        assert await queued_sales(redis_client, queue_keys) == 0
    await drain()
    assert await _stored(db) == []
    # The key of a refused batch was not used up: sending the good sale again is accepted.
    again = await client.post("/sales/", json={"item_id": 2, "store_id": 2, "idempotency_key": "k-1"})
    assert again.status == 202
    await drain()
    assert [r["idempotency_key"] for r in await _stored(db)] == ["k-1"]


async def test_every_bad_sale_is_listed_by_index(client, seed, redis_client, queue_keys):
    await seed()
    sales = [
        {"item_id": 1, "store_id": 1},
        {"item_id": 99, "store_id": 55},
        {"item_id": 1, "store_id": 1},
        {"item_id": 1, "store_id": 77},
    ]
    response = await client.post("/sales/batch/", json=sales)
    assert response.status == 422
    body = await response.json()
    assert body["errors"] == [
        {"index": 1, "error": "unknown item_id 99; unknown store_id 55"},
        {"index": 3, "error": "unknown store_id 77"},
    ]
    assert await queued_entries(redis_client, queue_keys) == 0

    # Shape errors and unknown references together: both listed, still nothing queued.
    sales[0] = {"item_id": True, "store_id": 1}
    response = await client.post("/sales/batch/", json=sales)
    assert response.status == 422
    assert [e["index"] for e in (await response.json())["errors"]] == [0, 1, 3]
    assert await queued_entries(redis_client, queue_keys) == 0


MALFORMED = [
    b"",
    b"[",
    b"{",
    b'{"sales": [}',
    b"null",
    b"42",
    b'"sales"',
    b'{"sale": [{"item_id": 1, "store_id": 1}]}',
    b'{"sales": [{"item_id": 1, "store_id": 1}], "extra": 1}',
    b'{"sales": {"item_id": 1, "store_id": 1}}',
]


async def test_empty_or_malformed_batch_is_400(client, seed, redis_client, queue_keys):
    await seed()
    for body in [b"[]", b'{"sales": []}', b" [ ] "]:
        response = await client.post("/sales/batch/", data=body)
        assert response.status == 400, body
        assert "at least one" in (await response.json())["error"]
    for body in MALFORMED:
        response = await client.post("/sales/batch/", data=body)
        assert response.status == 400, (body, await response.text())
        assert list(await response.json()) == ["error"]
    assert await queued_entries(redis_client, queue_keys) == 0


async def test_batch_of_1000_is_accepted_and_1001_is_413(client, seed, db, drain, redis_client, queue_keys):
    await seed(items=3, stores=3)
    sales = [{"item_id": i % 3 + 1, "store_id": i % 2 + 1} for i in range(1001)]
    response = await client.post("/sales/batch/", json=sales)
    assert response.status == 413
    assert "1000" in (await response.json())["error"]
    assert await queued_entries(redis_client, queue_keys) == 0

    response = await client.post("/sales/batch/", json=sales[:1000])
    assert response.status == 202
    ids = [a["id"] for a in await response.json()]
    await drain()
    assert await db.fetchval("SELECT count(*) FROM sales WHERE id = ANY($1)", ids) == 1000


async def test_body_over_one_mib_is_413(client, seed, redis_client, queue_keys):
    await seed()
    sale = {"item_id": 1, "store_id": 1, "idempotency_key": "k" * 64}
    body = json.dumps([sale] * 900).encode() + b" " * (1024 * 1024)
    response = await client.post("/sales/batch/", data=body)
    assert response.status == 413
    assert list(await response.json()) == ["error"]
    assert await queued_entries(redis_client, queue_keys) == 0


async def test_idempotency_key_header_on_batch_is_400(client, seed, redis_client, queue_keys):
    await seed()
    response = await client.post(
        "/sales/batch/", json=[{"item_id": 1, "store_id": 1}], headers={"Idempotency-Key": "batch-1"}
    )
    assert response.status == 400
    assert "idempotency_key" in (await response.json())["error"]
    assert await queued_entries(redis_client, queue_keys) == 0


async def test_reposted_batch_returns_same_ids_and_stores_nothing_new(client, seed, db, drain):
    await seed()
    sales = [
        {"item_id": i % 5 + 1, "store_id": i % 4 + 1, "idempotency_key": f"pos-{i % 4 + 1}-{i}"} for i in range(20)
    ]
    first = await client.post("/sales/batch/", json=sales)
    assert first.status == 202
    first_answers = await first.json()
    await drain()
    stored = await _stored(db)
    assert len(stored) == 20

    again = await client.post("/sales/batch/", json={"sales": sales})
    assert again.status == 202
    assert await again.json() == first_answers
    await drain()
    assert await _stored(db) == stored

    # A later batch mixing replayed and new keys: replays keep their ids, new sales get new ones.
    mixed = [sales[3], {"item_id": 1, "store_id": 1, "idempotency_key": "new-key"}, sales[7]]
    response = await client.post("/sales/batch/", json=mixed)
    answers = await response.json()
    assert answers[0] == first_answers[3] and answers[2] == first_answers[7]
    assert answers[1]["id"] not in {a["id"] for a in first_answers}
    await drain()
    assert len(await _stored(db)) == 21


async def test_batch_key_matches_an_earlier_single_sale(client, seed, db, drain):
    await seed()
    single = await client.post("/sales/", json={"item_id": 2, "store_id": 3}, headers={"Idempotency-Key": "abc"})
    single_answer = await single.json()
    response = await client.post(
        "/sales/batch/", json=[{"item_id": 1, "store_id": 1}, {"item_id": 2, "store_id": 3, "idempotency_key": "abc"}]
    )
    answers = await response.json()
    assert answers[1] == single_answer
    await drain()
    assert await db.fetchval("SELECT count(*) FROM sales") == 2


async def test_same_key_twice_in_one_batch_is_one_sale(client, seed, db, drain):
    await seed()
    sale = {"item_id": 1, "store_id": 1, "idempotency_key": "dup"}
    response = await client.post("/sales/batch/", json=[sale, {"item_id": 2, "store_id": 2}, sale])
    assert response.status == 202
    answers = await response.json()
    assert answers[0] == answers[2]
    await drain()
    assert sorted(r["id"] for r in await _stored(db)) == sorted({answers[0]["id"], answers[1]["id"]})


_field_values = st.one_of(
    st.integers(-2, 2**31 + 1),
    st.text(max_size=3),
    st.none(),
    st.booleans(),
    st.sampled_from(
        ["2026-01-01T00:00:00+00:00", "2026-01-01T00:00:00", "1999-12-31T23:00:00Z", "2999-01-01T00:00:00Z"]
    ),
)
_sale = st.fixed_dictionaries(  # mostly good sales, and a field that may spoil one
    {"item_id": st.integers(1, 20), "store_id": st.integers(1, 20)},
    optional={
        "quantity": st.integers(0, 10_001),
        "idempotency_key": st.text(max_size=3),
        "sale_time": st.sampled_from(["2026-01-01T00:00:00+00:00", "2026-01-01T00:00:00"]),
        "extra": st.none(),
    },
)
_anything = st.dictionaries(
    st.sampled_from(["item_id", "store_id", "quantity", "sale_time", "idempotency_key"]), _field_values
)
_sales = st.lists(st.one_of(_sale, _sale, _sale, _anything), max_size=4)


@settings(max_examples=300, deadline=None)
@given(batch=st.one_of(_sales, _sales.map(lambda sales: {"sales": sales}), _field_values))
def test_one_pass_batch_decoding_agrees_with_sale_by_sale(batch):
    # The one-pass decoder may only accept what the sale-by-sale path accepts in full, and the same.
    from api.moments import now_us
    from api.validation import BadRequest, decode_batch, decode_sale, decode_valid_batch

    body, now = json.dumps(batch).encode(), now_us()
    fast = decode_valid_batch(body, now)
    try:
        slow = [decode_sale(raw, now) for raw in decode_batch(body)]
    except BadRequest:
        slow = None
    event("accepted whole" if fast is not None else "refused")
    assert fast == slow
