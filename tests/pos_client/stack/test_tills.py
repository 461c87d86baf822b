"""Tills in their own processes against the whole product in its own processes: the API
stopped for 20 s, a till killed in the middle of a flush, an unknown item, a revoked key. The
tills take back about 3% of their sales a few baskets later (offline too). Each ends with the
audit: every sale a till recorded is in `sales` exactly once, under its key and with the id the
till was answered, every return in `returns` likewise, naming its sale's id, and the reports'
totals (net of the returns) equal the tills' ledgers."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import subprocess
import sys
import time

import asyncpg
import pytest

from pos_client.reconcile import (
    Ledger,
    Reports,
    database_check,
    differences,
    expected_totals,
)
from pos_client.spool import PENDING, REFUSED
from pos_client.transport import TransportError
from shared import keys, rollups
from tests.fault.conftest import ROOT, metric_value, wait_queue_empty
from tests.recount import NO_DRIFT

pytestmark = pytest.mark.slow

ADMIN = "fault-admin-token-0123"  # tests/fault/conftest.py's ADMIN_TOKEN


async def audit(stack, redis_client, database_url, tills, owner_key=ADMIN, before=None) -> dict:
    """Ledgers (spools) = what the tills echoed = the database = the reports."""
    await wait_queue_empty(redis_client)
    ledgers = []
    for till in tills:
        ledger = till_ledger(till)
        ledgers.append(ledger)
        lost = set(till.promised) - {s.idempotency_key for s in ledger.sales}
        assert not lost, f"{till.name}: {len(lost)} sales recorded (record returned) are not in its spool"
        assert not [s for s in ledger.sales if s.state == PENDING], f"{till.name}: sales left pending"
        sale_keys = {s.seq: s.idempotency_key for s in ledger.sales}
        kept = {r.idempotency_key: (sale_keys[r.sale_seq], r.quantity) for r in ledger.returns}
        lost_returns = {key: promised for key, promised in till.promised_returns.items() if kept.get(key) != promised}
        assert not lost_returns, f"{till.name}: returns recorded (record_return returned) not in its spool as made"
        assert not [r for r in ledger.returns if r.state == PENDING], f"{till.name}: returns left pending"
    check = await database_check(database_url, ledgers)
    assert check["problems"] == [] and check["missing"] == 0 and check["returns_missing"] == 0, check
    assert check["rows"] == check["sent"] and check["returns_rows"] == check["returns_sent"]
    conn = await asyncpg.connect(database_url)
    try:
        total = await conn.fetchval("SELECT count(*) FROM sales")
        returns = await conn.fetchval("SELECT count(*) FROM returns")
        drift = await rollups.drift(conn)
    finally:
        await conn.close()
    assert total == check["sent"], "rows in sales that no till recorded"
    assert returns == check["returns_sent"], "rows in returns that no till recorded"
    assert drift == NO_DRIFT
    reports = Reports(stack.base_url, owner_key, allow_plain_http=True)
    try:
        income, units = expected_totals(ledgers, reports.prices(), dt.UTC)
        after = reports.snapshot({(year, month) for _, year, month in income})
        diff = differences(before or {"income": {}, "units": {}}, after, income, units)
    finally:
        reports.close()
    assert diff == {"stores": {}, "items": {}}, diff
    return {
        "stored": total,
        "refused": sum(len([s for s in ledger.sales if s.state == REFUSED]) for ledger in ledgers),
        "returns_stored": returns,
        "returns_set_aside": sum(len([r for r in ledger.returns if r.state == REFUSED]) for ledger in ledgers),
    }


def till_ledger(till) -> Ledger:
    spool = till.spool()
    try:
        return Ledger(till.plan.store_id, spool.ledger(), spool.returns_ledger())
    finally:
        spool.close()


async def spool_status(path: str) -> subprocess.CompletedProcess:
    """`python -m pos_client status --spool PATH`, as whoever looks after the till would run it."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "pos_client", "status", "--spool", path],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )


async def wait_health(stack, timeout: float = 90) -> None:
    """Stack.wait_api asks /openapi.json, which needs a key with AUTH_REQUIRED: /health does not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert stack.api.alive(), stack.logs()
        with contextlib.suppress(TransportError):
            reports = Reports(stack.base_url)
            try:
                if reports.http.request("GET", "/health").status == 200 and len(stack.api.children()) >= 2:
                    await asyncio.sleep(0.3)  # let both processes bind
                    return
            finally:
                reports.close()
        await asyncio.sleep(0.2)
    raise AssertionError(f"API not healthy in {timeout} s\n{stack.logs()}")


async def start(make_stack, redis_client, **env):
    stack = make_stack(**env)
    stack.api.start()
    await wait_health(stack)
    await stack.start_worker(redis_client)
    return stack


async def test_api_stopped_20s_while_tills_keep_selling(make_stack, redis_client, database_url, tills, record):
    stack = await start(make_stack, redis_client)
    group = [
        tills(
            f"till{n}",
            url=stack.base_url,
            store_id=1 + n,
            day_seconds=45,
            baskets_per_day=45 * 6,
            seed=n,
            flush_timeout=90,
        )
        for n in range(3)
    ]
    for till in group:
        till.start()
    await asyncio.sleep(8)
    stopped_at = time.monotonic()
    assert stack.api.sigterm() == 0
    sent_before = {t.name: t.spool().counts().sent for t in group}
    await asyncio.sleep(20)
    during = {t.name: t.spool().counts() for t in group}
    pending_during = {name: counts.pending for name, counts in during.items()}
    returns_waiting = sum(counts.returns_pending for counts in during.values())
    await stack.start_api()
    back_after = time.monotonic() - stopped_at
    for till in group:
        assert till.wait(timeout=150) == 0, till.log()
        assert till.done["flushed"] and till.done["pending"] == 0
    result = await audit(stack, redis_client, database_url, group)
    assert all(n > 0 for n in pending_during.values()), pending_during  # they did keep selling
    assert returns_waiting > 0 and result["returns_stored"] > 0  # and taking back
    record(
        sent_before_stop=sent_before,
        pending_after_20s=pending_during,
        returns_pending_after_20s=returns_waiting,
        api_back_after_s=round(back_after, 1),
        promised=sum(len(t.promised) for t in group),
        **result,
    )


async def test_till_killed_mid_flush_restarts_from_its_spool(make_stack, redis_client, database_url, tills, record):
    stack = await start(make_stack, redis_client)
    # Offline for its first 8 s (a backlog of about 1,000 sales), then catching up 50 a batch.
    till = tills(
        "killed", url=stack.base_url, store_id=4, day_seconds=20, baskets_per_day=20 * 50, offline=[[0, 8]], seed=4
    )
    calm = tills("calm", url=stack.base_url, store_id=5, day_seconds=20, baskets_per_day=20 * 5, seed=5)
    till.start(batch_size=50)
    calm.start()
    at_kill = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        spool = till.spool()
        counts = spool.counts()
        spool.close()
        if counts.sent > 0 and counts.pending > 200:
            till.sigkill()
            at_kill = counts
            break
        await asyncio.sleep(0.005)
    assert at_kill is not None, "the till was never caught in the middle of its catch-up"
    till.start()  # the same plan: it sells on for what is left of its day, from the same spool
    for t in (till, calm):
        assert t.wait(timeout=120) == 0, t.log()
    result = await audit(stack, redis_client, database_url, [till, calm])
    assert result["returns_stored"] > 0
    record(
        sent_at_kill=at_kill.sent,
        pending_at_kill=at_kill.pending,
        returns_pending_at_kill=at_kill.returns_pending,
        promised=len(till.promised),
        promised_returns=len(till.promised_returns),
        **result,
    )


async def test_unknown_item_is_set_aside_and_listed_never_retried(
    make_stack, redis_client, database_url, tills, record
):
    stack = await start(make_stack, redis_client)
    till = tills(
        "unknown",
        url=stack.base_url,
        store_id=6,
        day_seconds=12,
        baskets_per_day=12 * 8,
        unknown_item=9999,
        unknown_every=10,
        seed=6,
    )
    till.start()
    assert till.wait(timeout=90) == 0, till.log()
    result = await audit(stack, redis_client, database_url, [till])
    spool = till.spool()
    refused = spool.refused()
    spool.close()
    assert refused and {(s.item_id, s.reason) for s in refused} == {(9999, "unknown item_id 9999")}
    assert result["refused"] == len(refused) == sum(1 for item, _ in till.promised.values() if item == 9999)
    # a return of a sale set aside is set aside with it, saying so; no other is
    refused_seqs = {s.seq for s in refused}
    for ret in till_ledger(till).returns:
        if ret.sale_seq in refused_seqs:
            assert ret.reason == f"its sale (seq {ret.sale_seq}) was set aside: unknown item_id 9999", ret
        else:
            assert ret.state == "sent", ret
    listing = await spool_status(till.plan.spool)
    assert f"set aside: {len(refused)}" in listing.stdout
    rows = re.findall(r"^\s+(\d+)\s+\S+\s+9999\s+1\s+unknown item_id 9999$", listing.stdout, re.MULTILINE)
    assert sorted(map(int, rows)) == [s.seq for s in refused]
    # never retried: each 422 the API gave set at least one sale aside
    answered_422 = await metric_value(
        stack.base_url, 'http_requests_total{method="POST",route="/sales/batch/",status="422"}'
    )
    assert answered_422 is not None and answered_422 <= len(refused)
    record(answered_422=answered_422, **result)


async def test_revoked_key_stops_the_till_until_it_gets_a_new_one(
    make_stack, redis_client, database_url, tills, record
):
    conn = await asyncpg.connect(database_url)
    issued = {store: await keys.issue(conn, "pos", store, f"till of store {store}") for store in (7, 8)}
    owner = await keys.issue(conn, "owner", None, "audit")
    await conn.close()
    stack = await start(make_stack, redis_client, AUTH_REQUIRED="true")
    group = [
        tills(
            f"store{store}",
            url=stack.base_url,
            key=issued[store].key,
            store_id=store,
            day_seconds=15,
            baskets_per_day=15 * 6,
            seed=store,
            flush_timeout=15,
        )
        for store in (7, 8)
    ]
    for till in group:
        till.start()
    await asyncio.sleep(4)
    conn = await asyncpg.connect(database_url)
    await keys.revoke(conn, issued[7].prefix)
    await conn.close()
    revoked, fine = group
    assert revoked.wait(timeout=90) == 1, revoked.log()  # could not flush: sending stopped
    assert fine.wait(timeout=90) == 0, fine.log()
    assert "401" in revoked.done["stopped"] and "unknown or revoked key" in revoked.done["stopped"]
    assert "sending is stopped" in revoked.log()  # said so in its log too
    left = revoked.done["pending"]
    assert left > 0
    listing = await spool_status(revoked.plan.spool)
    assert "SENDING STOPPED" in listing.stdout and re.search(rf"pending:\s+{left}\b", listing.stdout)

    conn = await asyncpg.connect(database_url)
    # a new key for the same till (--till): its numbers go on
    new_key = await keys.issue(conn, "pos", 7, "till of store 7, new key", till_id=issued[7].till_id)
    await conn.close()
    await asyncio.sleep(5)  # the API processes load the new key within 5 s
    revoked.start(key=new_key.key, flush_timeout=60)  # its day is over: it only sends what waits
    assert revoked.wait(timeout=90) == 0, revoked.log()
    result = await audit(stack, redis_client, database_url, group, owner_key=owner.key)
    record(pending_when_stopped=left, **result)


async def test_simulator_reconciles_a_day_with_auth_on(make_stack, redis_client, database_url, tmp_path, record):
    """`python -m pos_client.simulate` end to end: keys issued with the admin token, outages,
    a till killed and restarted, reconciled with the reports and the database."""
    stack = await start(make_stack, redis_client, AUTH_REQUIRED="true")
    command = [
        sys.executable,
        "-m",
        "pos_client.simulate",
        "--url",
        stack.base_url,
        "--stores",
        "2",
        "--tills",
        "2",
        "--day-seconds",
        "15",
        "--baskets",
        "150",
        "--kill",
        "1",
        "--offline-share",
        "1",
        "--admin-token",
        ADMIN,
        "--allow-plain-http",
        "--database-url",
        database_url,
        "--spool-dir",
        str(tmp_path),
        "--seed",
        "3",
    ]
    result = await asyncio.to_thread(
        subprocess.run, command, check=False, capture_output=True, text=True, timeout=180, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Result: OK" in result.stdout
    killed = re.search(r"killed and restarted 1 tills, with ([\d,]+) sales pending", result.stdout)
    assert killed and int(killed.group(1).replace(",", "")) > 0
    assert re.search(r"database: ([\d,]+) rows for \1 sales sent, 0 missing, each stored once", result.stdout)
    returns = re.search(r"returns in the database: ([\d,]+) rows for \1 returns sent, 0 missing", result.stdout)
    assert returns and int(returns.group(1).replace(",", "")) > 0, result.stdout
    summary = result.stdout[result.stdout.index("Trading day") :]
    assert len(summary.splitlines()) <= 15  # one screen
    record(summary=summary)
