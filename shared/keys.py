"""API keys: issue, list, revoke; the secret is shown once and stored only as a hash.

A key reads `sk_<kind>_<8 random chars>.<43 random chars>`: the part before the dot is the
visible prefix (unique, stored in clear to find the key); the part after is 32 random bytes,
stored as SHA-256 (a slow password hash adds nothing for 256 random bits).

    python -m shared.keys issue --kind pos --store 3 --label "till 1"
    python -m shared.keys issue --kind pos --store 3 --till 12 --label "till 1, new key"
    python -m shared.keys list
    python -m shared.keys revoke sk_pos_Ab12Cd34
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import hmac
import json
import secrets
import string
import sys

import asyncpg

from shared import db
from shared.settings import Settings

KINDS = ("pos", "owner", "admin")
_ALPHABET = string.ascii_letters + string.digits


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def split_key(key: str) -> tuple[str, str] | None:
    """(prefix, secret) of a well-formed key, else None."""
    prefix, dot, secret = key.partition(".")
    if not dot or not prefix.startswith("sk_") or not secret or len(key) > 200:
        return None
    return prefix, secret


def secrets_match(secret: str, stored_hash: bytes) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


@dataclasses.dataclass(frozen=True)
class IssuedKey:
    key: str  # the only time the secret exists outside the holder's hands
    prefix: str
    kind: str
    store_id: int | None
    label: str
    till_id: int | None = None  # a pos key's till (docs/guarantees.md, "Tills")


async def issue(
    conn: asyncpg.Connection, kind: str, store_id: int | None = None, label: str = "", till_id: int | None = None
) -> IssuedKey:
    """A new key. A pos key is a new till's, or, with `till_id`, another key for that till (the
    till keeps its sales' numbers: revoke its old key once the till has the new one)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    if (kind == "pos") != (store_id is not None):
        raise ValueError("a pos key needs a store, and only a pos key has one")
    if kind == "pos" and not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM store WHERE id = $1)", store_id):
        raise ValueError(f"there is no store {store_id}")
    if till_id is not None and (kind != "pos" or await conn.fetchval(TILL_STORE, till_id) != store_id):
        raise ValueError(f"there is no till {till_id} of store {store_id} (a till is a pos key's id)")
    prefix = f"sk_{kind}_" + "".join(secrets.choice(_ALPHABET) for _ in range(8))
    secret = secrets.token_urlsafe(32)
    key_id = await conn.fetchval(
        "INSERT INTO api_key (kind, store_id, prefix, secret_hash, label, till_id) "
        "VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        kind,
        store_id,
        prefix,
        hash_secret(secret),
        label,
        till_id,
    )
    till = (till_id or key_id) if kind == "pos" else None
    return IssuedKey(f"{prefix}.{secret}", prefix, kind, store_id, label, till)


# The store of a till: of the pos key whose id it is (revoked or not), and which is a till's first.
TILL_STORE = "SELECT store_id FROM api_key WHERE id = $1 AND kind = 'pos' AND till_id IS NULL"


async def list_keys(conn: asyncpg.Connection) -> list[dict]:
    rows = await conn.fetch("SELECT prefix, kind, store_id, label, created_at, revoked_at FROM api_key ORDER BY id")
    return [
        {
            **dict(r),
            "created_at": r["created_at"].isoformat(),
            "revoked_at": r["revoked_at"] and r["revoked_at"].isoformat(),
        }
        for r in rows
    ]


async def revoke(conn: asyncpg.Connection, prefix: str) -> dict | None:
    """Revoke the key (idempotent); None when there is no such key."""
    row = await conn.fetchrow(
        "UPDATE api_key SET revoked_at = coalesce(revoked_at, now()) WHERE prefix = $1 "
        "RETURNING prefix, kind, store_id, label, created_at, revoked_at",
        prefix,
    )
    if row is None:
        return None
    return {**dict(row), "created_at": row["created_at"].isoformat(), "revoked_at": row["revoked_at"].isoformat()}


async def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.keys", description="Manage API keys.")
    commands = parser.add_subparsers(dest="command", required=True)
    issue_cmd = commands.add_parser("issue", help="issue a key and print its secret (shown once)")
    issue_cmd.add_argument("--kind", choices=KINDS, required=True)
    issue_cmd.add_argument("--store", type=int, help="the store of a pos key")
    issue_cmd.add_argument("--label", default="")
    issue_cmd.add_argument(
        "--till", type=int, help="a pos key for this till (its id), replacing its key: the till keeps its numbers"
    )
    issue_cmd.add_argument("--json", action="store_true", help="print JSON instead of text")
    list_cmd = commands.add_parser("list", help="list keys (never their secrets)")
    list_cmd.add_argument("--json", action="store_true")
    revoke_cmd = commands.add_parser("revoke", help="revoke a key by its prefix")
    revoke_cmd.add_argument("prefix")
    args = parser.parse_args(argv)

    from shared.migrate import migrate

    settings = Settings.from_env()
    conn = await db.connect(settings.database_url)
    try:
        await migrate(conn, settings.report_timezone)
        if args.command == "issue":
            try:
                issued = await issue(conn, args.kind, args.store, args.label, args.till)
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            if args.json:
                print(json.dumps(dataclasses.asdict(issued)))
            else:
                print(issued.key)
                print(
                    f"# {issued.kind} key {issued.prefix}"
                    + (f" for store {issued.store_id}, till {issued.till_id}" if issued.store_id else "")
                    + ": keep it now, it is not shown again",
                    file=sys.stderr,
                )
        elif args.command == "list":
            keys = await list_keys(conn)
            if args.json:
                print(json.dumps(keys))
            else:
                for k in keys:
                    state = f"revoked {k['revoked_at']}" if k["revoked_at"] else "active"
                    store = f"store {k['store_id']}" if k["store_id"] else "-"
                    print(f"{k['prefix']}\t{k['kind']}\t{store}\t{state}\t{k['label']}")
        else:
            revoked = await revoke(conn, args.prefix)
            if revoked is None:
                print(f"error: no key {args.prefix}", file=sys.stderr)
                return 1
            print(f"revoked {revoked['prefix']} at {revoked['revoked_at']}")
    finally:
        await conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(_main()))
