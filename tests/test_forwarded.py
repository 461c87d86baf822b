"""Behind a reverse proxy: the client named by X-Forwarded-For, believed from trusted proxies only."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from api.app import create_app
from api.appkeys import ACCESS_CONTROL
from api.forwarded import client_address
from shared.settings import Settings

PROXY = (ipaddress.ip_network("10.0.0.2/32"), ipaddress.ip_network("fd00::/8"))


@pytest.mark.parametrize(
    ("peer", "headers", "client"),
    [
        ("203.0.113.9", ["198.51.100.1"], "203.0.113.9"),  # not from the proxy: its own client
        ("10.0.0.2", ["198.51.100.1"], "198.51.100.1"),
        ("10.0.0.2", ["6.6.6.6, 198.51.100.1"], "198.51.100.1"),  # the left part came from the client
        ("10.0.0.2", ["6.6.6.6", "198.51.100.1, fd00::7"], "198.51.100.1"),  # proxies skipped, headers joined
        ("10.0.0.2", ["fd00::7"], "fd00::7"),  # only proxies: the first of them
        ("10.0.0.2", ["not-an-address, 198.51.100.1"], "198.51.100.1"),
        ("10.0.0.2", ["198.51.100.1, not-an-address"], "10.0.0.2"),  # garbage next to us: believe nothing
        ("10.0.0.2", [], "10.0.0.2"),
        (None, ["198.51.100.1"], "unknown"),
    ],
)
def test_client_address(peer, headers, client):
    assert client_address(peer, headers, PROXY) == client


def test_without_trusted_proxies_the_header_is_ignored():
    assert client_address("10.0.0.2", ["198.51.100.1"], ()) == "10.0.0.2"


def test_trusted_proxies_setting():
    settings = Settings.from_env({"TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.7,::1"})
    assert settings.trusted_proxies == tuple(
        ipaddress.ip_network(n) for n in ("10.0.0.0/8", "192.168.1.7/32", "::1/128")
    )
    with pytest.raises(ValueError, match="TRUSTED_PROXIES: 'proxy' is not an address"):
        Settings.from_env({"TRUSTED_PROXIES": "proxy"})


@pytest.mark.parametrize("trusted", [True, False])
async def test_failed_authentications_slow_the_failing_client_not_the_proxy(aiohttp_client, settings, trusted):
    proxies = (ipaddress.ip_network("127.0.0.1/32"),) if trusted else ()
    client = await aiohttp_client(create_app(dataclasses.replace(settings, trusted_proxies=proxies)))
    for _ in range(55):  # past the burst of 50
        answer = await client.get(
            "/clear/", headers={"Authorization": "Bearer wrong", "X-Forwarded-For": "198.51.100.1"}
        )
        assert answer.status == 403
    limiter = client.server.app[ACCESS_CONTROL]._limiter
    if trusted:
        assert limiter.blocked_for("198.51.100.1") > 0
        assert limiter.blocked_for("198.51.100.2") == 0 and limiter.blocked_for("127.0.0.1") == 0
    else:  # everyone behind an untrusted proxy is one client
        assert limiter.blocked_for("127.0.0.1") > 0 and limiter.blocked_for("198.51.100.1") == 0
