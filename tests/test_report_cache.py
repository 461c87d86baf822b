"""Reports answered from memory: never older than the request, dropped when the data changes."""
from __future__ import annotations

import asyncio

from api import reports
from api.appkeys import REPORT_CACHE
from api.report_cache import ReportCache
from tests.conftest import CITUS, edit_by_hand


async def _top_items(client, cnt=3):
    response = await client.get(f"/items/top/?cnt={cnt}")
    assert response.status == 200, await response.text()
    return await response.json()


async def _set_units_unannounced(db, item_id: int, units: int) -> None:
    """Change a rollup with its NOTIFY trigger off: only a cache would keep the old value.
    (On Citus there is no such trigger: the writers notify by themselves.)"""
    async with db.transaction():
        if not CITUS:
            await db.execute("ALTER TABLE item_totals DISABLE TRIGGER item_totals_changed")
        await db.execute("UPDATE item_totals SET units = $2 WHERE item_id = $1", item_id, units)
        if not CITUS:
            await db.execute("ALTER TABLE item_totals ENABLE ALWAYS TRIGGER item_totals_changed")


async def test_a_report_is_answered_from_memory_until_the_rollup_changes(client, db, seed):
    await seed(items=3, stores=2, sales=300)
    first = await _top_items(client)
    await _set_units_unannounced(db, first[-1]["id"], 1_000_000)
    assert await _top_items(client) == first  # from memory: nothing said the data changed

    await edit_by_hand(db, "UPDATE item_totals SET units = units WHERE item_id = $1", first[0]["id"])  # announced
    fresh = await _top_items(client)
    assert fresh[0] == {**first[-1], "sales_amount": 1_000_000}


async def test_every_sale_drained_before_a_request_is_in_its_answer(client, db, seed, drain):
    await seed(items=3, stores=2)
    for round_ in range(1, 16):
        response = await client.post("/sales/", json={"item_id": 2, "store_id": 1, "quantity": 2})
        assert response.status == 202
        await drain()
        # no sleep: the answer must already count the sale the worker just committed
        answer = await _top_items(client)
        assert [(a["id"], a["sales_amount"]) for a in answer] == [(2, 2 * round_)]


async def test_catalogue_changes_reach_cached_reports(client, db, seed):
    await seed(items=3, stores=2, sales=300)
    first = await _top_items(client)
    await edit_by_hand(db, "UPDATE item SET name = 'renamed' WHERE id = $1", first[0]["id"])
    assert (await _top_items(client))[0]["name"] == "renamed"


async def test_concurrent_requests_share_one_query(client, seed, monkeypatch):
    await seed(items=3, stores=2, sales=300)
    calls = 0
    real = reports.top_items

    async def counted(conn, cnt):
        nonlocal calls
        calls += 1
        return await real(conn, cnt)

    monkeypatch.setattr(reports, "top_items", counted)
    answers = await asyncio.gather(*(_top_items(client, cnt=2) for _ in range(20)))
    assert all(a == answers[0] for a in answers) and len(answers[0]) == 2
    assert calls == 1


async def test_without_its_listening_connection_nothing_is_served_from_memory(client, db, seed):
    await seed(items=3, stores=2, sales=300)
    first = await _top_items(client)
    cache = client.app[REPORT_CACHE]
    listener_pid = cache._conn.get_server_pid()
    await db.execute("SELECT pg_terminate_backend($1::int)", listener_pid)
    await _set_units_unannounced(db, first[-1]["id"], 2_000_000)
    for _ in range(50):  # until the API notices the connection is gone, or a sync fails
        if (await _top_items(client))[0]["sales_amount"] == 2_000_000:
            break
        await asyncio.sleep(0.02)
    assert (await _top_items(client))[0] == {**first[-1], "sales_amount": 2_000_000}
    # it listens again by itself, and caches again
    for _ in range(100):
        if cache._conn is not None and cache._conn.get_server_pid() != listener_pid:
            break
        await asyncio.sleep(0.05)
    assert cache._conn is not None
    cached = await _top_items(client)
    await _set_units_unannounced(db, first[-1]["id"], 3_000_000)
    assert await _top_items(client) == cached


async def test_memory_is_bounded_by_rows(database_url):
    cache = ReportCache(database_url, max_rows=5)
    await cache.start()
    calls: list[str] = []

    def rows(key: str, count: int):
        async def compute():
            calls.append(key)
            return list(range(count))
        return compute

    try:
        for key, count in [("a", 3), ("a", 3), ("b", 2), ("b", 2)]:
            assert await cache.get(key, rows(key, count)) == list(range(count))
        assert calls == ["a", "b"]  # 5 rows: both kept
        await cache.get("c", rows("c", 1))  # 6 rows: the oldest result goes
        await cache.get("b", rows("b", 2))
        await cache.get("a", rows("a", 3))
        assert calls == ["a", "b", "c", "a"]
        await cache.get("huge", rows("huge", 6))
        await cache.get("huge", rows("huge", 6))  # larger than the whole cache: never kept
        assert calls[-2:] == ["huge", "huge"]
    finally:
        await cache.close()
