"""Who is calling, and may they: API keys checked in memory, rules per route.

With AUTH_REQUIRED=false only the admin routes ask for credentials (ADMIN_TOKEN), as the
seed's open API did. With AUTH_REQUIRED=true every route but GET /health needs a key:
- pos:   POST /sales/ and /sales/batch/ for its own store, nothing else;
- owner: the catalogue, the reports, the dashboard, /metrics and /openapi.json; posts nothing;
- admin (an admin key or ADMIN_TOKEN): everything, key management included.
Keys come as `Authorization: Bearer <key>`, or as the password of HTTP Basic auth, which is
how the dashboard gets one: the browser asks once and keeps it for the session, never in a URL.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import time
from typing import NamedTuple

from aiohttp import web

from api import metrics
from api.forwarded import Network, client_address
from api.live_table import LiveTable
from api.responses import json_error
from shared.keys import hash_secret, secrets_match, split_key

OPEN, READ, POST, ADMIN = "open", "read", "post", "admin"
TILLS = "tills"  # the catalogue the tills price from: pos and owner keys read it
# Compared against when the prefix is unknown, so a miss takes as long as a hit.
_DUMMY_HASH = hash_secret("no such key")
MAX_FAILURE_DELAY = 1.0
DASHBOARD_REALM = 'Basic realm="Sales dashboard (any user name; your owner key as the password)", charset="UTF-8"'


class Principal(NamedTuple):
    kind: str  # pos / owner / admin
    store_id: int | None
    prefix: str
    # The till a pos key speaks for (docs/guarantees.md, "Tills"): the id of the till's first key.
    till_id: int | None = None


# Who made the request (None in open mode, where nobody needs to say).
PRINCIPAL = web.RequestKey[Principal | None]("principal")


class _Entry(NamedTuple):
    secret_hash: bytes
    principal: Principal


class KeyRing(LiveTable):
    """Active keys by prefix; revocations reach every process within `refresh_interval`."""

    channel = "api_keys_changed"

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("refresh_interval", 4.0)
        super().__init__(*args, **kwargs)
        self._keys: dict[str, _Entry] = {}

    async def _load(self) -> None:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT coalesce(till_id, id) AS till_id, prefix, kind, store_id, secret_hash "
                "FROM api_key WHERE revoked_at IS NULL"
            )
        self._keys = {
            r["prefix"]: _Entry(bytes(r["secret_hash"]), Principal(r["kind"], r["store_id"], r["prefix"], r["till_id"]))
            for r in rows
        }

    def authenticate(self, key: str) -> Principal | None:
        parts = split_key(key)
        prefix, secret = parts if parts else ("", key)
        entry = self._keys.get(prefix)
        matched = secrets_match(secret, entry.secret_hash if entry else _DUMMY_HASH)
        return entry.principal if matched and entry else None


class FailureLimiter:
    """A token bucket per client address, spent only by failed authentications."""

    def __init__(self, capacity: int = 50, refill_per_second: float = 5.0, max_clients: int = 10_000):
        self._capacity = capacity
        self._refill = refill_per_second
        self._max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}

    def _level(self, client: str, now: float) -> float:
        tokens, at = self._buckets.get(client, (self._capacity, now))
        return min(self._capacity, tokens + (now - at) * self._refill)

    def blocked_for(self, client: str) -> float:
        """Seconds until this client may try again (0: it may)."""
        level = self._level(client, time.monotonic())
        return 0.0 if level >= 1 else (1 - level) / self._refill

    def failed(self, client: str) -> None:
        now = time.monotonic()
        if len(self._buckets) >= self._max_clients and client not in self._buckets:
            self._buckets.clear()  # bounded memory; forgetting only makes it more lenient
        self._buckets[client] = (self._level(client, now) - 1, now)


def _has_surrogates(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return True
    return False


def credentials(request: web.Request) -> str | None:
    """The key or token in the Authorization header (Bearer, or Basic's password)."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        # header bytes that are not UTF-8 reach us as lone surrogates: no key looks like that
        return value if value.isascii() or not _has_surrogates(value) else None
    if scheme.lower() == "basic" and value:
        try:
            user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):  # ValueError: not ASCII
            return None
        return password or user or None
    return None


class AccessControl:
    def __init__(
        self,
        keys: KeyRing | None,
        admin_token: str | None,
        auth_required: bool,
        limiter: FailureLimiter | None = None,
        trusted_proxies: tuple[Network, ...] = (),
    ):
        self.keys = keys
        self._admin_token = admin_token
        self._auth_required = auth_required
        self._limiter = limiter or FailureLimiter()
        self._trusted_proxies = trusted_proxies  # whose X-Forwarded-For names the client

    def identify(self, given: str) -> Principal | None:
        if self._admin_token and hmac.compare_digest(given.encode(), self._admin_token.encode()):
            return Principal("admin", None, "ADMIN_TOKEN")
        return self.keys.authenticate(given) if self.keys else None

    def applies(self, rule: str) -> bool:
        """Whether requests under this rule need credentials at all (cheap, per request)."""
        return rule != OPEN and (rule == ADMIN or self._auth_required)

    async def check(self, request: web.Request, rule: str) -> web.Response | None:
        """None to let the request through (with request[PRINCIPAL] set), else the refusal."""
        request[PRINCIPAL] = None
        if rule == OPEN or (rule != ADMIN and not self._auth_required):
            return None
        refusal = self._refusal(request, rule)
        if refusal is not None and request[PRINCIPAL] is None:
            # A failed authentication: answered as usual, but a client that keeps failing
            # waits longer and longer for its answers (up to MAX_FAILURE_DELAY each).
            client = client_address(
                request.remote, request.headers.getall("X-Forwarded-For", []), self._trusted_proxies
            )
            delay = self._limiter.blocked_for(client)
            self._limiter.failed(client)
            if delay > 0:
                metrics.AUTH_FAILURES.labels("throttled").inc()
                await asyncio.sleep(min(delay, MAX_FAILURE_DELAY))
        return refusal

    def _refusal(self, request: web.Request, rule: str) -> web.Response | None:
        challenge = DASHBOARD_REALM if request.path == "/" else "Bearer"
        given = credentials(request)
        if not self._auth_required and not self._admin_token:
            return json_error(403, "admin endpoints are disabled: the server has no ADMIN_TOKEN configured")
        if given is None:
            metrics.AUTH_FAILURES.labels("missing").inc()
            return json_error(
                401, "this endpoint needs Authorization: Bearer <key>", headers={"WWW-Authenticate": challenge}
            )
        principal = self.identify(given)
        if principal is None:
            metrics.AUTH_FAILURES.labels("bad_key").inc()
            if not self._auth_required:  # open mode: only the admin token exists
                return json_error(403, "the bearer token is not the admin token")
            return json_error(401, "unknown or revoked key", headers={"WWW-Authenticate": challenge})
        request[PRINCIPAL] = principal
        if refusal := _forbidden(principal, rule):
            return json_error(403, refusal)
        return None


def _forbidden(principal: Principal, rule: str) -> str | None:
    if principal.kind == "admin":
        return None
    if rule == ADMIN:
        return "this endpoint needs an admin key"
    if rule == TILLS:
        return None
    if rule == READ and principal.kind != "owner":
        return "a pos key may only post sales for its store"
    if rule == POST and principal.kind != "pos":
        return "an owner key reads reports and posts nothing"
    return None


def pos_store(request: web.Request) -> int | None:
    """The one store a pos key may record for; None for anyone else (and in open mode)."""
    principal: Principal | None = request.get(PRINCIPAL)
    return principal.store_id if principal is not None and principal.kind == "pos" else None


def pos_till(request: web.Request) -> int | None:
    """The till making the request (its pos key's); None for anyone else (and in open mode)."""
    principal: Principal | None = request.get(PRINCIPAL)
    return principal.till_id if principal is not None and principal.kind == "pos" else None


def check_store_scope(request: web.Request, store_ids: list[int]) -> str | None:
    """The refusal when a pos key posts for another store than its own, else None."""
    principal: Principal | None = request.get(PRINCIPAL)
    if principal is None or principal.kind != "pos":
        return None
    others = sorted({s for s in store_ids if s != principal.store_id})
    if not others:
        return None
    names = ", ".join(str(s) for s in others)
    return f"this key posts sales for store {principal.store_id} only, not for store {names}"
