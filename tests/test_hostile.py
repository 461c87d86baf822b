"""Hostile input, property-based (hypothesis) on the real app, PostgreSQL and Redis.

- Any body to POST /sales/ or /sales/batch/ is either accepted (202, and after the worker has
  run exactly the posted sales are stored) or refused with a 4xx JSON {"error": ...}, with
  nothing queued and nothing stored. For near-valid sales the expected status is computed.
- Query strings of the reports (SQL, huge numbers, unicode, repeated keys, empty values,
  broken percent-encoding) answer 200 with the documented shape or 400 {"error"}.
- Idempotency-Key headers of any size and content; bodies over 1 MiB (413); connections that
  drop mid-body; none of it gives a 5xx or stops the server.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import itertools
import json
import uuid

import pytest
from hypothesis import HealthCheck, event, example, given, settings, strategies as st

from tests.queue_state import queued_entries

ITEMS, STORES = 5, 4
SALE_KEYS = {"item_id", "store_id", "quantity", "sale_time", "idempotency_key"}
HYPOTHESIS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ---------------------------------------------------------------- strategies

json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=15), inner, max_size=5),
    max_leaves=20,
)

# Valid values of each field, and flaws: (field, value or MISSING, status the flaw alone causes).
MISSING = object()
# A sale_time is valid within MAX_SALE_AGE_DAYS (400 by default) of now; further back is a 422.
_NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
_RECENT = _NOW - dt.timedelta(days=300)
_TOO_OLD = _NOW - dt.timedelta(days=401)
valid_fields = {
    "quantity": st.integers(1, 10_000),
    "sale_time": st.one_of(
        st.sampled_from(
            [
                _RECENT.astimezone(dt.timezone(dt.timedelta(hours=3))).isoformat(),
                _RECENT.strftime("%Y-%m-%dT%H:%M:%SZ"),
                (_RECENT + dt.timedelta(microseconds=123456))
                .astimezone(dt.timezone(dt.timedelta(hours=-7)))
                .isoformat(),
                None,
            ]
        ),
        st.datetimes(
            min_value=(_NOW - dt.timedelta(days=399)).replace(tzinfo=None),
            max_value=(_NOW - dt.timedelta(minutes=1)).replace(tzinfo=None),
            timezones=st.just(dt.UTC),
        ).map(dt.datetime.isoformat),
    ),
    "idempotency_key": st.one_of(
        st.none(), st.text(st.characters(codec="utf-8", exclude_categories=("Cc",)), min_size=1, max_size=64)
    ),
}
BAD_IDS = [
    0,
    -1,
    2**31,
    2**63,
    -(2**63),
    10**30,
    "1",
    "1 OR 1=1",
    "1; DROP TABLE sales; --",
    "",
    "\N{ARABIC-INDIC DIGIT ONE}",
    True,
    False,
    None,
    1.0,
    1.5,
    [1],
    {"id": 1},
    1e300,
    MISSING,
]
flaws = st.one_of(
    st.tuples(st.sampled_from(["item_id", "store_id"]), st.sampled_from(BAD_IDS), st.just(400)),
    st.tuples(st.just("item_id"), st.integers(ITEMS + 1, 2**31 - 1), st.just(422)),
    st.tuples(st.just("store_id"), st.integers(STORES + 1, 2**31 - 1), st.just(422)),
    st.tuples(
        st.just("quantity"), st.sampled_from([0, -1, 10_001, 2**31, 2**64, "2", None, 2.0, True, [], {}]), st.just(400)
    ),
    st.tuples(
        st.just("sale_time"),
        st.sampled_from(
            [
                "2999-01-01T00:00:00+00:00",
                "1999-12-31T23:59:59+00:00",
                "2026-03-01T09:30:00",
                "2026-03-01",
                "yesterday",
                "",
                "2026-13-01T00:00:00Z",
                "2026-02-30T00:00:00Z",
                "0001-01-01T00:00:00Z",
                "9999-12-31T23:59:59-23:59",
                "'; DROP TABLE sales; --",
                1_700_000_000,
                1.5,
                True,
                [],
                {},
            ]
        ),
        st.just(400),
    ),
    st.tuples(
        st.just("sale_time"),
        st.sampled_from(["2000-01-01T00:00:00+00:00", "2010-06-01T12:00:00Z", _TOO_OLD.isoformat()]),
        st.just(422),
    ),
    st.tuples(
        st.just("idempotency_key"),
        st.one_of(
            st.sampled_from(["", "a\x00b", "tab\there", "\x7f", "line\nbreak", 7, [], {}, True]),
            st.text(min_size=65, max_size=200),
        ),
        st.just(400),
    ),
    st.tuples(st.text(max_size=12).filter(lambda k: k not in SALE_KEYS), json_scalars, st.just(400)),
)


@st.composite
def near_valid_sales(draw, max_flaws: int = 3):
    """(sale dict, expected status of it alone: 202, 400 or 422): a valid sale with 0..max_flaws flaws."""
    sale = {"item_id": draw(st.integers(1, ITEMS)), "store_id": draw(st.integers(1, STORES))}
    for name, strategy in valid_fields.items():
        if draw(st.booleans()):
            sale[name] = draw(strategy)
    statuses = {202}
    for name, value, status in draw(st.lists(flaws, max_size=max_flaws, unique_by=lambda f: f[0])):
        if value is MISSING:
            sale.pop(name, None)
        else:
            sale[name] = value
        statuses.add(status)
    return sale, max(statuses, key=[202, 422, 400].index)


def encode(value, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


sale_bodies = st.one_of(
    near_valid_sales().flatmap(lambda s: st.booleans().map(lambda a: (encode(s[0], a), s[1]))),
    json_values.map(lambda v: (encode(v, True), None)),
    st.binary(max_size=300).map(lambda b: (b, None)),
)

# ---------------------------------------------------------------- helpers


async def _error_of(response) -> str:
    assert response.headers["Content-Type"].startswith("application/json"), await response.text()
    body = await response.json()
    assert isinstance(body, dict) and isinstance(body["error"], str) and body["error"]
    return body


async def _state(db, redis_client, queue_keys):
    return await queued_entries(redis_client, queue_keys), await db.fetchval("SELECT count(*) FROM sales")


def _unique_keys(sale):
    """Idempotency keys made unique per example, so that a hypothesis replay is not a retry."""
    if isinstance(sale, dict) and isinstance(sale.get("idempotency_key"), str) and sale["idempotency_key"]:
        sale = {**sale, "idempotency_key": (uuid.uuid4().hex[:8] + sale["idempotency_key"])[:64]}
    return sale


async def _check_stored(db, drain, posted: list[dict], answers: list[dict]):
    await drain()
    for sale, answer in zip(posted, answers, strict=True):
        assert (answer["item_id"], answer["store_id"]) == (sale["item_id"], sale["store_id"])
        row = await db.fetchrow(
            "SELECT item_id, store_id, quantity, sale_time, idempotency_key FROM sales WHERE id = $1", answer["id"]
        )
        assert row is not None, f"accepted sale {answer} was not stored"
        assert (row["item_id"], row["store_id"], row["quantity"]) == (
            sale["item_id"],
            sale["store_id"],
            sale.get("quantity", 1),
        )
        assert row["sale_time"] == dt.datetime.fromisoformat(answer["sale_time"])
        if sale.get("sale_time") is not None:
            assert row["sale_time"] == dt.datetime.fromisoformat(sale["sale_time"].replace("Z", "+00:00"))
        assert row["idempotency_key"] == sale.get("idempotency_key")


async def _refused_and_nothing_queued(response, before, db, redis_client, queue_keys):
    assert 400 <= response.status < 500, (response.status, await response.text())
    await _error_of(response)
    assert await _state(db, redis_client, queue_keys) == before


# ---------------------------------------------------------------- POST /sales/


@HYPOTHESIS
@given(case=sale_bodies)
@example(case=(b'{"item_id": 1, "store_id": 1, "idempotency_key": "\\ud800"}', None))
@example(case=(b'{"item_id": 1, "store_id": 1, "item_id": 2}', None))
@example(case=(b'{"item_id": 1, "store_id": 1, "sale_time": "2026-03-01T09:30:00+99:00"}', None))
@example(case=(b'\xef\xbb\xbf{"item_id": 1, "store_id": 1}', None))
@example(case=(b'{"item_id": 1, "store_id": 1, "idempotency_key": "\xff\xfe"}', None))
@example(case=(b'{"item_id": 1e2, "store_id": 1}', None))
@example(case=(b'{"item_id": 1, "store_id": 1}' + b" " * 1000 + b"garbage", None))
async def test_any_sale_body_is_accepted_and_stored_or_refused_with_nothing_queued(
    client, seed, db, drain, redis_client, queue_keys, case
):
    if not await db.fetchval("SELECT count(*) FROM item"):
        await seed(items=ITEMS, stores=STORES)
    body, expected = case
    try:
        posted = json.loads(body)
    except ValueError:
        posted = None
    if expected is not None:  # a near-valid sale: keep its idempotency key from repeating an earlier example
        posted = _unique_keys(posted)
        body = encode(posted, True)
    before = await _state(db, redis_client, queue_keys)
    response = await client.post("/sales/", data=body, headers={"Content-Type": "application/json"})
    event(f"status {response.status}")
    if expected is not None:
        assert response.status == expected, (body, await response.text())
    if response.status == 202:
        assert isinstance(posted, dict), body
        await _check_stored(db, drain, [posted], [await response.json()])
    else:
        await _refused_and_nothing_queued(response, before, db, redis_client, queue_keys)


# ---------------------------------------------------------------- POST /sales/batch/


@st.composite
def batch_bodies(draw):
    """(body bytes, the sales posted if it is a well-formed batch, expected status or None)."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=300)), None, None
    if kind == 1:
        return encode(draw(json_values), True), None, None
    max_flaws = draw(st.sampled_from([0, 0, 1, 3]))  # often a batch of valid sales, or with one flaw
    drawn = draw(st.lists(near_valid_sales(max_flaws), min_size=0, max_size=6))
    sales = [_unique_keys(s) for s, _ in drawn]
    if drawn and draw(st.integers(0, 5)) == 0:  # a non-object among the sales
        sales[draw(st.integers(0, len(sales) - 1))] = draw(json_scalars)
    statuses = [status if isinstance(sale, dict) else 400 for sale, (_, status) in zip(sales, drawn)]
    expected = 400 if not sales else 202 if all(s == 202 for s in statuses) else 422
    wrap = draw(st.sampled_from(["array", "object", "object+extra"]))
    if wrap == "object":
        value = {"sales": sales}
    elif wrap == "object+extra":
        value = {"sales": sales, draw(st.text(max_size=8).filter(lambda k: k != "sales")): draw(json_scalars)}
        expected = 400
    else:
        value = sales
    return encode(value, draw(st.booleans())), sales, expected


@HYPOTHESIS
@given(case=batch_bodies())
@example(case=(b'{"sales": [{"item_id": 1, "store_id": 1}], "sales": []}', None, None))
@example(case=(b'{"sales": null}', None, 400))
@example(case=(b"[null]", None, 422))
@example(case=(b"[[]]", None, 422))
@example(case=(b'{"sales": {"item_id": 1, "store_id": 1}}', None, 400))
async def test_any_batch_body_is_all_accepted_or_refused_with_nothing_queued(
    client, seed, db, drain, redis_client, queue_keys, case
):
    if not await db.fetchval("SELECT count(*) FROM item"):
        await seed(items=ITEMS, stores=STORES)
    body, sales, expected = case
    before = await _state(db, redis_client, queue_keys)
    response = await client.post("/sales/batch/", data=body, headers={"Content-Type": "application/json"})
    event(f"status {response.status}")
    if expected is not None:
        assert response.status == expected, (body, await response.text())
    if response.status == 202:
        if sales is None:
            posted = json.loads(body)
            sales = posted["sales"] if isinstance(posted, dict) else posted
        answers = await response.json()
        assert len(answers) == len(sales)
        await _check_stored(db, drain, sales, answers)
    else:
        await _refused_and_nothing_queued(response, before, db, redis_client, queue_keys)
        if response.status == 422:
            errors = (await response.json())["errors"]
            assert errors and all(isinstance(e["index"], int) and e["error"] for e in errors)


async def test_batch_over_the_limit_is_413_and_queues_nothing(client, seed, db, redis_client, queue_keys):
    await seed(items=ITEMS, stores=STORES)
    before = await _state(db, redis_client, queue_keys)
    response = await client.post("/sales/batch/", json=[{"item_id": 1, "store_id": 1}] * 1001)
    assert response.status == 413
    await _refused_and_nothing_queued(response, before, db, redis_client, queue_keys)


# ---------------------------------------------------------------- report query strings

SQL = ["1 OR 1=1", "1; DROP TABLE sales; --", "1' OR '1'='1", "1)--", "$1", "10 UNION SELECT 1"]
query_values = st.one_of(
    st.integers(-3, 15).map(str),
    st.sampled_from(
        [
            "",
            "10",
            "1000",
            "1001",
            "0",
            "-0",
            "+5",
            " 5",
            "5 ",
            "05",
            "0x10",
            "1e3",
            "3.0",
            "٣",
            "\N{FULLWIDTH DIGIT FIVE}",
            "9" * 40,
            str(2**63),
            str(2**64),
            "-" + "9" * 30,
            "json",
            "csv",
            "CSV",
            "xml",
            "9999",
            "10000",
            "1",
            "2000",
            "2026",
            *SQL,
        ]
    ),
    st.text(max_size=20),
)
query_names = st.sampled_from(["cnt", "mm", "year", "gg", "format", "CNT", "", "cnt[]", "mm;", "x"])
PATHS = {
    "/items/top/": ("TopItem", {"id", "name", "sales_amount"}),
    "/stores/top/": ("TopStore", {"id", "address", "income"}),
    "/reports/daily/": ("Day", {"day", "income", "units", "sales"}),
    "/reports/summary/": (
        "MonthSummary",
        {
            "month",
            "income",
            "units",
            "sales",
            "previous_month",
            "previous_income",
            "previous_units",
            "previous_sales",
            "income_change_pct",
            "units_change_pct",
        },
    ),
}


def _check_shape(path: str, body) -> None:
    _, fields = PATHS[path]
    rows = [body] if path == "/reports/summary/" else body
    assert isinstance(rows, list)
    for row in rows:
        assert isinstance(row, dict) and set(row) == fields, row
        for name, value in row.items():
            if name in ("name", "address", "day", "month", "previous_month"):
                assert isinstance(value, str)
            elif name.endswith("_pct"):
                assert value is None or isinstance(value, (int, float))
            else:
                assert isinstance(value, int) and not isinstance(value, bool)


@HYPOTHESIS
@given(path=st.sampled_from(sorted(PATHS)), params=st.lists(st.tuples(query_names, query_values), max_size=5))
@example(path="/reports/summary/", params=[("mm", "1"), ("year", "1")])
@example(path="/reports/daily/", params=[("mm", "12"), ("year", "9999")])
@example(path="/reports/summary/", params=[("mm", "12"), ("gg", "9999")])
@example(path="/stores/top/", params=[("mm", "1"), ("year", "1"), ("cnt", "1000")])
@example(path="/items/top/", params=[("cnt", "5"), ("cnt", "5")])
async def test_report_query_strings_answer_200_or_400(client, seed, path, params):
    if not hasattr(client, "_seeded"):
        await seed(items=ITEMS, stores=STORES, sales=200)
        client._seeded = True
    response = await client.get(path, params=params)
    event(f"status {response.status}")
    assert response.status in (200, 400), (params, response.status, await response.text())
    if response.status == 400:
        await _error_of(response)
        return
    formats = [v for k, v in params if k == "format"]
    if formats == ["csv"]:
        assert response.headers["Content-Type"].startswith("text/csv")
        text = await response.text()
        assert text.splitlines()[0].split(",")[0] in PATHS[path][1]
    else:
        assert response.headers["Content-Type"].startswith("application/json")
        _check_shape(path, await response.json())


@pytest.mark.parametrize(
    "query",
    [
        "cnt=%ff",
        "cnt=%",
        "cnt=%zz",
        "cnt=%00",
        "cnt=1%00",
        "mm=%C0%AF",
        "cnt=1&&&",
        "&=&=",
        "=5",
        "cnt==5",
        "mm=1;year=2026",
        "cnt=" + "%41" * 2000,
        "a" * 8000,
        "cnt=10#frag",
        "cnt=%E2%80%AE10",
    ],
)
async def test_raw_query_strings_never_5xx(client, seed, query):
    """Sent byte for byte (no client-side encoding) over a raw socket."""
    await seed(items=ITEMS, stores=STORES)
    for path in sorted(PATHS):
        status, head, body = await _raw_request(
            client, f"GET {path}?{query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        assert status in (200, 400), (path, status, body[:300])
        if status == 400 and b"application/json" in head:
            assert "error" in json.loads(body)
    assert (await client.get("/health")).status == 200


async def _raw_request(client, data: bytes, timeout: float = 10) -> tuple[int, bytes, bytes]:
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(data)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        length = [
            int(line.split(b":", 1)[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")
        ]
        if length:  # the server may linger on the connection to drain an unread body
            body = await asyncio.wait_for(reader.readexactly(length[0]), timeout)
        else:
            body = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    return int(head.split(b" ", 2)[1]), head, body


# ---------------------------------------------------------------- headers


@HYPOTHESIS
@given(
    key=st.one_of(
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=100),
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=60, max_size=70),
        st.integers(100, 9000).map(lambda n: "k" * n),
    )
)
async def test_any_idempotency_key_header_is_202_or_4xx(client, seed, db, drain, redis_client, queue_keys, key):
    if not await db.fetchval("SELECT count(*) FROM item"):
        await seed(items=ITEMS, stores=STORES)
    key = key.strip(" \t")  # the HTTP parser strips surrounding whitespace
    unique = (uuid.uuid4().hex[:8] + key) if key else key
    before = await _state(db, redis_client, queue_keys)
    response = await client.post("/sales/", json={"item_id": 1, "store_id": 2}, headers={"Idempotency-Key": unique})
    event(f"status {response.status}")
    if response.status == 202:
        assert 1 <= len(unique) <= 64
        await _check_stored(
            db, drain, [{"item_id": 1, "store_id": 2, "idempotency_key": unique}], [await response.json()]
        )
    else:
        assert response.status == 400, await response.text()
        if len(unique) + len("Idempotency-Key: ") <= 8190:  # longer: refused by the HTTP parser itself
            await _error_of(response)
        assert await _state(db, redis_client, queue_keys) == before
        assert not 1 <= len(unique) <= 64 or unique.strip() != unique


@pytest.mark.parametrize(
    "raw_key",
    [
        b"\xff\xfe",
        b"caf\xc3",
        b"\xc3\xa9t\xc3\xa9",
        b"\xed\xa0\x80",
        b"a\x01b",
        b"a\x7fb",
        b"\x80" * 64,
        b"k" * 65,
    ],
)
async def test_raw_idempotency_key_bytes_never_5xx(client, seed, db, redis_client, queue_keys, raw_key):
    """Header bytes that are not UTF-8 (or are control characters), sent over a raw socket."""
    await seed(items=ITEMS, stores=STORES)
    before = await _state(db, redis_client, queue_keys)
    body = b'{"item_id": 1, "store_id": 1}'
    status, head, answer = await _raw_request(
        client,
        (
            b"POST /sales/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Idempotency-Key: " + raw_key + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        ),
    )
    assert status in (202, 400), (status, answer[:300])
    if status == 400:
        assert await _state(db, redis_client, queue_keys) == before
        if b"application/json" in head:
            assert "error" in json.loads(answer)
    assert (await client.get("/health")).status == 200


# ---------------------------------------------------------------- size and broken connections


@pytest.mark.parametrize("path", ["/sales/", "/sales/batch/"])
async def test_body_over_one_mib_is_413_with_json_error(client, seed, db, redis_client, queue_keys, path):
    await seed(items=ITEMS, stores=STORES)
    before = await _state(db, redis_client, queue_keys)
    big = b'[{"item_id": 1, "store_id": 1}' + b', {"item_id": 1, "store_id": 1}' * 40_000 + b"]"
    assert len(big) > 1024 * 1024
    response = await client.post(path, data=big, headers={"Content-Type": "application/json"})
    assert response.status == 413
    await _refused_and_nothing_queued(response, before, db, redis_client, queue_keys)

    async def chunks():  # no Content-Length: chunked, so the limit is found while reading
        for _ in range(40):
            yield b" " * 32 * 1024

    response = await client.post(path, data=chunks(), headers={"Content-Type": "application/json"})
    assert response.status == 413
    await _refused_and_nothing_queued(response, before, db, redis_client, queue_keys)


async def test_content_length_over_one_mib_is_413_before_the_body_arrives(client, seed):
    await seed(items=ITEMS, stores=STORES)
    status, _, body = await _raw_request(
        client,
        b"POST /sales/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: 2000000000\r\n\r\n{",
    )
    assert status == 413
    assert "error" in json.loads(body)


@pytest.mark.parametrize("path", ["/sales/", "/sales/batch/"])
async def test_connection_dropped_mid_body_leaves_the_server_answering(
    client, seed, db, redis_client, queue_keys, path
):
    await seed(items=ITEMS, stores=STORES)
    before = await _state(db, redis_client, queue_keys)
    half = b'{"item_id": 1, "store_id": 1, "idempotency_key": "' + b"x" * 440
    for _ in range(20):
        _reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000\r\n\r\n".encode()
            + half
        )
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    # and a socket reset (RST) instead of a clean close, mid-headers and mid-body
    import socket
    import struct

    for payload in (
        b"POST /sales/ HTTP/1.1\r\nHost: x\r\nContent-Le",
        b"POST /sales/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + half,
    ):
        sock = socket.create_connection((client.host, client.port))
        sock.sendall(payload)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    await asyncio.sleep(0.2)
    response = await client.post(
        path, json=[{"item_id": 1, "store_id": 1}] if "batch" in path else {"item_id": 1, "store_id": 1}
    )
    assert response.status == 202
    assert (await client.get("/health")).status == 200
    xlen, count = await _state(db, redis_client, queue_keys)
    assert (xlen, count) == (before[0] + 1, before[1])  # only the one complete sale was queued


RAW_AUTHORIZATION = [
    b"Bearer \xff\xfe",
    b"Bearer caf\xc3",
    b"Bearer \xed\xa0\x80",
    b"Basic \xff\xff",
    b"Basic !!!!",
    b"Basic " + base64.b64encode(b"user:\xff\xfe"),
    b"Basic " + base64.b64encode(b"\xff"),
    b"Bearer " + b"k" * 8000,
    b"Bearer a\x01b",
    b"\x80\x80",
    b"Bearer",
    b"Bearer  ",
    b"bearer test-admin-token\xff",
]


@pytest.mark.parametrize("auth_required", [False, True], ids=["open", "auth-required"])
async def test_odd_authorization_headers_never_5xx(aiohttp_client, settings, seed, redis_client, auth_required):
    import dataclasses

    from api.app import create_app

    await seed(items=ITEMS, stores=STORES)
    app_client = await aiohttp_client(create_app(dataclasses.replace(settings, auth_required=auth_required)))
    for raw_value, request_line in itertools.product(
        RAW_AUTHORIZATION, (b"GET /clear/ HTTP/1.1", b"GET /items/ HTTP/1.1", b"POST /sales/ HTTP/1.1")
    ):
        body = b'{"item_id": 1, "store_id": 1}' if request_line.startswith(b"POST") else b""
        status, head, answer = await _raw_request(
            app_client,
            (
                request_line
                + b"\r\nHost: x\r\nConnection: close\r\nAuthorization: "
                + raw_value
                + b"\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            ),
        )
        assert status < 500, (raw_value, request_line, status, answer[:300])
        if b"/clear/" in request_line or auth_required:
            assert status in (400, 401, 403), (raw_value, request_line, status, answer[:300])
        if b"application/json" in head:
            assert "error" in json.loads(answer) or status < 300
