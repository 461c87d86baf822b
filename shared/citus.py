"""The same schema, distributed, when DATABASE_URL names a Citus coordinator.

shared.migrate runs this after the migrations whenever the database has the citus extension.
What it makes of the tables (each step is skipped when already done, so it is safe to run at
every start and upgrades a database that held data before):

- `store`, `item` and `report_settings` become reference tables (a copy on every node), so that
  the foreign keys of sales and the rollups' time zone are checked and read on the node itself;
- `sales` (partitioned by month: every partition, present and future, is distributed the same
  way), `sale_keys`, `till_progress`, `returns` (by the store that took it back) and the per-store rollups
  (`store_monthly`, `daily_totals`, `store_item_daily`, `store_hourly`, `store_running` and
  `store_running_late`) are distributed by `store_id` and co-located: a store's sales, keys and
  rollup rows live in the same shard group, and a batch touches each store's rows on one node;
- `item_totals`, `item_running` and `item_running_late` are distributed by their own key,
  `item_id`: a row per item (and day) for the whole chain, so that "top items" reads one row
  per item, not one per item and store; `chain_deltas` (what batches add to them until a fold
  moves it in, shared.chain_fold) with them, so that a report joins its rows on each node;
- `sale_returned` by `sale_id`, and the chain's hours (`hourly_totals`) by `day`;
- the `_archived` twins follow their rollups;
- `dead_letter`, `api_key` and `schema_migrations` stay ordinary tables on the coordinator.

Citus refuses to distribute a table with triggers, and a trigger on a shard would fire on a
worker node, where nobody LISTENs: the notification triggers go, and the code that writes
these tables sends the NOTIFYs itself (shared.rollups, shared.seeding, worker.writer).
"""

from __future__ import annotations

import logging

import asyncpg

log = logging.getLogger(__name__)

REFERENCE_TABLES = ("store", "item", "item_price", "report_settings")
# (table, distribution column, co-located with)
DISTRIBUTED_TABLES = (
    ("sales", "store_id", "none"),
    ("sale_keys", "store_id", "sales"),
    ("till_progress", "store_id", "sales"),
    ("store_monthly", "store_id", "sales"),
    ("daily_totals", "store_id", "sales"),
    ("store_monthly_archived", "store_id", "sales"),
    ("daily_totals_archived", "store_id", "sales"),
    ("store_item_daily", "store_id", "sales"),
    ("store_item_daily_archived", "store_id", "sales"),
    ("store_running", "store_id", "sales"),
    ("returns", "store_id", "sales"),
    ("store_hourly", "store_id", "sales"),
    ("store_hourly_archived", "store_id", "sales"),
    ("sale_returned", "sale_id", "none"),
    ("hourly_totals", "day", "none"),
    ("hourly_totals_archived", "day", "hourly_totals"),
    ("item_totals", "item_id", "none"),
    ("item_totals_archived", "item_id", "item_totals"),
    ("item_running", "item_id", "item_totals"),
    ("store_running_late", "store_id", "sales"),
    ("item_running_late", "item_id", "item_totals"),
    ("chain_deltas", "item_id", "item_totals"),
)
NOTIFY_TRIGGERS = (
    ("item", "item_changed"),
    ("store", "store_changed"),
    ("store_monthly", "store_monthly_changed"),
    ("item_totals", "item_totals_changed"),
    ("daily_totals", "daily_totals_changed"),
    ("store_running", "store_running_changed"),
    ("item_running", "item_running_changed"),
    ("store_item_daily", "store_item_daily_changed"),
    ("hourly_totals", "hourly_totals_changed"),
    ("store_hourly", "store_hourly_changed"),
    ("store_running_late", "store_running_late_changed"),
    ("item_running_late", "item_running_late_changed"),
    ("chain_deltas", "chain_deltas_changed"),
)


async def has_citus(conn: asyncpg.Connection) -> bool:
    return await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')")


async def distributed(conn: asyncpg.Connection) -> dict[str, str]:
    """Table -> Citus partition method ('h' hash-distributed, 'n' reference) of the tables here."""
    rows = await conn.fetch("SELECT logicalrelid::regclass::text AS name, partmethod::text FROM pg_dist_partition")
    return {r["name"]: r["partmethod"] for r in rows}


async def distribute(conn: asyncpg.Connection) -> list[str]:
    """Distribute whatever is not yet; the tables done now. Inside the migration lock."""
    done = await distributed(conn)
    todo = [t for t in REFERENCE_TABLES if t not in done] + [t for t, _, _ in DISTRIBUTED_TABLES if t not in done]
    if not todo:
        return []
    for table, trigger in NOTIFY_TRIGGERS:
        await conn.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {table}")
    # A local table with a foreign key to a new reference table would be turned into a "Citus
    # local table" first (which a partitioned table with checks cannot be): the foreign keys
    # go while the tables are distributed, and come back, validated, afterwards.
    foreign_keys = await _foreign_keys(conn, [t for t, _, _ in DISTRIBUTED_TABLES if t not in done])
    for table, name, _ in foreign_keys:
        await conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    for table in REFERENCE_TABLES:
        if table not in done:
            await conn.execute("SELECT create_reference_table($1)", table)
            await _drop_local_copy(conn, table)
    for table, column, colocate_with in DISTRIBUTED_TABLES:
        if table not in done:
            await conn.execute(
                "SELECT create_distributed_table($1, $2, colocate_with => $3)", table, column, colocate_with
            )
            await _drop_local_copy(conn, table)
    for table, name, definition in foreign_keys:
        await conn.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
    log.info("distributed with Citus: %s", ", ".join(todo))
    return todo


async def _foreign_keys(conn: asyncpg.Connection, tables: list[str]) -> list[tuple[str, str, str]]:
    """(table, name, definition) of the foreign keys declared on `tables` (not their partitions' copies)."""
    rows = await conn.fetch(
        "SELECT conrelid::regclass::text AS table, conname, pg_get_constraintdef(oid) AS definition "
        "FROM pg_constraint WHERE contype = 'f' AND conparentid = 0 AND conrelid = ANY($1::regclass[]) "
        "ORDER BY 1, 2",
        tables,
    )
    return [(r["table"], r["conname"], r["definition"]) for r in rows]


async def _drop_local_copy(conn: asyncpg.Connection, table: str) -> None:
    """A table that held rows keeps them, invisible, in the coordinator's own files until this."""
    await conn.execute("SELECT truncate_local_data_after_distributing_table($1)", table)
