"""Every till in view: each active pos key with its last contact, backlog and clock, and flags
for the ones that need an owner's eye. Read by GET /tills/ and the store silence gauge.

Cost: one query of api_key, one HMGET of the tills' hash (api.till_contacts), and the stores'
state from the catalogue kept in memory (api.catalogue), whatever the number of sales.

Flags:
- `silent`: nothing heard from the till for more than `silent_minutes` (default 15) while its
  store is open. A till never heard from is silent since its key was issued.
- `behind`: what the till last said of its spool: the oldest pending sale was more than
  BEHIND_MINUTES (5) old when it said so, or more than BEHIND_PENDING sales (one full batch,
  1,000) were pending. Measured when the till said it, not now: a till that emptied its spool
  and sold nothing since is not behind; one that stopped talking is `silent` instead.
- `clock_off`: its clock is more than CLOCK_OFF_SECONDS (30) away from the server's.
"""

from __future__ import annotations

import dataclasses

import asyncpg
import redis.asyncio as redis

from api.catalogue import Catalogue
from api.moments import iso_utc, to_us
from api.till_contacts import TillRecord, read
from api.validation import MAX_BATCH

SILENT_MINUTES = 15
BEHIND_MINUTES = 5
BEHIND_PENDING = MAX_BATCH
CLOCK_OFF_SECONDS = 30

ACTIVE_TILLS = """
SELECT DISTINCT ON (coalesce(till_id, id)) coalesce(till_id, id) AS id, store_id, label, created_at
FROM api_key
WHERE kind = 'pos' AND revoked_at IS NULL AND ($1::int IS NULL OR store_id = $1)
ORDER BY coalesce(till_id, id), id DESC
"""  # a till with a new key and the old one not revoked yet: once, with its newest key's label

COLUMNS = [
    "till_id",
    "store_id",
    "label",
    "last_contact",
    "silent_seconds",
    "pending",
    "oldest_pending",
    "clock_offset",
    "status_at",
    "store_open",
    "silent",
    "behind",
    "clock_off",
]


@dataclasses.dataclass(frozen=True)
class Thresholds:
    silent_minutes: int = SILENT_MINUTES
    behind_minutes: int = BEHIND_MINUTES
    behind_pending: int = BEHIND_PENDING
    clock_off_seconds: int = CLOCK_OFF_SECONDS


def store_open(catalogue: Catalogue, store_id: int, now_us: int) -> bool:
    """Whether the store trades now. The catalogue has no opening hours yet, and a store with no
    hours counts as always open: open means it exists and is not retired."""
    if store_id not in catalogue.store_rows:
        return False
    retired = catalogue.retired_stores.get(store_id)
    return retired is None or now_us < retired


def _iso(us: int | None) -> str | None:
    return None if us is None else iso_utc(us)


def till_row(key: asyncpg.Record, record: TillRecord, is_open: bool, now_us: int, limits: Thresholds) -> dict:
    contact, status = record.contact, record.status
    heard_us = contact.last_contact_us if contact else to_us(key["created_at"])
    silent_seconds = max(0, (now_us - heard_us) // 1_000_000)
    pending = status.pending if status else None
    oldest = status.oldest_pending_us if status else None
    offset = status.clock_offset if status else None
    lag_us = status.reported_us - oldest if status and oldest is not None else None
    return {
        "till_id": key["id"],
        "store_id": key["store_id"],
        "label": key["label"],
        "last_contact": _iso(contact.last_contact_us) if contact else None,
        "silent_seconds": silent_seconds,
        "pending": pending,
        "oldest_pending": _iso(oldest),
        "clock_offset": offset,
        "status_at": _iso(status.reported_us) if status else None,
        "store_open": is_open,
        "silent": is_open and silent_seconds > limits.silent_minutes * 60,
        "behind": (pending is not None and pending > limits.behind_pending)
        or (lag_us is not None and lag_us > limits.behind_minutes * 60_000_000),
        "clock_off": offset is not None and abs(offset) > limits.clock_off_seconds,
    }


def _problems_first(row: dict) -> tuple:
    rank = 0 if row["silent"] else 1 if row["behind"] else 2 if row["clock_off"] else 3
    return rank, row["store_id"], row["till_id"]


async def load(
    pool: asyncpg.Pool,
    client: redis.Redis,
    tills_key: str,
    catalogue: Catalogue,
    now_us: int,
    limits: Thresholds,
    store_id: int | None = None,
) -> list[dict]:
    """Every active till (of `store_id`, when given), problems first: silent, behind, clock off,
    then the rest; by store and till within each."""
    async with pool.acquire() as conn:
        keys = await conn.fetch(ACTIVE_TILLS, store_id)
    records = await read(client, tills_key, [k["id"] for k in keys])
    rows = [till_row(k, records[k["id"]], store_open(catalogue, k["store_id"], now_us), now_us, limits) for k in keys]
    return sorted(rows, key=_problems_first)
