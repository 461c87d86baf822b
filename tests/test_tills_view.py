"""Every till in view (issue 24): each pos key's last contact and X-Till-Status kept in memory and
written to Redis once a second, GET /tills/ with its flags (JSON and CSV), and the stores'
silence in /metrics. On the real PostgreSQL and Redis, with AUTH_REQUIRED=true; the tills'
clock (api.till_contacts.TillContacts.clock) is set by the tests to control the flags."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest

from api import till_contacts
from api.app import create_app
from api.appkeys import ACCESS_CONTROL
from api.moments import iso_utc, now_us
from api.till_contacts import TILL_CONTACTS, TillContacts
from api.till_status import TillStatus, parse
from shared import keys
from tests.conftest import ADMIN_TOKEN

SECOND = 1_000_000
MINUTE = 60 * SECOND
# A whole second two hours ahead: the tests' "now", after anything done in real time (a store
# retired through the API, keys issued).
T = (now_us() // SECOND + 7200) * SECOND


class Clock:
    def __init__(self, us: int):
        self.us = us

    def __call__(self) -> int:
        return self.us


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _status(pending: int | str, oldest_us: int | None, offset: float | str) -> dict[str, str]:
    oldest = iso_utc(oldest_us) if oldest_us is not None else ""
    return {"X-Till-Status": f"pending={pending}; oldest={oldest}; clock_offset={offset}"}


@pytest.fixture
def no_background_flush(monkeypatch):
    """The apps of the test never flush by themselves: the test calls flush()."""
    monkeypatch.setattr(till_contacts, "FLUSH_SECONDS", 3600.0)


@pytest.fixture
async def owner(db, seed) -> str:
    await seed(items=3, stores=4)
    return (await keys.issue(db, "owner", None, "owners")).key


@pytest.fixture
async def auth_client(aiohttp_client, settings, owner, no_background_flush):
    return await aiohttp_client(create_app(dataclasses.replace(settings, auth_required=True)))


def _contacts(client) -> TillContacts:
    return client.server.app[TILL_CONTACTS]


async def _known(client, key: str) -> None:
    """Waits until the app's key ring has the new key (a NOTIFY away)."""
    ring = client.server.app[ACCESS_CONTROL].keys
    for _ in range(100):
        if ring.authenticate(key) is not None:
            return
        await asyncio.sleep(0.05)
    pytest.fail("the app never learnt the new key")


async def _till(client, db, store_id: int, label: str, issued_us: int | None = None) -> tuple[int, str]:
    """A till: a pos key of the store (issued at `issued_us`, when given) that the app knows; its id and key."""
    issued = await keys.issue(db, "pos", store_id, label)
    await _known(client, issued.key)
    till_id = await db.fetchval("SELECT id FROM api_key WHERE prefix = $1", issued.prefix)
    if issued_us is not None:
        await db.execute(
            "UPDATE api_key SET created_at = to_timestamp($1::float8 / 1e6) WHERE id = $2", issued_us, till_id
        )
    return till_id, issued.key


async def _sale(client, key: str, store_id: int, headers: dict[str, str] | None = None) -> None:
    response = await client.post(
        "/sales/", json={"item_id": 1, "store_id": store_id}, headers={**_bearer(key), **(headers or {})}
    )
    assert response.status == 202, await response.text()


async def _hash(redis_client, client) -> dict[str, dict]:
    raw = await redis_client.hgetall(_contacts(client).key)
    return {k.decode(): json.loads(v) for k, v in raw.items()}


# ---- the header --------------------------------------------------------------------------------


def test_a_well_formed_header_is_read():
    assert parse("pending=12; oldest=2026-11-27T10:29:10+00:00; clock_offset=-3.5", 5) == TillStatus(
        5, 12, 1795775350 * SECOND, -3.5
    )
    assert parse("pending=0; oldest=; clock_offset=0", 5) == TillStatus(5, 0, None, 0.0)
    assert parse("Pending = 3 ;OLDEST=2026-11-27T10:29:10Z", 5) == TillStatus(5, 3, 1795775350 * SECOND, None)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        ";;;===",
        "pending=-1; oldest=yesterday; clock_offset=NaN",
        "pending=1e3; clock_offset=inf",
        "pending=99999999999; clock_offset=1_000",
        "oldest=2026-11-27T10:29:10",  # no offset: not a moment
        "pending=1; " + "x" * 400,  # longer than any till's status
        "clock_offset=999999999999",  # beyond ten years
    ],
)
def test_a_header_that_says_nothing_is_no_status(header):
    assert parse(header, 5) is None


def test_the_header_pos_client_sends_is_read():
    from pos_client.sender import till_status

    sent = till_status(12, "2026-11-27T10:29:10.250000+00:00", -3.5)
    assert parse(sent, 5) == TillStatus(5, 12, 1795775350 * SECOND + 250_000, -3.5)
    assert parse(till_status(0, None, 0.0), 5) == TillStatus(5, 0, None, 0.0)


def test_a_field_that_does_not_parse_is_unknown_beside_the_others():
    assert parse("pending=7; oldest=soon; clock_offset=x", 5) == TillStatus(5, 7, None, None)


# ---- contacts ------------------------------------------------------------------------------------


async def test_contacts_are_recorded_with_and_without_the_header(auth_client, db, redis_client, owner):
    clock = _contacts(auth_client).clock = Clock(T)
    first, first_key = await _till(auth_client, db, 1, "till 1")
    second, second_key = await _till(auth_client, db, 2, "till 2")
    await _sale(auth_client, first_key, 1, _status(3, T - MINUTE, 1.5))
    clock.us = T + SECOND
    assert (await auth_client.get("/catalogue/", headers=_bearer(second_key))).status == 200
    assert (await auth_client.get("/items/", headers=_bearer(owner))).status == 200  # an owner is no till
    assert (await auth_client.get("/items/", headers=_bearer("sk_pos_nosuchkey.secret"))).status == 401

    assert await _contacts(auth_client).flush() == 3
    assert await _hash(redis_client, auth_client) == {
        str(first): {"last_contact_us": T, "store_id": 1},
        f"{first}:status": {"reported_us": T, "pending": 3, "oldest_pending_us": T - MINUTE, "clock_offset": 1.5},
        str(second): {"last_contact_us": T + SECOND, "store_id": 2},
    }

    # a request without the header moves the contact; what the till said last stays
    clock.us = T + 5 * SECOND
    assert (await auth_client.get("/catalogue/", headers=_bearer(first_key))).status == 200
    assert await _contacts(auth_client).flush() == 1
    stored = await _hash(redis_client, auth_client)
    assert stored[str(first)] == {"last_contact_us": T + 5 * SECOND, "store_id": 1}
    assert stored[f"{first}:status"]["reported_us"] == T

    # a request the key may not make is a contact too: the till is there
    clock.us = T + 6 * SECOND
    assert (await auth_client.get("/items/", headers=_bearer(second_key))).status == 403
    assert await _contacts(auth_client).flush() == 1
    assert (await _hash(redis_client, auth_client))[str(second)]["last_contact_us"] == T + 6 * SECOND


async def test_returns_are_contacts_too(auth_client, db, redis_client):
    _contacts(auth_client).clock = Clock(T)
    till, key = await _till(auth_client, db, 1, "till 1")
    # a return of a sale that does not exist: refused by its handler, after the access check
    response = await auth_client.post(
        "/sales/999999999/returns/", json={"quantity": 1}, headers={**_bearer(key), **_status(2, None, 0)}
    )
    assert response.status in (404, 409), await response.text()
    await _contacts(auth_client).flush()
    assert (await _hash(redis_client, auth_client))[f"{till}:status"]["pending"] == 2


async def test_a_malformed_header_is_ignored(auth_client, db, redis_client):
    clock = _contacts(auth_client).clock = Clock(T)
    till, key = await _till(auth_client, db, 1, "till 1")
    for header in ("garbage", "pending=-1; oldest=yesterday; clock_offset=NaN", "x" * 8000, "pending=\u0663"):
        await _sale(auth_client, key, 1, {"X-Till-Status": header})
    await _contacts(auth_client).flush()
    assert await _hash(redis_client, auth_client) == {str(till): {"last_contact_us": T, "store_id": 1}}

    # once the till has said something usable, a malformed header leaves it as it was
    await _sale(auth_client, key, 1, _status(4, T - MINUTE, 2))
    await _contacts(auth_client).flush()
    clock.us = T + SECOND
    await _sale(auth_client, key, 1, {"X-Till-Status": "pending=lots"})
    await _contacts(auth_client).flush()
    stored = await _hash(redis_client, auth_client)
    assert stored[str(till)]["last_contact_us"] == T + SECOND
    assert stored[f"{till}:status"] == {
        "reported_us": T,
        "pending": 4,
        "oldest_pending_us": T - MINUTE,
        "clock_offset": 2.0,
    }


async def test_nothing_per_request_reaches_redis(auth_client, db, redis_client):
    """Requests update this process's memory; one HSET a second writes the latest of each till."""
    till, key = await _till(auth_client, db, 1, "till 1")
    for n in range(100):
        await _sale(auth_client, key, 1, _status(n, None, 0))
        assert (await auth_client.get("/catalogue/", headers=_bearer(key))).status == 200
    assert await redis_client.exists(_contacts(auth_client).key) == 0
    assert await _contacts(auth_client).flush() == 2  # the till's contact and its last status
    stored = await _hash(redis_client, auth_client)
    assert set(stored) == {str(till), f"{till}:status"} and stored[f"{till}:status"]["pending"] == 99
    assert await _contacts(auth_client).flush() == 0  # nothing heard since: no write


async def test_the_contacts_reach_redis_within_seconds_by_themselves(aiohttp_client, settings, owner, db, redis_client):
    client = await aiohttp_client(create_app(dataclasses.replace(settings, auth_required=True)))
    till, key = await _till(client, db, 1, "till 1")
    await _sale(client, key, 1, _status(1, None, 0))
    for _ in range(60):
        if await redis_client.hexists(_contacts(client).key, str(till)):
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the till's contact never reached Redis")


# ---- GET /tills/ ---------------------------------------------------------------------------------


def _row(till_id, store_id, label, last_contact, silent_seconds, status=None, **flags) -> dict:
    """A till as GET /tills/ answers it; `status` = (pending, oldest_us, clock_offset, reported_us)."""
    pending, oldest, offset, reported = status or (None, None, None, None)
    return {
        "till_id": till_id,
        "store_id": store_id,
        "label": label,
        "last_contact": iso_utc(last_contact) if last_contact is not None else None,
        "silent_seconds": silent_seconds,
        "pending": pending,
        "oldest_pending": iso_utc(oldest) if oldest is not None else None,
        "clock_offset": offset,
        "status_at": iso_utc(reported) if reported is not None else None,
        "store_open": flags.get("store_open", True),
        "silent": flags.get("silent", False),
        "behind": flags.get("behind", False),
        "clock_off": flags.get("clock_off", False),
    }


async def _scene(client, db) -> dict[str, int]:
    """Tills of stores 1-4 heard at set times before T (store 4 retired since); their ids."""
    clock = _contacts(client).clock = Clock(T)
    ids: dict[str, int] = {}

    async def heard(label: str, store_id: int, at_us: int, headers: dict[str, str] | None) -> None:
        ids[label], key = await _till(client, db, store_id, label)
        clock.us = at_us
        if headers is None:
            assert (await client.get("/catalogue/", headers=_bearer(key))).status == 200
        else:
            await _sale(client, key, store_id, headers)

    await heard("A", 1, T - 20 * MINUTE, _status(0, None, 0.5))  # silent: 20 minutes
    await heard("B", 1, T - 10 * SECOND, _status(1200, T - 40 * SECOND, 0.2))  # behind: more than a batch
    await heard("C", 2, T - 5 * SECOND, _status(4, T - 5 * SECOND - 6 * MINUTE, -45.5))  # behind and clock off
    await heard("D", 2, T - SECOND, _status(0, None, 31))  # clock off
    await heard("H", 1, T - 2 * SECOND, _status(0, None, 0))  # fine
    await heard("F", 4, T - 2 * 60 * MINUTE, None)  # long silent, but its store is closed
    ids["E"], _ = await _till(client, db, 3, "E", issued_us=T - 60 * MINUTE)  # never heard from since issued
    revoked = await keys.issue(db, "pos", 3, "G")
    await keys.revoke(db, revoked.prefix)
    retired = await client.delete("/catalogue/stores/4", headers=_bearer(ADMIN_TOKEN))
    assert retired.status == 200, await retired.text()
    await _contacts(client).flush()
    clock.us = T
    return ids


async def test_tills_answer_with_their_flags_problems_first(auth_client, db, owner):
    ids = await _scene(auth_client, db)
    response = await auth_client.get("/tills/", headers=_bearer(owner))
    assert response.status == 200, await response.text()
    assert await response.json() == {
        "tills_known": True,
        "note": None,
        "now": iso_utc(T),
        "thresholds": {"silent_minutes": 15, "behind_minutes": 5, "behind_pending": 1000, "clock_off_seconds": 30},
        "tills": [
            _row(ids["A"], 1, "A", T - 20 * MINUTE, 1200, (0, None, 0.5, T - 20 * MINUTE), silent=True),
            _row(ids["E"], 3, "E", None, 3600, silent=True),
            _row(ids["B"], 1, "B", T - 10 * SECOND, 10, (1200, T - 40 * SECOND, 0.2, T - 10 * SECOND), behind=True),
            _row(
                ids["C"],
                2,
                "C",
                T - 5 * SECOND,
                5,
                (4, T - 5 * SECOND - 6 * MINUTE, -45.5, T - 5 * SECOND),
                behind=True,
                clock_off=True,
            ),
            _row(ids["D"], 2, "D", T - SECOND, 1, (0, None, 31.0, T - SECOND), clock_off=True),
            _row(ids["H"], 1, "H", T - 2 * SECOND, 2, (0, None, 0.0, T - 2 * SECOND)),
            _row(ids["F"], 4, "F", T - 120 * MINUTE, 7200, store_open=False),
        ],
    }

    # a longer patience, and one store's tills
    relaxed = await (await auth_client.get("/tills/?silent_minutes=30", headers=_bearer(owner))).json()
    assert relaxed["thresholds"]["silent_minutes"] == 30
    assert [(t["label"], t["silent"]) for t in relaxed["tills"]][:3] == [("E", True), ("B", False), ("C", False)]
    assert "A" in [t["label"] for t in relaxed["tills"] if not (t["silent"] or t["behind"] or t["clock_off"])]
    one_store = await (await auth_client.get("/tills/?store_id=2", headers=_bearer(owner))).json()
    assert [t["label"] for t in one_store["tills"]] == ["C", "D"]


async def test_tills_as_csv(auth_client, db, owner):
    ids = await _scene(auth_client, db)
    for url, headers in (("/tills/?format=csv", {}), ("/tills/", {"Accept": "text/csv"})):
        response = await auth_client.get(url, headers={**_bearer(owner), **headers})
        assert response.status == 200 and response.content_type == "text/csv"
        assert response.headers["Content-Disposition"] == 'inline; filename="tills.csv"'
        lines = (await response.text()).split("\r\n")
        assert lines[0] == (
            "till_id,store_id,label,last_contact,silent_seconds,pending,oldest_pending,clock_offset,"
            "status_at,store_open,silent,behind,clock_off"
        )
        assert (
            lines[1]
            == f"{ids['A']},1,A,{iso_utc(T - 20 * MINUTE)},1200,0,,0.5,{iso_utc(T - 20 * MINUTE)},True,True,False,False"
        )
        assert lines[2] == f"{ids['E']},3,E,,3600,,,,,True,True,False,False"
        assert len(lines) == 9 and lines[-1] == ""
    response = await auth_client.get("/tills/?store_id=4&format=csv", headers=_bearer(owner))
    assert response.headers["Content-Disposition"] == 'inline; filename="tills-store-4.csv"'


@pytest.mark.parametrize("query", ["silent_minutes=0", "silent_minutes=abc", "store_id=-1", "format=xml"])
async def test_bad_parameters_are_400(auth_client, owner, query):
    response = await auth_client.get(f"/tills/?{query}", headers=_bearer(owner))
    assert response.status == 400
    assert list(await response.json()) == ["error"]


async def test_owners_and_admins_may_read_tills_may_not(auth_client, db, owner):
    _, pos_key = await _till(auth_client, db, 1, "till 1")
    admin = (await keys.issue(db, "admin", None, "admin")).key
    await _known(auth_client, admin)
    assert (await auth_client.get("/tills/", headers=_bearer(owner))).status == 200
    assert (await auth_client.get("/tills", headers=_bearer(admin))).status == 200
    assert (await auth_client.get("/tills/", headers=_bearer(ADMIN_TOKEN))).status == 200
    assert (await auth_client.get("/tills/", headers=_bearer(pos_key))).status == 403
    assert (await auth_client.get("/tills/")).status == 401


async def test_open_mode_knows_no_tills(client, seed, redis_client):
    await seed(items=2, stores=2)
    response = await client.post(
        "/sales/", json={"item_id": 1, "store_id": 1}, headers={"X-Till-Status": "pending=1; oldest=; clock_offset=0"}
    )
    assert response.status == 202
    assert await _contacts(client).flush() == 0
    answer = await (await client.get("/tills/")).json()
    assert answer["tills_known"] is False and answer["tills"] == []
    assert "AUTH_REQUIRED=true" in answer["note"]
    assert (await (await client.get("/tills/?format=csv")).text()).startswith("till_id,store_id,label,")
    assert "sales_store_silent_seconds{" not in await (await client.get("/metrics")).text()


# ---- /metrics ------------------------------------------------------------------------------------


async def test_store_silence_is_exported_for_open_stores_with_tills(auth_client, db, owner):
    await _scene(auth_client, db)
    text = await (await auth_client.get("/metrics", headers=_bearer(owner))).text()
    samples = {line for line in text.splitlines() if line.startswith("sales_store_silent_seconds{")}
    # store 1: H heard 2 s ago; store 2: D 1 s ago; store 3: E never, issued an hour ago;
    # store 4 is retired (closed): not exported
    assert samples == {
        'sales_store_silent_seconds{store_id="1"} 2.0',
        'sales_store_silent_seconds{store_id="2"} 1.0',
        'sales_store_silent_seconds{store_id="3"} 3600.0',
    }
    assert "# TYPE sales_store_silent_seconds gauge" in text

    # later, with nothing heard meanwhile, every store has been silent longer
    _contacts(auth_client).clock.us = T + 10 * MINUTE  # type: ignore[attr-defined]
    text = await (await auth_client.get("/metrics", headers=_bearer(owner))).text()
    assert 'sales_store_silent_seconds{store_id="2"} 601.0' in text
