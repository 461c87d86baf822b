"""The client through a real Caddy (deploy/caddy/Caddyfile, its internal CA for localhost) in
front of the real API (in this process, keys required) on the real PostgreSQL and Redis: real
TLS handshakes. Trusted with the CA's root as its bundle, a sale goes through and is stored;
without it the handshake fails and nothing is sent; plain HTTP is redirected, HTTPS carries
HSTS; a key is never given to a plain http:// URL unless allowed. Skipped without `caddy`."""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import urllib.parse

import pytest

from api.app import create_app
from pos_client import SalesClient
from pos_client.reconcile import Reports
from pos_client.transport import CertificateError, HttpTransport
from shared import keys
from tests.pos_client.test_sending import stored_rows
from tests.tls_proxy import CaddyProxy


@pytest.fixture(scope="module")
def caddy_data(tmp_path_factory):
    """One internal CA for the module's proxies: made once, not at each start."""
    return tmp_path_factory.mktemp("caddy-data")


@pytest.fixture
async def pos_key(seed, db):
    await seed(items=5, stores=4)
    return await keys.issue(db, "pos", 2, "till behind TLS")


@pytest.fixture
async def proxy(aiohttp_client, settings, pos_key, caddy_data, tmp_path):
    api = await aiohttp_client(create_app(dataclasses.replace(settings, auth_required=True)))
    upstream = urllib.parse.urlsplit(str(api.make_url("/")))
    caddy = CaddyProxy(f"{upstream.hostname}:{upstream.port}", tmp_path, data_dir=caddy_data)
    await asyncio.to_thread(caddy.start)
    yield caddy
    await asyncio.to_thread(caddy.stop)


async def stored(db, recorded, spool) -> list:
    return await stored_rows(db, [s.idempotency_key for s in recorded], str(spool))


async def test_with_the_proxy_root_as_ca_bundle_a_sale_goes_through_and_is_stored(proxy, pos_key, db, drain, tmp_path):
    till = SalesClient(proxy.https_url, pos_key.key, store_id=2, spool=str(tmp_path / "s.db"), ca_bundle=proxy.root_ca)
    recorded = till.record_many([(1, 2), (3, 1)])
    assert await asyncio.to_thread(till.flush, 20), till.status()
    status = till.status()
    assert (status.sent, status.pending, status.online) == (2, 0, True)
    await asyncio.to_thread(till.close)
    await drain()
    rows = await stored(db, recorded, tmp_path / "s.db")
    assert [(r["store_id"], r["item_id"], r["quantity"]) for r in rows] == [(2, 1, 2), (2, 3, 1)]

    reports = Reports(proxy.https_url, ca_bundle=str(proxy.root_ca))
    try:
        answer = await asyncio.to_thread(reports.http.request, "GET", "/health")
    finally:
        reports.close()
    assert answer.status == 200
    assert answer.headers["strict-transport-security"].startswith("max-age=")
    assert int(answer.headers["strict-transport-security"].split("=")[1].split(";")[0]) >= 31536000


async def test_without_the_ca_bundle_the_handshake_fails_and_nothing_is_sent(proxy, pos_key, db, drain, tmp_path):
    spool = str(tmp_path / "s.db")
    till = SalesClient(proxy.https_url, pos_key.key, store_id=2, spool=spool, flush_interval=0.05, backoff_base=0.1)
    recorded = till.record(item_id=1)
    assert not await asyncio.to_thread(till.flush, 2)
    status = till.status()
    assert status.pending == 1 and status.sent == 0 and status.online is False and status.stopped is None
    assert "certificate verify failed" in status.last_error and "give ca_bundle=" in status.last_error
    assert f"localhost:{proxy.https_port}" in status.last_error
    await asyncio.to_thread(till.close)
    assert await drain() == 0 and await stored(db, [recorded], spool) == []

    transport = HttpTransport(proxy.https_url)
    with pytest.raises(CertificateError, match="certificate verify failed"):
        await asyncio.to_thread(transport.request, "GET", "/health")
    transport.close()

    # the operator gives the till its CA bundle: the sale waiting in the spool goes
    till = SalesClient(proxy.https_url, pos_key.key, store_id=2, spool=spool, ca_bundle=proxy.root_ca)
    assert await asyncio.to_thread(till.flush, 20), till.status()
    await asyncio.to_thread(till.close)
    await drain()
    assert len(await stored(db, [recorded], spool)) == 1


async def test_plain_http_to_the_proxy_is_redirected_to_https(proxy, db, drain, tmp_path):
    def ask(method: str, path: str) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection("localhost", proxy.http_port, timeout=10)
        try:
            conn.request(method, path, body=b"[]" if method == "POST" else None)
            response = conn.getresponse()
            response.read()
            return response
        finally:
            conn.close()

    for method, path in (("GET", "/health"), ("POST", "/sales/batch/")):
        response = await asyncio.to_thread(ask, method, path)
        assert response.status == 308, (method, path)  # 308: a POST stays a POST
        # to the standard port: Caddy cannot know how its HTTPS port is published, and compose publishes 443
        assert response.getheader("Location") == f"https://localhost{path}"

    # a till given the http:// URL (no key: that is refused outright) is told why nothing goes
    till = SalesClient(proxy.http_url, store_id=2, spool=str(tmp_path / "s.db"), flush_interval=0.05)
    recorded = till.record(item_id=1)
    assert not await asyncio.to_thread(till.flush, 2)
    assert "308: the server redirects to https://localhost" in till.status().last_error
    await asyncio.to_thread(till.close)
    assert await drain() == 0 and await stored(db, [recorded], tmp_path / "s.db") == []


def test_a_key_over_plain_http_is_refused_unless_allowed(tmp_path):
    with pytest.raises(ValueError, match=r"refusing to send a key over plain HTTP .*allow_plain_http=True"):
        SalesClient("http://sales.example", "sk_pos_x.y", store_id=1, spool=str(tmp_path / "a.db"))
    assert not (tmp_path / "a.db").exists()  # refused before anything was opened
    with pytest.raises(ValueError, match="refusing to send a key over plain HTTP"):
        Reports("http://sales.example", "sk_owner_x.y")
    plain = HttpTransport("http://127.0.0.1:9")
    with pytest.raises(ValueError, match="refusing to send a key over plain HTTP"):
        plain.request("GET", "/stores/", headers={"authorization": "Bearer sk_owner_x.y"})

    # without a key, or over https, or when told explicitly: allowed
    keyless = SalesClient("http://127.0.0.1:9", store_id=1, spool=str(tmp_path / "b.db"), flush_interval=3600)
    with pytest.raises(ValueError, match="refusing to send a key over plain HTTP"):
        keyless.resume(key="sk_pos_x.y")  # nor later
    keyless.close()
    SalesClient("https://127.0.0.1:9", "sk_pos_x.y", store_id=1, spool=str(tmp_path / "c.db")).close()
    SalesClient(
        "http://127.0.0.1:9", "sk_pos_x.y", store_id=1, spool=str(tmp_path / "d.db"), allow_plain_http=True
    ).close()
    Reports("http://127.0.0.1:9", "sk_owner_x.y", allow_plain_http=True).close()


def test_an_unreadable_ca_bundle_is_refused_at_once(tmp_path):
    not_pem = tmp_path / "root.crt"
    not_pem.write_text("not a certificate\n")
    for bundle in (tmp_path / "missing.crt", not_pem):
        with pytest.raises(ValueError, match=r"ca_bundle .* cannot be loaded as PEM certificates"):
            SalesClient("https://127.0.0.1:9", store_id=1, spool=str(tmp_path / "s.db"), ca_bundle=bundle)
