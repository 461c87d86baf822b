"""Folding chain_deltas into the chain-wide rollups, one session at a time (migration 012).

Workers insert each batch's sums by local day, hour and item into chain_deltas; fold() moves
every delta it sees into item_totals, item_running (or item_running_late) and hourly_totals,
with the rules the batches' upserts followed (shared.rollups), in one transaction. Whoever
folds holds an advisory lock; a worker that finds it taken goes on at once (the holder, or the
next fold, takes its deltas too), so no worker ever waits for another's chain-wide rows.
Reports add the deltas not folded yet in the same statement: a fold changes no answer, and
says so to the report cache (it announces, and sends nothing).

`Folds` is the worker's side: a fold after committed batches at most every `interval_ms`, and
one when the queue is drained. A fold that fails loses nothing: the deltas stay until one
succeeds (retried after the interval).
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg

from shared import rollups

log = logging.getLogger(__name__)

FOLD_LOCK = 370223  # beside rollups.RUNNING_LOCK
# After a committed batch, a fold at most this often (a worker setting: WORKER_FOLD_INTERVAL_MS).
FOLD_INTERVAL_MS = 100
# Inserts do not reuse the space of folded rows before a vacuum, and autovacuum comes at most
# once a naptime (a minute): without this the table (which reports scan) grew by every delta
# of that minute.
VACUUM_EVERY_SECONDS = 2.0
MAX_PAUSE_SECONDS = 5.0  # between failed folds (PostgreSQL away), as between a batch's retries

# Deltas that running_through reaches: all of them (a batch writes its deltas only once the
# running rows reach its last day, under the same lock, and running_through never goes back);
# the bound keeps one that did not (a hand-made row) for later instead of losing it in an empty
# generate_series.
_MOVE = (
    f"DELETE FROM {rollups.DELTAS.table} WHERE day <= (SELECT running_through FROM report_settings) "
    f"RETURNING day, hour, item_id, {', '.join(rollups.MEASURES)}"
)
# The moved deltas as the rollups' builders read a batch: a local time (their day and hour is
# all the chain-wide rollups cut), an item and sums.
_MOVED_LOCAL = (
    f"SELECT day + make_interval(hours => hour) AS local_time, item_id, {', '.join(rollups.MEASURES)} FROM moved"
)


def _fold_sql() -> str:
    rows = ("SELECT * FROM moved_local", rollups.MEASURES)
    item_running = rollups.RUNNING_TABLE["item_running"]
    upserts = [rollups.upsert_sums_sql(rollups.ROLLUP[table], rows) for table in ("item_totals", "hourly_totals")]
    upserts += [rollups.upsert_running_sql(item_running, rows), rollups.upsert_late_sql(item_running, rows)]
    folds = "".join(f", fold_{i} AS ({upsert})" for i, upsert in enumerate(upserts))
    return f"WITH moved AS ({_MOVE}), moved_local AS ({_MOVED_LOCAL}){folds} SELECT count(*) FROM moved"


# One statement: the deltas go and the rollups get them at once (data-modifying CTEs each see
# the DELETE's rows, and the statement its own snapshot).
FOLD = _fold_sql()
TRY_LOCK = f"SELECT pg_try_advisory_xact_lock({FOLD_LOCK})"
WAIT_LOCK = f"SELECT pg_advisory_xact_lock({FOLD_LOCK})"
# A fold changes no report's answer: the rollups' and chain_deltas' triggers stay quiet.
ANNOUNCED = "SELECT set_config('sales.reports_announced', 'on', true)"
LAST_DAY = f"SELECT max(day) FROM {rollups.DELTAS.table}"
ANY_DELTAS = f"SELECT EXISTS (SELECT 1 FROM {rollups.DELTAS.table})"  # not SELECT FROM: Citus refuses it
VACUUM = f"VACUUM (SKIP_LOCKED) {rollups.DELTAS.table}"


async def fold(conn: asyncpg.Connection, *, wait: bool = False) -> int:
    """Move every visible delta into the chain-wide rollups (one transaction); how many delta
    rows. 0 at once when another session is folding, unless `wait`."""
    last_day = await conn.fetchval(LAST_DAY)
    if last_day is None:
        return 0
    # As a batch does before its transaction (rollups.EXTEND_RUNNING): the running rows reach
    # the deltas' last day (they always do but after a hand-made delta).
    await conn.execute(rollups.EXTEND_RUNNING_TO_DAY, last_day)
    async with conn.transaction():
        if wait:
            await conn.execute(WAIT_LOCK)
        elif not await conn.fetchval(TRY_LOCK):
            return 0
        await conn.execute(rollups.LOCK_RUNNING)  # as writers: no extension or rebuild meanwhile
        await conn.execute(ANNOUNCED)
        return await conn.fetchval(FOLD)


class Folds:
    """A worker's folds: after committed batches, in the background (the next batch is written
    meanwhile, on the pool's other connection), at most every `interval_ms` but always once after
    the last commit (a quiet queue leaves no deltas behind for long), and at the end of a drain."""

    def __init__(self, pool: asyncpg.Pool, interval_ms: int = FOLD_INTERVAL_MS):
        self._pool = pool
        self._interval_s = interval_ms / 1000
        self._pause_s = self._interval_s  # between folds; longer after failures
        self._last_fold = 0.0
        self._last_vacuum = time.monotonic()
        self._behind = False  # a commit since the last fold began (or a fold found the lock taken)
        self._running: asyncio.Task | None = None

    async def after_commit(self) -> None:
        self._behind = True
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._fold_while_behind(), name="chain-fold")

    async def drain(self) -> None:
        """Leave no delta committed so far (waits for a fold in progress, here or elsewhere)."""
        await self._fold(wait=True)

    async def _fold_while_behind(self) -> None:
        while self._behind:
            await asyncio.sleep(self._last_fold + self._pause_s - time.monotonic())
            if self._pool.is_closing():  # the worker is stopping: the deltas wait for the next one
                return
            self._behind = False
            self._last_fold = time.monotonic()
            await self._fold(wait=False)

    async def _fold(self, wait: bool) -> None:
        try:
            async with self._pool.acquire() as conn:
                folded = await fold(conn, wait=wait)
                if folded:
                    if time.monotonic() - self._last_vacuum >= VACUUM_EVERY_SECONDS:
                        self._last_vacuum = time.monotonic()
                        await conn.execute(VACUUM)
                elif await conn.fetchval(ANY_DELTAS):  # another session is folding: perhaps not ours
                    self._behind = True
            self._pause_s = self._interval_s
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            self._behind = True
            self._pause_s = min(MAX_PAUSE_SECONDS, self._pause_s * 2)
            log.warning("folding chain_deltas failed (%s); the deltas stay, next fold in %.1f s", exc, self._pause_s)
