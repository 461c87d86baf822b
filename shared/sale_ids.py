"""Sale ids come from `sales_id_seq`, whose every nextval reserves BLOCK consecutive ids."""

from __future__ import annotations

import asyncpg

BLOCK = 1_000  # the sequence's INCREMENT BY (migration 001)


async def reserve_blocks(conn: asyncpg.Connection, blocks: int) -> list[int]:
    """Start ids of `blocks` blocks, each owning ids start .. start + BLOCK - 1."""
    rows = await conn.fetch("SELECT nextval('sales_id_seq') AS start FROM generate_series(1, $1)", blocks)
    return [r["start"] for r in rows]
