"""The restore drill (issue 23): pgBackRest archiving and a full backup taken under load, a
disaster, and a point-in-time restore into a fresh server that the reconciliation tools check.

A throwaway PostgreSQL archives its WAL with the shipped configuration (deploy/pgbackrest/, only
paths, port and archive_timeout changed) into a repository in a temporary directory. The real
API and worker take sales while a full backup runs; once every accepted sale is stored the
database's clock gives the point T; more sales are posted and stored; then `/clear/` erases
everything. pgBackRest restores to T into a fresh data directory on another port, and:
- every sale accepted before T is there exactly once, under its key, and nothing else (the
  fault audit), the rollups equal a recount (`shared.reconcile`: drift 0), and the tills'
  ledgers agree (`pos_client.reconcile.database_check`: nothing missing, no problem);
- the sales accepted after T are not there, and the tills' ledgers name exactly those;
- after the documented repair steps (bump `sales_id_seq`, restart the stack on the restored
  database), re-posting those sales from the ledgers with their own keys stores each once.

    FAULT_RESULTS=/tmp/fault.jsonl python -m pytest -m slow tests/fault/test_restore_drill.py -s
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import asyncpg
import pytest

from pos_client import reconcile as till_reconcile
from pos_client.spool import SENT, SpooledSale
from shared import reconcile
from tests.recount import NO_DRIFT

from .backrest import ArchivingPgServer, Backrest, RestoredPgServer
from .conftest import KEYS, STORES, LoadResult, Stack, audit, create_seeded_database, run_load, wait_stored

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ARCHIVE_TIMEOUT = 10  # seconds; production's is 60 (deploy/pgbackrest/postgresql.conf)
BEFORE, AFTER = 3000, 1000  # sales posted before and after the point in time
RATE = 150  # sales per second
# Added to sales_id_seq after a restore (docs/backups.md): past every id handed out after T.
ID_JUMP = 10**12


@pytest.fixture
def drill():
    """pgBackRest repository + a PostgreSQL archiving into it (stanza created, checked)."""
    backrest = Backrest()
    pg = ArchivingPgServer(backrest, archive_timeout=ARCHIVE_TIMEOUT)
    backrest.write_config(pg)
    restored: list[RestoredPgServer] = []
    try:
        pg.start()
        backrest.run("stanza-create")
        backrest.run("check")
        yield backrest, pg, restored
    finally:
        for server in restored:
            server.destroy()
        pg.destroy()
        backrest.destroy()


@pytest.fixture
async def database_url(drill):
    """Overrides the fault suite's: a migrated, seeded database on the archiving server (so the
    suite's make_stack runs the product on it)."""
    _, pg, _ = drill
    return pg.url(await create_seeded_database(pg, "drill"))


def _ledgers(load: LoadResult, ids: dict[str, int] | None = None) -> list[till_reconcile.Ledger]:
    """The tills' ledgers of a run_load: per store, every sale it was answered 2xx for."""
    by_store: dict[int, list[SpooledSale]] = {}
    for key, sale_id in (ids or load.accepted).items():
        n = int(key.rsplit("-", 1)[1])
        sale = SpooledSale(
            seq=n,
            idempotency_key=key,
            item_id=load.items_of[key],
            quantity=1 + n % 3,  # as run_load posts it
            sale_time="",
            state=SENT,
            server_id=sale_id,
        )
        by_store.setdefault(1 + n % STORES, []).append(sale)
    return [till_reconcile.Ledger(store, sales) for store, sales in sorted(by_store.items())]


async def _wait_archived(url: str, wal_file: str, timeout: float) -> float:
    """Seconds until the archiver reports `wal_file` (or a later one) archived."""
    started = time.monotonic()
    conn = await asyncpg.connect(url, timeout=30)
    try:
        while time.monotonic() - started < timeout:
            last = await conn.fetchval("SELECT last_archived_wal FROM pg_stat_archiver")
            if last is not None and last >= wal_file:
                return time.monotonic() - started
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    raise AssertionError(f"WAL {wal_file} not archived within {timeout} s")


async def _wait_promoted(url: str, timeout: float) -> None:
    """Until the restored server accepts connections and has left recovery (promoted at T)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            conn = await asyncpg.connect(url, timeout=5)
            try:
                if not await conn.fetchval("SELECT pg_is_in_recovery()"):
                    return
                last = "in recovery"
            finally:
                await conn.close()
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            last = exc
        await asyncio.sleep(0.05)
    raise AssertionError(f"restored server not promoted within {timeout} s ({last!r})")


async def test_point_in_time_restore_finds_every_sale_acknowledged_before_it(
    drill, database_url, make_stack, redis_server, redis_client, record
):
    backrest, pg, restored = drill
    database = database_url.rsplit("/", 1)[1]

    # 1. The product takes sales while a full backup is taken online.
    stack = make_stack()
    await stack.start_api()
    await stack.start_worker(redis_client)
    loading = asyncio.create_task(run_load(stack.base_url, count=BEFORE, rate=RATE, prefix="before"))
    await asyncio.sleep(3)
    started = time.monotonic()
    await asyncio.to_thread(backrest.run, "backup", "--type=full")
    backup_s = time.monotonic() - started
    before = await loading
    assert len(before.accepted) == BEFORE, before.summary()
    backup = backrest.info()["backup"][-1]
    assert backup["type"] == "full" and not backup["error"], backup
    await wait_stored(database_url, before.accepted.values(), timeout=120)

    # 2. T: every sale accepted so far is committed; the database's clock says when.
    conn = await asyncpg.connect(database_url, timeout=30)
    try:
        target = await conn.fetchval(
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'"
        )
        stored_at_t = await conn.fetchval("SELECT count(*) FROM sales")
    finally:
        await conn.close()
    assert stored_at_t == BEFORE

    # 3. More sales, all stored; then the disaster: /clear/ erases every sale, item and store.
    await asyncio.sleep(0.05)  # commits after T carry a later timestamp, whatever the clock's grain
    after = await run_load(stack.base_url, count=AFTER, rate=RATE, prefix="after")
    assert len(after.accepted) == AFTER, after.summary()
    await wait_stored(database_url, after.accepted.values(), timeout=120)
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
        session.get(
            stack.base_url + "/clear/", headers={"Authorization": f"Bearer {stack.env['ADMIN_TOKEN']}"}
        ) as response,
    ):
        assert response.status == 200, await response.text()
    conn = await asyncpg.connect(database_url, timeout=30)
    try:
        assert await conn.fetchval("SELECT count(*) FROM sales") == 0
        # the WAL segment holding the disaster's commit: it reaches the repository within
        # archive_timeout with no help (no pg_switch_wal), which is what the recovery point rests on
        disaster_wal = await conn.fetchval("SELECT pg_walfile_name(pg_current_wal_lsn())")
    finally:
        await conn.close()
    archived_s = await _wait_archived(pg.url(), disaster_wal, timeout=ARCHIVE_TIMEOUT + 60)
    stack.cleanup()  # the stack of the lost database is stopped before the restore

    # 4. Restore to T into a fresh data directory on another port, and start it.
    server = RestoredPgServer()
    restored.append(server)
    started = time.monotonic()
    backrest.run(
        "restore",
        f"--pg1-path={server.data}",
        "--type=time",
        f"--target={target}",
        "--target-action=promote",
        "--archive-mode=off",  # a drill must not push into the production repository
    )
    restore_command_s = time.monotonic() - started
    server.start()
    started_s = time.monotonic() - started
    restored_url = server.url(database)
    await _wait_promoted(restored_url, timeout=120)
    restore_s = time.monotonic() - started

    # 5. Every sale acknowledged before T is there once, nothing after T is; rollups exact.
    found = await audit(restored_url, before)  # also: no row that is not one of these
    conn = await asyncpg.connect(restored_url, timeout=30)
    try:
        drift = await reconcile.check(conn)
        timeline = await conn.fetchval("SELECT timeline_id FROM pg_control_checkpoint()")
        ids_before_bump = await conn.fetchval("SELECT last_value FROM sales_id_seq")
    finally:
        await conn.close()
    assert drift == NO_DRIFT, drift
    assert await reconcile.run(restored_url, do_repair=False) == 0  # python -m shared.reconcile
    kept = await till_reconcile.database_check(restored_url, _ledgers(before))
    assert kept["problems"] == [] and kept["missing"] == 0 and kept["rows"] == BEFORE, kept
    lost = await till_reconcile.database_check(restored_url, _ledgers(after))
    assert lost["rows"] == 0 and lost["missing"] == AFTER, lost  # the tills' ledgers name them all

    # 6. The documented repair: ids past every one handed out, the stack restarted on the
    # restored database, the lost sales re-posted from the ledgers under their own keys.
    conn = await asyncpg.connect(restored_url, timeout=30)
    try:
        await conn.execute("SELECT setval('sales_id_seq', (SELECT last_value FROM sales_id_seq) + $1)", ID_JUMP)
    finally:
        await conn.close()
    # The lost sales' idempotency keys must be gone from Redis, or a re-post is answered with
    # its lost id and queues nothing (/clear/ dropped them already; any other disaster does not).
    await redis_client.delete(*(KEYS.idempotency(1 + int(k.rsplit("-", 1)[1]) % STORES, k) for k in after.accepted))
    log_dir = stack.log_dir / "restored"
    log_dir.mkdir()
    resumed = Stack(restored_url, redis_server, log_dir)
    try:
        await resumed.start_api()
        await resumed.start_worker(redis_client)
        resent = await run_load(
            resumed.base_url, count=AFTER, rate=RATE, prefix="after", item_for=lambda n: after.items_of[f"after-{n}"]
        )
        assert len(resent.accepted) == AFTER, resent.summary()
        assert min(resent.accepted.values()) > max(after.accepted.values()), "an id handed out twice"
        await wait_stored(restored_url, resent.accepted.values(), timeout=120)
        both = LoadResult(
            accepted={**before.accepted, **resent.accepted}, items_of={**before.items_of, **after.items_of}
        )
        for load in (before, resent):
            for key, ids in load.answers.items():
                both.answers[key] |= ids
        total = await audit(restored_url, both)
        whole = await till_reconcile.database_check(restored_url, _ledgers(both))
        assert whole["problems"] == [] and whole["missing"] == 0 and whole["rows"] == BEFORE + AFTER, whole
    except BaseException:
        print(f"\n===== logs of the stack on the restored database\n{resumed.logs()}")
        raise
    finally:
        resumed.cleanup()

    info = backrest.info()
    repo_bytes = sum(p.stat().st_size for p in backrest.repo.rglob("*") if p.is_file())
    record(
        posted_before_t=before.posted,
        accepted_before_t=len(before.accepted),
        posted_after_t=after.posted,
        accepted_after_t=len(after.accepted),
        target=target,
        backup_s=round(backup_s, 2),
        backup_db_mb=round(backup["info"]["size"] / 2**20, 1),
        backup_repo_mb=round(backup["info"]["repository"]["size"] / 2**20, 1),
        repo_total_mb=round(repo_bytes / 2**20, 1),
        archive_timeout_s=ARCHIVE_TIMEOUT,
        disaster_wal_archived_after_s=round(archived_s, 1),
        restore_command_s=round(restore_command_s, 2),
        restore_until_started_s=round(started_s, 2),
        restore_until_promoted_s=round(restore_s, 2),
        restored_timeline=timeline,
        restored_sales=found["stored"],
        restored_drift=sum(drift.values()),
        ledger_sales_missing_after_restore=lost["missing"],
        id_seq_at_restore=ids_before_bump,
        max_id_answered_after_t=max(after.accepted.values()),
        resent_and_stored=total["stored"] - found["stored"],
        archive=info["archive"][0]["min"] + ".." + info["archive"][0]["max"],
    )
