"""Access control with AUTH_REQUIRED=true: every role against every route, revocation,
store scope, throttling, and secrets never kept in clear."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import subprocess
import sys
import time

import pytest

from api.app import create_app
from api.routes import ROUTES
from shared import keys
from tests.conftest import ADMIN_TOKEN
from tests.queue_state import queued_sales

ALLOWED = "allowed"  # anything but 401/403: the request reached its handler

# Expected answer per route and caller. A route missing here fails test_matrix_covers_every_route.
ROLES = ("none", "forged", "revoked", "pos", "owner", "admin", "admin_token")
READ = {
    "none": 401,
    "forged": 401,
    "revoked": 401,
    "pos": 403,
    "owner": ALLOWED,
    "admin": ALLOWED,
    "admin_token": ALLOWED,
}
POST = {**READ, "pos": ALLOWED, "owner": 403}
ADMIN = {**READ, "owner": 403}
TILLS = {**READ, "pos": ALLOWED}
OPEN = dict.fromkeys(ROLES, ALLOWED)
MATRIX = {
    ("GET", "/"): READ,
    ("GET", "/items/"): READ,
    ("GET", "/stores/"): READ,
    ("GET", "/items/top/"): READ,
    ("GET", "/stores/top/"): READ,
    ("GET", "/stores/{id}/report/"): READ,
    ("GET", "/reports/summary/"): READ,
    ("GET", "/reports/daily/"): READ,
    ("GET", "/reports/trend/"): READ,
    ("GET", "/reports/totals/"): READ,
    ("GET", "/reports/hours/"): READ,
    ("GET", "/tills/"): READ,
    ("POST", "/sales/"): POST,
    ("POST", "/sales/batch/"): POST,
    ("GET", "/tills/me"): {**POST, "admin": 403, "admin_token": 403},  # a till's own: only a pos key
    ("POST", "/sales/{id}/returns/"): POST,
    ("POST", "/returns/batch/"): POST,
    ("GET", "/clear/"): ADMIN,
    ("POST", "/clear/"): ADMIN,
    ("GET", "/create/"): ADMIN,
    ("POST", "/create/"): ADMIN,
    ("GET", "/catalogue/"): TILLS,
    ("POST", "/catalogue/items/"): ADMIN,
    ("PATCH", "/catalogue/items/{id}"): ADMIN,
    ("DELETE", "/catalogue/items/{id}"): ADMIN,
    ("GET", "/catalogue/items.csv"): READ,
    ("POST", "/catalogue/items.csv"): ADMIN,
    ("POST", "/catalogue/stores/"): ADMIN,
    ("PATCH", "/catalogue/stores/{id}"): ADMIN,
    ("DELETE", "/catalogue/stores/{id}"): ADMIN,
    ("GET", "/catalogue/stores.csv"): READ,
    ("POST", "/catalogue/stores.csv"): ADMIN,
    ("GET", "/admin/keys/"): ADMIN,
    ("POST", "/admin/keys/"): ADMIN,
    ("DELETE", "/admin/keys/{prefix}"): ADMIN,
    ("GET", "/health"): OPEN,
    ("GET", "/metrics"): READ,
    ("GET", "/openapi.json"): READ,
}
DESTRUCTIVE = {"/clear/", "/create/"}
NO_SALE = 10**15  # returns of a sale that does not exist: past the access check, a 404 (or 409)
BODIES = {
    "/sales/": {"item_id": 1, "store_id": 1},
    "/sales/batch/": [{"item_id": 1, "store_id": 1}],
    "/sales/{id}/returns/": {"quantity": 1},
    "/returns/batch/": [{"sale_id": NO_SALE, "quantity": 1}],
    "/admin/keys/": {"kind": "owner", "label": "from the matrix test"},
    "/create/": {"sales": 10},
    "/catalogue/items/": {"name": "from the matrix test", "price": 100},
    "/catalogue/items/{id}": {"name": "renamed by the matrix test"},
    "/catalogue/stores/": {"address": "from the matrix test"},
    "/catalogue/stores/{id}": {"address": "renamed by the matrix test"},
}


@pytest.fixture
async def keyring(db, seed):
    await seed(items=3, stores=3, sales=30)
    issued = {
        kind: await keys.issue(db, kind, 1 if kind == "pos" else None, f"test {kind}")
        for kind in ("pos", "owner", "admin")
    }
    revoked = await keys.issue(db, "owner", None, "revoked")
    await keys.revoke(db, revoked.prefix)
    forged = issued["owner"].key[:-4] + "AAAA"
    return {
        "none": None,
        "forged": forged,
        "revoked": revoked.key,
        "pos": issued["pos"].key,
        "owner": issued["owner"].key,
        "admin": issued["admin"].key,
        "admin_token": ADMIN_TOKEN,
    }


@pytest.fixture
async def auth_settings(settings):
    return dataclasses.replace(settings, auth_required=True)


@pytest.fixture
async def auth_client(aiohttp_client, auth_settings, keyring):
    return await aiohttp_client(create_app(auth_settings))


def _bearer(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def test_matrix_covers_every_route():
    routes = {(r.method, r.path) for r in ROUTES}
    assert routes == set(MATRIX), "give every route an expected answer per role"


@pytest.mark.parametrize("role", ROLES)
async def test_access_matrix(auth_client, keyring, role):
    for (method, path), expected in MATRIX.items():
        if path in DESTRUCTIVE and expected[role] == ALLOWED:
            continue  # run by test_admin_may_recreate_data, not in a loop that needs the data
        url = path.replace("{prefix}", "sk_owner_nosuchkey").replace(
            "{id}", str(NO_SALE) if path.startswith("/sales/") else "1"
        )
        body = BODIES.get(path)
        response = await auth_client.request(method, url, json=body, headers=_bearer(keyring[role]))
        if expected == ALLOWED or expected[role] == ALLOWED:
            assert response.status not in (401, 403), (role, method, path, await response.text())
        else:
            assert response.status == expected[role], (role, method, path, await response.text())
            assert list(await response.json()) == ["error"]


async def test_admin_may_recreate_data(auth_client, keyring):
    for key in (keyring["admin"], keyring["admin_token"]):
        response = await auth_client.post("/create/", json={"items": 2, "stores": 2, "sales": 10}, headers=_bearer(key))
        assert response.status == 200
    response = await auth_client.get("/clear/", headers=_bearer(keyring["admin"]))
    assert response.status == 200


async def test_pos_key_posts_for_its_store_only(auth_client, keyring, redis_client, queue_keys):
    pos = _bearer(keyring["pos"])
    ok = await auth_client.post("/sales/", json={"item_id": 1, "store_id": 1}, headers=pos)
    assert ok.status == 202
    other = await auth_client.post("/sales/", json={"item_id": 1, "store_id": 2}, headers=pos)
    assert other.status == 403
    assert "store 2" in (await other.json())["error"]
    batch = await auth_client.post(
        "/sales/batch/",
        headers=pos,
        json=[{"item_id": 1, "store_id": 1}, {"item_id": 2, "store_id": 3}, {"item_id": 3, "store_id": 1}],
    )
    assert batch.status == 403
    assert "store 3" in (await batch.json())["error"]
    assert await queued_sales(redis_client, queue_keys) == 1  # only the first sale was queued


async def test_dashboard_asks_the_browser_for_a_key(auth_client, keyring):
    response = await auth_client.get("/")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic ")
    basic = base64.b64encode(f"owner:{keyring['owner']}".encode()).decode()
    page = await auth_client.get("/", headers={"Authorization": f"Basic {basic}"})
    assert page.status == 200 and page.content_type == "text/html"
    report = await auth_client.get("/items/top/", headers={"Authorization": f"Basic {basic}"})
    assert report.status == 200


async def test_revocation_reaches_another_api_process_within_5_seconds(aiohttp_client, auth_settings, keyring):
    first = await aiohttp_client(create_app(auth_settings))
    second = await aiohttp_client(create_app(auth_settings))
    owner = _bearer(keyring["owner"])
    assert (await second.get("/items/", headers=owner)).status == 200
    prefix = keyring["owner"].split(".")[0]
    revoked = await first.delete(f"/admin/keys/{prefix}", headers=_bearer(keyring["admin"]))
    assert revoked.status == 200 and (await revoked.json())["revoked_at"]
    started = time.monotonic()
    while (await second.get("/items/", headers=owner)).status != 401:
        assert time.monotonic() - started < 5, "the second process still accepts a revoked key"
        await asyncio.sleep(0.05)


async def test_new_key_works_at_once_through_the_admin_endpoint(auth_client, keyring):
    issued = await auth_client.post(
        "/admin/keys/", json={"kind": "pos", "store_id": 2, "label": "till 9"}, headers=_bearer(keyring["admin"])
    )
    assert issued.status == 201
    body = await issued.json()
    assert body["kind"] == "pos" and body["store_id"] == 2 and body["key"].startswith(body["prefix"] + ".")
    started = time.monotonic()
    while (
        await auth_client.post("/sales/", json={"item_id": 1, "store_id": 2}, headers=_bearer(body["key"]))
    ).status != 202:
        assert time.monotonic() - started < 5
        await asyncio.sleep(0.05)
    listed = await (await auth_client.get("/admin/keys/", headers=_bearer(keyring["admin"]))).json()
    assert body["prefix"] in {k["prefix"] for k in listed}
    assert all("key" not in k and "secret_hash" not in k for k in listed)


@pytest.mark.parametrize("body", [{"kind": "root"}, {"kind": "pos"}, {"kind": "owner", "store_id": 1}, {"x": 1}])
async def test_bad_key_requests_are_400(auth_client, keyring, body):
    response = await auth_client.post("/admin/keys/", json=body, headers=_bearer(keyring["admin"]))
    assert response.status == 400


async def test_repeated_bad_keys_are_slowed_down_and_counted(auth_client, keyring):
    forged = _bearer(keyring["forged"])
    started = time.monotonic()
    statuses = [(await auth_client.get("/items/", headers=forged)).status for _ in range(60)]
    assert set(statuses) == {401}
    assert time.monotonic() - started > 1.0  # the last ten waited
    metrics = await (await auth_client.get("/metrics", headers=_bearer(keyring["owner"]))).text()
    assert 'auth_failures_total{reason="throttled"}' in metrics
    assert (await auth_client.get("/items/", headers=_bearer(keyring["owner"]))).status == 200


async def test_secrets_never_kept_in_clear(settings, database_url, db, redis_client, seed, aiohttp_client, caplog):
    await seed(items=2, stores=2)
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": settings.redis_url}
    cli = subprocess.run(
        [sys.executable, "-m", "shared.keys", "issue", "--kind", "pos", "--store", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    key = cli.stdout.strip()
    secret = key.split(".", 1)[1]
    assert len(secret) >= 40 and secret not in cli.stderr
    app = create_app(dataclasses.replace(settings, auth_required=True))
    client = await aiohttp_client(app)
    with caplog.at_level("DEBUG"):
        assert (await client.post("/sales/", json={"item_id": 1, "store_id": 2}, headers=_bearer(key))).status == 202
        await client.get("/items/", headers=_bearer(key[:-2] + "xx"))
    table = await db.fetch("SELECT * FROM api_key")
    dump = repr([dict(r) for r in table])
    assert secret not in dump and secret.encode() not in b"".join(bytes(r["secret_hash"]) for r in table)
    assert key.split(".")[0] in dump  # the visible prefix is there, the secret is not
    for redis_key in [k async for k in redis_client.scan_iter(count=1000)]:
        assert secret.encode() not in redis_key
    assert secret not in caplog.text
    listed = subprocess.run(
        [sys.executable, "-m", "shared.keys", "list"], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert key.split(".")[0] in listed.stdout and secret not in listed.stdout
