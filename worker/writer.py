"""Writing a batch of queued sales to PostgreSQL (or a Citus coordinator), exactly once.

One transaction per batch. Almost every batch is new sales: binary COPY straight into sales
(and the idempotency keys into sale_keys), which fails as a whole if any of them is stored
already, and rollup upserts from the batch's own sums (worker.batch_columns). A batch that
fails that way (delivered again after a lost ack, an idempotency key already taken) is
written again with INSERT ... ON CONFLICT DO NOTHING RETURNING id, and the rollups get the
sums of the rows that INSERT returned. A batch delivered twice therefore inserts nothing and
counts nothing the second time.

A row that can never be written (a constraint it breaks) does not block the others: the
batch is split in savepoints (bisection) until that row is alone, and it goes to `dead_letter` with its reason.
Any other error (connection lost, server restarting) propagates: the caller retries the batch.

On Citus, COPY reports a worker node's constraint error without its SQLSTATE (XX000): such a
batch takes the INSERT path, whose errors keep their class. The per-row foreign key checks
are not skipped there (they run on the worker nodes, and session_replication_role = replica
on the coordinator would also skip Citus's own triggers, TRUNCATE's among them).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
from collections.abc import Awaitable, Callable

import asyncpg

from shared import partitions, report_changes, sales_copy
from shared.db import set_codecs
from shared.queue import full_rows
from shared.rollups import EXTEND_RUNNING, LOCK_RUNNING, MAY_HOLD_LATE, RUNNING_COVERS, batch_upserts
from worker.batch_columns import BatchColumns
from worker.gc_paused import gc_paused

# (id, sale_time_us, item_id, store_id, price, quantity, idempotency_key, accepted_at_us, list_price,
#  till_id, till_seq, till_time_us)
Row = tuple
COLUMNS = [
    "id",
    "sale_time_us",
    "item_id",
    "store_id",
    "price",
    "quantity",
    "idempotency_key",
    "accepted_at_us",
    "list_price",
    "till_id",
    "till_seq",
    "till_time_us",
]

# Sorting a batch by id needs more than the default 4 MB work_mem; JIT would cost more than
# the statements it compiles (the planner guesses large row counts for unnest and COPY).
# On Citus a batch writes to shards on every node, over as many connections per node as it
# has shards there (up to citus.max_adaptive_executor_pool_size, 16); by default a session
# keeps one of them after the transaction and opens the others anew for every batch: a
# 1,000-sale COPY took 285 ms, 23 with them kept, and its two-phase commit 47 ms, 7
# (bench.citus). (On
# plain PostgreSQL the setting is an inert placeholder; as a connection setting it survives
# the pool's RESET ALL.)
SESSION_SETTINGS = {
    "application_name": "sales-worker",
    "jit": "off",
    "work_mem": "64MB",
    "citus.max_cached_conns_per_worker": "16",
}

_FROM_US = "timestamptz 'epoch' + {} * interval '1 microsecond'"

# The rows of a batch that are not stored yet (a stored one has the same id, store and time).
INSERT_ROWS = f"""
INSERT INTO sales (id, sale_time, item_id, store_id, price, quantity, idempotency_key, accepted_at, list_price,
                   till_id, till_seq, till_time)
SELECT id, {_FROM_US.format("sale_time_us")}, item_id, store_id, price, quantity, idempotency_key,
       {_FROM_US.format("accepted_at_us")}, list_price, till_id, till_seq, {_FROM_US.format("till_time_us")}
FROM unnest($1::bigint[], $2::bigint[], $3::int[], $4::int[], $5::int[], $6::int[], $7::text[], $8::bigint[],
            $9::int[], $10::int[], $11::bigint[], $12::bigint[])
     AS r(id, sale_time_us, item_id, store_id, price, quantity, idempotency_key, accepted_at_us, list_price,
          till_id, till_seq, till_time_us)
ORDER BY id
ON CONFLICT DO NOTHING
RETURNING id
"""

# Idempotency keys: the first sale to claim one owns it.
CLAIM_KEYS = """
INSERT INTO sale_keys (store_id, idempotency_key, sale_id)
SELECT * FROM unnest($1::int[], $2::text[], $3::bigint[]) ORDER BY 1, 2, 3
ON CONFLICT DO NOTHING
"""
KEY_OWNERS = """
SELECT store_id, idempotency_key, sale_id FROM sale_keys
WHERE store_id = ANY($1::int[]) AND idempotency_key = ANY($2::text[])
"""
SALE_KEYS_COLUMNS = ["store_id", "idempotency_key", "sale_id"]

# The tills' progress (migration 016): the highest sequence number stored of each till of the
# batch, read before its sales are written and moved in the same transaction.
TILL_PROGRESS = """
SELECT store_id, till_id, last_seq FROM till_progress
WHERE store_id = ANY($1::int[]) AND till_id = ANY($2::int[])
"""
MOVE_TILL_PROGRESS = """
INSERT INTO till_progress (store_id, till_id, last_seq)
SELECT * FROM unnest($1::int[], $2::int[], $3::bigint[]) ORDER BY 1, 2
ON CONFLICT (store_id, till_id) DO UPDATE
SET last_seq = greatest(till_progress.last_seq, excluded.last_seq)
"""
# The ids stored under these tills' numbers (sales_till_seq; $1 the stores, for Citus to prune).
STORED_NUMBERS = """
SELECT till_id, till_seq, id FROM sales
WHERE store_id = ANY($1::int[]) AND till_id IS NOT NULL
  AND (till_id, till_seq) IN (SELECT * FROM unnest($2::int[], $3::bigint[]))
"""

# The foreign keys of sales, checked once per batch instead of once per row. PostgreSQL's own
# check (a trigger per row and key, 6 µs each: most of a batch's time) locks the referenced
# item and store rows FOR KEY SHARE; this does the same for each distinct id of the batch
# ($1 items, $2 stores, sorted), and only when every one exists (and the role may) skips the
# per-row triggers for this transaction. A batch naming a missing item or store takes the
# ordinary path and gets the ordinary errors. The ids come as arrays so that the lookups are
# index probes whatever the batch size (a join with the staging table scanned all 10,000
# items: 1.6 ms per batch). It also says what the batch changes to the report cache ($3,
# shared.report_changes).
LOCK_PARENTS_AND_SKIP_ROW_CHECKS = f"""
WITH items AS (SELECT id FROM item WHERE id = ANY($1::int[]) ORDER BY id FOR KEY SHARE),
     stores AS (SELECT id FROM store WHERE id = ANY($2::int[]) ORDER BY id FOR KEY SHARE)
SELECT CASE WHEN (SELECT count(*) FROM items) = cardinality($1::int[])
             AND (SELECT count(*) FROM stores) = cardinality($2::int[])
             AND current_setting('is_superuser') = 'on'
        THEN set_config('session_replication_role', 'replica', true) END,
       {report_changes.announce_sql("$3")}
"""

# The new batch's rollups: binary COPY cannot return rows, and needs not: all went in. By
# whether the batch may hold a late sale (MAY_HOLD_LATE; almost never: no late upserts then).
UPSERT_BATCH_SUMS = {late: batch_upserts(late=late) for late in (False, True)}


class TillSalesSeen(Exception):
    """A till's sale in the batch is numbered at or below what is stored of its till (the
    batch delivered again, or a sale taken again by a Redis that lost its state): the batch
    takes the INSERT path, which tells the two apart."""


async def stored_progress(conn: asyncpg.Connection, tills: set[tuple[int, int]]) -> dict[tuple[int, int], int]:
    """(store_id, till_id) -> the highest sequence number stored of that till."""
    rows = await conn.fetch(TILL_PROGRESS, sorted({s for s, _ in tills}), sorted({t for _, t in tills}))
    return {(r["store_id"], r["till_id"]): r["last_seq"] for r in rows}


async def move_till_progress(conn: asyncpg.Connection, batch: BatchColumns) -> None:
    if progress := batch.till_progress():
        await conn.execute(MOVE_TILL_PROGRESS, *map(list, zip(*((s, t, high) for s, t, _, high in progress))))


async def split_seen(conn: asyncpg.Connection, rows: list[Row]) -> tuple[list[Row], list[tuple[Row, str]]]:
    """The rows to insert, and those that must not be, with the reason: a till's number stored
    already under another id, or twice in the rows. Those numbered above their till's progress
    and once in the rows are new; the others are looked up (sales_till_seq): a number stored
    under the row's own id is a duplicate, skipped; one not stored at all is written (a number
    below the progress may be unstored: refused, given up, a dead letter replayed)."""
    tills = {(row[3], row[9]) for row in rows if row[9] is not None}
    if not tills:
        return rows, []
    progress = await stored_progress(conn, tills)
    counts = collections.Counter((row[9], row[10]) for row in rows if row[9] is not None)
    doubtful = [
        row
        for row in rows
        if row[9] is not None and (row[10] <= progress.get((row[3], row[9]), 0) or counts[row[9], row[10]] > 1)
    ]
    stored: dict[tuple[int, int], int] = {}
    if doubtful:
        found = await conn.fetch(
            STORED_NUMBERS,
            sorted({row[3] for row in doubtful}),
            [row[9] for row in doubtful],
            [row[10] for row in doubtful],
        )
        stored = {(r["till_id"], r["till_seq"]): r["id"] for r in found}
    kept, lost = [], []
    for row in rows:
        number = (row[9], row[10])
        owner = stored.setdefault(number, row[0]) if row[9] is not None else row[0]
        if owner == row[0]:
            kept.append(row)  # new, or stored under its own id (INSERT's ON CONFLICT skips it)
        else:
            lost.append((row, f"sale {row[10]} of till {row[9]} is stored already as sale {owner}"))
    return kept, lost


class RunningTotalsBehind(Exception):
    """The running totals stop before a day of the batch (their end moved under a concurrent
    rebuild in another time zone): retried, and the retry extends them first."""


# A bad row delivered again (its batch's ack was lost) is already filed: not filed twice.
INSERT_DEAD_LETTER = (
    "INSERT INTO dead_letter (sale_id, sale, reason) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING id"
)

# Errors that say "this data can never be written": integrity (23) and data (22) classes.
PERMANENT_ERRORS = (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError)


@dataclasses.dataclass
class BatchResult:
    written: int = 0
    duplicates: int = 0
    dead: int = 0
    dead_rows: list[tuple] = dataclasses.field(default_factory=list)  # the rows this write filed


def row_json(row: tuple, columns: list[str] = COLUMNS) -> dict:
    """A queued row as a dead letter keeps it: its `*_us` moments as ISO 8601."""
    values = dict(zip(columns, row))
    for column in columns:
        if column.endswith("_us"):
            micros = values.pop(column)
            values[column[:-3]] = (
                None
                if micros is None
                else (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=micros)).isoformat()
            )
    return values


def _reason(exc: Exception) -> str:
    detail = getattr(exc, "detail", None)
    return f"{type(exc).__name__}: {exc}" + (f" ({detail})" if detail and detail not in str(exc) else "")


async def prepare_connection(conn: asyncpg.Connection) -> None:
    """Once per connection: jsonb codecs (dead letters)."""
    await set_codecs(conn)


async def is_citus(conn: asyncpg.Connection) -> bool:
    """Whether `sales` is a Citus distributed table here."""
    return await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') "
        "AND EXISTS (SELECT 1 FROM pg_class WHERE relname = 'pg_dist_partition' "
        "AND relnamespace = 'pg_catalog'::regnamespace) "
        "AND to_regclass('sales') IS NOT NULL"
    )


def changes_of(rows: list[Row], *, deltas: bool = False) -> str:
    """What writing the rows changes in the reports (shared.report_changes)."""
    times = [row[1] for row in rows]
    return report_changes.payload(min(times), max(times), (row[3] for row in rows), deltas=deltas)


def parent_ids(rows: list[Row]) -> tuple[list[int], list[int]]:
    """The distinct item and store ids of a batch, sorted (the order rows are locked in)."""
    return sorted({row[2] for row in rows}), sorted({row[3] for row in rows})


async def ensure_partitions(conn: asyncpg.Connection, batch: BatchColumns) -> set[dt.date]:
    """The partitions of every month the batch's sales fall in (shared.partitions); the
    months among them that were archived (no partition for those)."""
    return await partitions.ensure(conn, partitions.months_outside_current(batch.times_us))


def archived_reason(month: dt.date) -> str:
    return (
        f"month {month.isoformat()[:7]} is archived (python -m shared.retention): "
        "its sales are no longer stored one by one"
    )


def split_archived(rows: list[Row], archived: set[dt.date]) -> tuple[list[Row], list[tuple[Row, str]]]:
    """The rows of months still kept, and those of archived months with the reason."""
    kept, refused = [], []
    for row in rows:
        month = partitions.month_of_us(row[1])
        if month in archived:
            refused.append((row, archived_reason(month)))
        else:
            kept.append(row)
    return kept, refused


def _last_second(batch: BatchColumns) -> int:
    return int(batch.times_us.max()) // 1_000_000


async def lock_running(conn: asyncpg.Connection, last_second: int) -> None:
    """A transaction's first statements: the running totals' lock, shared, then whether they
    reach the batch's last day (shared.rollups.LOCK_RUNNING)."""
    await conn.execute(LOCK_RUNNING)
    if not await conn.fetchval(RUNNING_COVERS, last_second):
        raise RunningTotalsBehind(f"running totals end before the batch's last sale ({last_second})")


# What the deltas of a batch are summed by (shared.report_changes.DELTAS): a store's items by day.
_DELTA_SUMS = ("second", "item_id", "store_id")


def sends_deltas(sales: int, citus: bool) -> bool:
    """Whether a transaction adding this many sales says what it added (shared.report_changes):
    not on Citus, where a snapshot of the coordinator does not say what the workers' shards hold."""
    return not citus and sales <= report_changes.MAX_DELTA_SALES


async def _add_to_rollups(conn: asyncpg.Connection, batch: BatchColumns, *, deltas: bool = False) -> None:
    upserts = UPSERT_BATCH_SUMS[await conn.fetchval(MAY_HOLD_LATE, int(batch.times_us.min()) // 1_000_000)]
    with gc_paused():
        sums = {summed_by: batch.sums_by(summed_by) for summed_by in {summed_by for summed_by, _ in upserts}}
    for summed_by, upsert in upserts:
        await conn.execute(upsert, *sums[summed_by])
    if deltas:
        await conn.execute(report_changes.DELTAS, *(sums.get(_DELTA_SUMS) or batch.sums_by(_DELTA_SUMS)))


async def _copy_new(conn: asyncpg.Connection, batch: BatchColumns, citus: bool) -> int:
    """All the rows, as new sales; raises UniqueViolationError (InternalServerError on Citus)
    if any of them is stored already.

    Measured on 100,000-sale batches (PostgreSQL CPU per sale): the COPY straight into sales
    2.2 µs, where staging it (0.7) and INSERT ... SELECT (2.9) cost 3.6, and rollups from the
    batch's sums next to nothing, where each rollup over the inserted rows cost 0.3-0.7 µs.
    """
    with gc_paused():
        copy_data = memoryview(batch.copy_data())  # not bytes: asyncpg would take those for a file name
        keys = batch.keys()
    item_ids, store_ids = parent_ids(batch.rows)
    deltas = sends_deltas(len(batch), citus)
    changes = report_changes.payload(int(batch.times_us.min()), int(batch.times_us.max()), store_ids, deltas=deltas)
    if progress := batch.till_progress():
        stored = await stored_progress(conn, {(store, till) for store, till, _, _ in progress})
        if batch.till_numbers_repeat() or any(
            lowest <= stored.get((store, till), 0) for store, till, lowest, _ in progress
        ):
            raise TillSalesSeen
    if citus:
        await conn.execute(report_changes.ANNOUNCE, changes)
    else:
        await conn.fetchval(LOCK_PARENTS_AND_SKIP_ROW_CHECKS, item_ids, store_ids, changes)
    await conn.copy_to_table("sales", source=copy_data, columns=sales_copy.COLUMNS, format="binary")
    if keys:
        await conn.copy_records_to_table("sale_keys", records=keys, columns=SALE_KEYS_COLUMNS)
    await move_till_progress(conn, batch)
    await _add_to_rollups(conn, batch, deltas=deltas)
    return len(batch)


async def insert_rows(
    conn: asyncpg.Connection, rows: list[Row], batch_key_checks: bool = False, citus: bool = True
) -> tuple[int, list[tuple[Row, str]]]:
    """Inserted count, and the rows not stored because their idempotency key belongs to
    another sale, with the reason (inside the caller's transaction). Rows stored already are
    skipped; the rollups get the sums of the rows inserted (and the deltas say them, but on
    `citus`, which is what a caller that does not say gets: no deltas)."""
    lost: list[tuple[Row, str]] = []
    rows = full_rows(rows)
    keyed = [row for row in rows if row[6] is not None]
    if keyed:
        await conn.execute(CLAIM_KEYS, [r[3] for r in keyed], [r[6] for r in keyed], [r[0] for r in keyed])
        owners = {
            (r["store_id"], r["idempotency_key"]): r["sale_id"]
            for r in await conn.fetch(KEY_OWNERS, sorted({r[3] for r in keyed}), sorted({r[6] for r in keyed}))
        }
        taken = {row[0]: owners[row[3], row[6]] for row in keyed if owners[row[3], row[6]] != row[0]}
        lost = [
            (row, f"idempotency key {row[6]!r} already belongs to sale {taken[row[0]]}")
            for row in keyed
            if row[0] in taken
        ]
        rows = [row for row in rows if row[0] not in taken]
    rows, seen = await split_seen(conn, rows)
    lost += seen
    if not rows:
        return 0, lost
    deltas = sends_deltas(len(rows), citus)
    if batch_key_checks:
        await conn.fetchval(LOCK_PARENTS_AND_SKIP_ROW_CHECKS, *parent_ids(rows), changes_of(rows, deltas=deltas))
    else:
        await conn.execute(report_changes.ANNOUNCE, changes_of(rows, deltas=deltas))
    inserted_ids = {r["id"] for r in await conn.fetch(INSERT_ROWS, *zip(*rows))}
    inserted = [row for row in rows if row[0] in inserted_ids]
    if inserted:
        columns = BatchColumns(inserted)
        await _add_to_rollups(conn, columns, deltas=deltas)
        await move_till_progress(conn, columns)
    return len(inserted), lost


async def write_batch(conn: asyncpg.Connection, rows: list[Row], *, citus: bool | None = None) -> BatchResult:
    """Write the rows (one transaction); raises only for errors worth retrying.

    `citus`: whether sales is distributed here; asked of the database when not given (the
    consumer asks once per worker and passes it)."""
    if not rows:
        return BatchResult()
    rows = full_rows(rows)
    if citus is None:
        citus = await is_citus(conn)
    with gc_paused():
        batch = BatchColumns(rows)
    archived = await ensure_partitions(conn, batch)
    await conn.execute(EXTEND_RUNNING, _last_second(batch))  # before the transaction: see rollups.LOCK_RUNNING
    if archived:
        return await _write_around_archived(conn, rows, archived, citus)
    try:
        async with conn.transaction():
            await lock_running(conn, _last_second(batch))
            return BatchResult(written=await _copy_new(conn, batch, citus))
    except (asyncpg.UniqueViolationError, TillSalesSeen):
        pass  # some of them are stored already: again, skipping those
    except asyncpg.InternalServerError:
        if not citus:
            raise
    except PERMANENT_ERRORS:
        return await write_row_by_row(conn, rows, insert_rows, row_json, _last_second(batch))
    try:
        async with conn.transaction():
            await lock_running(conn, _last_second(batch))
            inserted, lost = await insert_rows(conn, rows, batch_key_checks=not citus, citus=citus)
            filed = len(await file_dead_letters(conn, lost, row_json))
        return BatchResult(written=inserted, duplicates=len(rows) - inserted - filed, dead=filed)
    except PERMANENT_ERRORS:
        return await write_row_by_row(conn, rows, insert_rows, row_json, _last_second(batch))


async def _write_around_archived(
    conn: asyncpg.Connection, rows: list[Row], archived: set[dt.date], citus: bool
) -> BatchResult:
    """A batch with sales of archived months (a till that was offline for longer than the
    retention, or a batch delivered again after its month was archived): those go to
    dead_letter with the reason, the others are written as usual."""
    kept, refused = split_archived(rows, archived)
    async with conn.transaction():
        filed = len(await file_dead_letters(conn, refused, row_json))
    result = await write_batch(conn, kept, citus=citus) if kept else BatchResult()
    result.dead += filed
    result.duplicates += len(refused) - filed
    return result


# Writes rows inside the caller's transaction: (inserted, [(row not stored, reason)]).
InsertRows = Callable[[asyncpg.Connection, list], Awaitable[tuple[int, list[tuple[tuple, str]]]]]


async def write_row_by_row(
    conn: asyncpg.Connection, rows: list[tuple], insert: InsertRows, as_json: Callable[[tuple], dict], last_second: int
) -> BatchResult:
    """The batch broke a constraint: find the rows that cannot be written by bisection
    (sales with insert_rows, returns with worker.return_writer.insert_returns).

    Halves are tried in savepoints and only a failing half is split again, so k bad rows in
    a batch of n cost about 2k·log2(n/k) attempts instead of n (one poisoned row no longer
    makes the whole batch crawl row by row while live traffic piles up behind it).
    """
    result = BatchResult()
    async with conn.transaction():
        await lock_running(conn, last_second)
        dead: list[tuple[tuple, str]] = []
        middle = len(rows) // 2
        for part in (rows[:middle], rows[middle:]) if len(rows) > 1 else (rows,):
            await _write_part(conn, part, insert, result, dead)
        result.dead_rows = await file_dead_letters(conn, dead, as_json)
        result.dead = len(result.dead_rows)
        result.duplicates += len(dead) - result.dead
    return result


async def _write_part(
    conn: asyncpg.Connection, rows: list[tuple], insert: InsertRows, result: BatchResult, dead: list[tuple[tuple, str]]
) -> None:
    if not rows:
        return
    try:
        async with conn.transaction():  # a savepoint
            inserted, lost = await insert(conn, rows)
    except PERMANENT_ERRORS as exc:
        if len(rows) == 1:
            dead.append((rows[0], _reason(exc)))
            return
        middle = len(rows) // 2
        await _write_part(conn, rows[:middle], insert, result, dead)
        await _write_part(conn, rows[middle:], insert, result, dead)
        return
    dead.extend(lost)
    result.written += inserted
    result.duplicates += len(rows) - inserted - len(lost)


async def file_dead_letters(
    conn: asyncpg.Connection, dead: list[tuple[tuple, str]], as_json: Callable[[tuple], dict]
) -> list[tuple]:
    """File the rows (rare: one statement each); returns those that were not filed already."""
    filed = []
    for row, reason in dead:
        if await conn.fetchval(INSERT_DEAD_LETTER, row[0], as_json(row), reason) is not None:
            filed.append(row)
    return filed
