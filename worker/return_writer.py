"""Writing a batch of queued returns to PostgreSQL, exactly once.

Returns are few (about 2% of sales): one INSERT ... ON CONFLICT DO NOTHING RETURNING per
batch, whose returned rows alone feed the rollups, so a batch delivered twice counts nothing
the second time. In the same transaction `sale_returned` adds up what has been returned of
each sale, and its check refuses more than was sold: the API refuses such a return before
queueing it, and this catches what it cannot see (a reservation lost with a Redis failover).
A return that breaks a constraint goes to dead_letter with its reason, found by the same
bisection as a bad sale (worker.writer).
"""

from __future__ import annotations

import collections

import asyncpg

from shared import report_changes
from shared.rollups import EXTEND_RUNNING, MAY_HOLD_LATE, batch_upserts
from worker import writer

# (id, sale_id, return_time_us, store_id, item_id, price, quantity, sold, idempotency_key, accepted_at_us)
ReturnRow = tuple
RETURN_COLUMNS = [
    "id",
    "sale_id",
    "return_time_us",
    "store_id",
    "item_id",
    "price",
    "quantity",
    "sold",
    "idempotency_key",
    "accepted_at_us",
]

_FROM_US = "timestamptz 'epoch' + {} * interval '1 microsecond'"
INSERT_RETURNS = f"""
INSERT INTO returns (id, sale_id, return_time, store_id, item_id, price, quantity, idempotency_key, accepted_at)
SELECT id, sale_id, {_FROM_US.format("return_time_us")}, store_id, item_id, price, quantity, idempotency_key,
       {_FROM_US.format("accepted_at_us")}
FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::int[], $5::int[], $6::int[], $7::int[], $8::text[],
            $9::bigint[])
     AS r(id, sale_id, return_time_us, store_id, item_id, price, quantity, idempotency_key, accepted_at_us)
ORDER BY id
ON CONFLICT DO NOTHING
RETURNING id
"""
STORED_ALREADY = "SELECT id FROM returns WHERE id = ANY($1::bigint[])"
KEY_OWNER = "SELECT id FROM returns WHERE store_id = $1 AND idempotency_key = $2"

# In sale order, so that two writers never wait on each other's rows in opposite orders.
ADD_RETURNED = """
INSERT INTO sale_returned AS r (sale_id, sold, returned)
SELECT sale_id, max(sold), sum(quantity) FROM unnest($1::bigint[], $2::int[], $3::int[]) AS t(sale_id, sold, quantity)
GROUP BY sale_id ORDER BY sale_id
ON CONFLICT (sale_id) DO UPDATE SET returned = r.returned + EXCLUDED.returned
"""

# By whether the batch may hold a late return (MAY_HOLD_LATE), as worker.writer's.
UPSERT_RETURN_SUMS = {late: batch_upserts(returns=True, late=late) for late in (False, True)}


def return_json(row: ReturnRow) -> dict:
    """A return as a dead letter keeps it (`kind` tells it from a sale)."""
    return {"kind": "return", **writer.row_json(row, RETURN_COLUMNS)}


def sums_by(rows: list[ReturnRow], names: tuple[str, ...]) -> list[list[int]]:
    """Refunds, units and returns summed per distinct value of `names`, as the six arrays of
    shared.rollups.PARTIAL_RETURNS."""
    groups: dict[tuple, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
    for row in rows:
        values = {"second": row[2] // 1_000_000, "item_id": row[4], "store_id": row[3]}
        sums = groups[tuple(values[name] if name in names else 0 for name in ("second", "item_id", "store_id"))]
        sums[0] += row[5] * row[6]
        sums[1] += row[6]
        sums[2] += 1
    keys = sorted(groups)
    return [[key[i] for key in keys] for i in range(3)] + [[groups[key][i] for key in keys] for i in range(3)]


def last_second(rows: list[ReturnRow]) -> int:
    return max(row[2] for row in rows) // 1_000_000


async def insert_returns(conn: asyncpg.Connection, rows: list[ReturnRow]) -> tuple[int, list[tuple[ReturnRow, str]]]:
    """Inserted count, and the rows not stored because their idempotency key belongs to another
    return, with the reason (inside the caller's transaction). Rows stored already are skipped."""
    columns = list(zip(*rows))
    inserted_ids = {r["id"] for r in await conn.fetch(INSERT_RETURNS, *columns[:7], columns[8], columns[9])}
    inserted = [row for row in rows if row[0] in inserted_ids]
    lost = []
    if len(inserted) < len(rows):
        missing = [row for row in rows if row[0] not in inserted_ids]
        stored = {r["id"] for r in await conn.fetch(STORED_ALREADY, [row[0] for row in missing])}
        for row in missing:
            if row[0] not in stored:
                owner = await conn.fetchval(KEY_OWNER, row[3], row[8])
                lost.append((row, f"idempotency key {row[8]!r} already belongs to return {owner}"))
    if inserted:
        await conn.execute(ADD_RETURNED, [r[1] for r in inserted], [r[7] for r in inserted], [r[6] for r in inserted])
        earliest = min(r[2] for r in inserted)
        await conn.execute(
            report_changes.ANNOUNCE,
            report_changes.payload(earliest, max(r[2] for r in inserted), (r[3] for r in inserted)),
        )
        for summed_by, upsert in UPSERT_RETURN_SUMS[await conn.fetchval(MAY_HOLD_LATE, earliest // 1_000_000)]:
            await conn.execute(upsert, *sums_by(inserted, summed_by))
    return len(inserted), lost


async def write_returns(conn: asyncpg.Connection, rows: list[ReturnRow]) -> writer.BatchResult:
    """Write the returns (one transaction); raises only for errors worth retrying."""
    if not rows:
        return writer.BatchResult()
    await conn.execute(EXTEND_RUNNING, last_second(rows))  # before the transaction: see rollups.LOCK_RUNNING
    try:
        async with conn.transaction():
            await writer.lock_running(conn, last_second(rows))
            inserted, lost = await insert_returns(conn, rows)
            filed = await writer.file_dead_letters(conn, lost, return_json)
        return writer.BatchResult(
            written=inserted, duplicates=len(rows) - inserted - len(filed), dead=len(filed), dead_rows=filed
        )
    except writer.PERMANENT_ERRORS:
        return await writer.write_row_by_row(conn, rows, insert_returns, return_json, last_second(rows))
