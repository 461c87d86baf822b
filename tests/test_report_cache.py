"""Reports answered from memory: never older than the request, dropped when the data changes."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import zoneinfo

import asyncpg

from api import reports
from api.app import create_app
from api.appkeys import REPORT_CACHE
from api.report_cache import CATALOGUE_ONLY, EVERYTHING, ROW_BYTES, Change, Part, ReportCache, Scope, parse_change
from shared import report_changes, rollups
from shared.db import set_codecs
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


async def test_memory_is_bounded(database_url):
    cache = ReportCache(database_url, zoneinfo.ZoneInfo("UTC"), max_bytes=5 * ROW_BYTES)  # five result rows
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


# ---------------------------------------------------------------- only what a commit touched


async def test_a_worker_commit_keeps_the_reports_it_does_not_touch(client, db, seed, drain):
    """Last month's top stores and a quiet store's page stay in memory while today's sales are
    written; today's reports count them at once."""
    await seed(items=3, stores=3, sales=600)
    today = dt.datetime.now(dt.UTC).date()
    last_month = (today.replace(day=1) - dt.timedelta(days=1)).replace(day=1)
    urls = {
        "last_month": f"/stores/top/?mm={last_month.month}&year={last_month.year}",
        "quiet_store": f"/stores/3/report/?from={today}&to={today}",
        "today": f"/reports/totals/?from={today}&to={today}",
    }
    before = {name: await (await client.get(url)).json() for name, url in urls.items()}
    # Changed behind the cache's back (no NOTIFY): only a result kept in memory still shows the old figure.
    async with db.transaction():
        if not CITUS:
            await db.execute("ALTER TABLE store_monthly DISABLE TRIGGER store_monthly_changed")
            await db.execute("ALTER TABLE daily_totals DISABLE TRIGGER daily_totals_changed")
        await db.execute("UPDATE store_monthly SET income = income + 1000000 WHERE month = $1", last_month)
        await db.execute(
            "INSERT INTO daily_totals AS d (day, store_id, income, units, sales) "
            "VALUES ($1, 3, 1000000, 0, 0) "
            "ON CONFLICT (day, store_id) DO UPDATE SET income = d.income + 1000000",
            today,
        )
        if not CITUS:
            await db.execute("ALTER TABLE store_monthly ENABLE ALWAYS TRIGGER store_monthly_changed")
            await db.execute("ALTER TABLE daily_totals ENABLE ALWAYS TRIGGER daily_totals_changed")

    response = await client.post("/sales/", json={"item_id": 1, "store_id": 1, "quantity": 4})
    assert response.status == 202
    await drain()
    after = {name: await (await client.get(url)).json() for name, url in urls.items()}
    assert after["last_month"] == before["last_month"]  # from memory: the commit was about today, store 1
    assert after["quiet_store"] == before["quiet_store"]
    assert after["today"]["units"] == before["today"]["units"] + 4  # never older than the request

    # A commit that touches store 3 today: its day in memory (api.stores_today) takes what the
    # commit's deltas say it added, with no query (the change made behind its back does not show);
    # on Citus the writers send no deltas, and the store's day is read again (it shows).
    response = await client.post("/sales/", json={"item_id": 1, "store_id": 3, "quantity": 1})
    assert response.status == 202
    await drain()
    page = await (await client.get(urls["quiet_store"])).json()
    assert page["units"] == before["quiet_store"]["units"] + 1
    price = await db.fetchval("SELECT price FROM item WHERE id = 1")
    if CITUS:
        assert page["days"][-1]["income"] >= 1_000_000
    else:
        assert page["income"] == before["quiet_store"]["income"] + price


async def test_a_period_reaching_today_keeps_its_closed_days_in_memory(client, db, seed, drain):
    """A year up to today is two parts (api.period_parts): its days before today stay in memory
    while today's sales are written, so after such a commit only today's rows are read again;
    a late sale dated in the closed days drops them."""
    await seed(items=4, stores=2, sales=800)
    today = dt.datetime.now(dt.UTC).date()
    year = f"from={today - dt.timedelta(days=364)}&to={today}"
    urls = [
        f"/items/top/?store_id=1&{year}&cnt=10",
        f"/stores/1/report/?{year}",
        f"/reports/totals/?{year}",
        f"/reports/hours/?store_id=1&{year}",
        "/reports/trend/?months=12&store_id=1",
    ]
    closed_day = await db.fetchval("SELECT max(day) FROM daily_totals WHERE store_id = 1 AND day < $1", today)
    before = [await (await client.get(url)).json() for url in urls]
    # Closed days changed behind the cache's back (no NOTIFY): only a part kept in memory hides it.
    tables = ("store_item_daily", "daily_totals", "store_running", "store_hourly", "store_monthly")
    async with db.transaction():
        if not CITUS:
            for table in tables:
                await db.execute(f"ALTER TABLE {table} DISABLE TRIGGER {table}_changed")
        await db.execute(
            "UPDATE store_item_daily SET units = units + 1000 WHERE store_id = 1 AND day = $1 AND item_id = "
            "(SELECT min(item_id) FROM store_item_daily WHERE store_id = 1 AND day = $1)",
            closed_day,
        )
        for table in ("daily_totals", "store_hourly"):
            await db.execute(f"UPDATE {table} SET income = income + 1000 WHERE store_id = 1 AND day = $1", closed_day)
        await db.execute("UPDATE store_running SET income = income + 1000 WHERE store_id = 1 AND day >= $1", closed_day)
        await db.execute(
            "UPDATE store_monthly SET income = income + 1000 WHERE store_id = 1 AND month = $1",
            closed_day.replace(day=1),
        )
        if not CITUS:
            for table in tables:
                await db.execute(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {table}_changed")

    # Today: 5 units of item 4 at store 1. Every answer counts them; none shows the hidden change.
    response = await client.post("/sales/", json={"item_id": 4, "store_id": 1, "quantity": 5})
    assert response.status == 202
    await drain()
    after = [await (await client.get(url)).json() for url in urls]
    expected = {row["id"]: row["sales_amount"] for row in before[0]}  # 4 items: all of them
    expected[4] = expected.get(4, 0) + 5
    assert {row["id"]: row["sales_amount"] for row in after[0]} == expected
    assert after[1]["units"] == before[1]["units"] + 5
    assert after[1]["days"][:-1] == [d for d in before[1]["days"] if d["day"] != today.isoformat()]
    assert after[2]["units"] == before[2]["units"] + 5
    assert after[2]["income"] - before[2]["income"] == after[1]["income"] - before[1]["income"]  # no 1000
    assert sum(c["units"] for c in after[3]["cells"]) == sum(c["units"] for c in before[3]["cells"]) + 5
    assert after[4][:-1] == before[4][:-1] and after[4][-1]["units"] == before[4][-1]["units"] + 5

    # A late sale dated in the closed days: they are read again, and the hidden change shows.
    late = dt.datetime.combine(closed_day, dt.time(12), dt.UTC)
    response = await client.post(
        "/sales/", json={"item_id": 4, "store_id": 1, "quantity": 1, "sale_time": late.isoformat()}
    )
    assert response.status == 202
    await drain()
    page = await (await client.get(urls[1])).json()
    assert page["income"] - after[1]["income"] > 1000  # the sale's income and the 1000 hidden behind
    assert (
        next(d for d in page["days"] if d["day"] == closed_day.isoformat())["units"]
        == next(d for d in after[1]["days"] if d["day"] == closed_day.isoformat())["units"] + 1
    )
    items = await (await client.get(urls[0])).json()
    assert sum(r["sales_amount"] for r in items) == sum(expected.values()) + 1 + 1000


def _counting(calls: list[str], key: str):
    async def compute():
        calls.append(key)
        return [key]

    return compute


async def test_a_change_drops_the_results_whose_days_and_store_it_touches(database_url, db):
    await rollups.ensure_timezone(db, "Asia/Tokyo")  # the zone announced moments are cut in
    cache = ReportCache(database_url, zoneinfo.ZoneInfo("UTC"))  # and the cache learns it
    await cache.start()
    tokyo_today = dt.date(2026, 12, 5)
    # 2026-12-04 16:00 UTC is 2026-12-05 01:00 in Tokyo
    change = report_changes.payload(
        _us(dt.datetime(2026, 12, 4, 16, tzinfo=dt.UTC)), _us(dt.datetime(2026, 12, 4, 16, 30, tzinfo=dt.UTC)), [1, 2]
    )
    scopes = {
        "last_month": Scope(dt.date(2026, 11, 1), dt.date(2026, 11, 30)),
        "today": Scope(tokyo_today, tokyo_today),
        "store_1": Scope(tokyo_today, tokyo_today, 1),
        "store_3": Scope(tokyo_today, tokyo_today, 3),
        "all_time": EVERYTHING,
        "catalogue": CATALOGUE_ONLY,
    }
    calls: list[str] = []

    async def get_all() -> None:
        for key, scope in scopes.items():
            assert await cache.get(key, _counting(calls, key), scope) == [key]

    try:
        await _wait_listening(cache)
        await get_all()
        assert len(calls) == len(scopes)
        for payload, dropped in [
            (change, ["today", "store_1", "all_time"]),
            ("", list(scopes)),
            ("not json", list(scopes)),
        ]:
            calls.clear()
            await db.execute("SELECT pg_notify('reports_changed', $1)", payload)
            await get_all()
            assert calls == dropped, payload
        calls.clear()
        await db.execute("SELECT pg_notify('catalogue_changed', '')")
        await get_all()
        assert calls == list(scopes)
    finally:
        await cache.close()


async def test_a_result_computed_across_a_change_that_touches_it_is_not_kept(database_url, db):
    cache = ReportCache(database_url, zoneinfo.ZoneInfo("UTC"))
    await cache.start()
    today = dt.datetime.now(dt.UTC)
    release = asyncio.Event()
    calls: list[str] = []

    def slow(key: str):
        async def compute():
            calls.append(key)
            await release.wait()
            return [key]

        return compute

    try:
        await _wait_listening(cache)
        today_scope, past_scope = Scope(today.date(), today.date()), Scope(dt.date(2020, 1, 1), dt.date(2020, 1, 31))
        touched = asyncio.ensure_future(cache.get("today", slow("today"), today_scope))
        untouched = asyncio.ensure_future(cache.get("past", slow("past"), past_scope))
        while len(calls) < 2:
            await asyncio.sleep(0.01)
        await db.execute("SELECT pg_notify('reports_changed', $1)", report_changes.payload(_us(today), _us(today), [5]))
        for _ in range(2):  # the second get, of a result kept, waits for a round trip: the change is heard of
            await cache.get("sync", _counting([], "sync"), CATALOGUE_ONLY)
        release.set()
        assert await touched == ["today"] and await untouched == ["past"]
        calls.clear()
        await cache.get("today", slow("today"), today_scope)
        await cache.get("past", slow("past"), past_scope)
        assert calls == ["today"]  # computed again; the untouched one was kept
    finally:
        await cache.close()


def _us(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


async def _wait_listening(cache: ReportCache) -> None:
    for _ in range(100):
        if cache._conn is not None:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the report cache is not listening")


async def test_announced_moments_are_cut_in_the_zone_the_rollups_are_cut_in(aiohttp_client, settings, seed, db, drain):
    """The API started with REPORT_TIMEZONE=Europe/Berlin, then the rollups were rebuilt in UTC
    (another process, another setting): a sale at 23:30 UTC yesterday counts on yesterday, and
    must drop yesterday's cached report, not Berlin's day of that moment (today)."""
    berlin = await aiohttp_client(create_app(dataclasses.replace(settings, report_timezone="Europe/Berlin")))
    await seed(items=3, stores=2, tz="Europe/Berlin")
    await rollups.ensure_timezone(db, "UTC")
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    url = f"/reports/totals/?from={yesterday}&to={yesterday}"
    assert (await (await berlin.get(url)).json())["units"] == 0
    moment = dt.datetime.combine(yesterday, dt.time(23, 30), dt.UTC).isoformat()
    response = await berlin.post("/sales/", json={"item_id": 1, "store_id": 1, "quantity": 9, "sale_time": moment})
    assert response.status == 202
    await drain()
    assert (await (await berlin.get(url)).json())["units"] == 9


def test_a_change_across_a_shift_of_the_clocks_reaches_a_day_further_each_side():
    """Announced moments on both sides of a clock change: a moment between them may fall on a
    day the first and last do not (clocks going back across midnight)."""
    zone = zoneinfo.ZoneInfo("Europe/Berlin")
    before = dt.datetime(2026, 10, 25, 0, 30, tzinfo=dt.UTC)  # 02:30 CEST
    after = dt.datetime(2026, 10, 25, 1, 30, tzinfo=dt.UTC)  # 02:30 CET
    change = parse_change(report_changes.payload(_us(before), _us(after), [1]), zone)
    assert change == Change(dt.date(2026, 10, 24), dt.date(2026, 10, 26), frozenset({1}))
    same = parse_change(report_changes.payload(_us(after), _us(after), []), zone)
    assert same == Change(dt.date(2026, 10, 25), dt.date(2026, 10, 25), frozenset())


async def test_a_result_nothing_is_known_of_is_queried_with_no_round_trip_first(database_url, db):
    """A result neither kept nor being computed: a query begun now sees every commit before the
    request. A kept one waits for a round trip, which the request's further lookups share."""
    cache = ReportCache(database_url, zoneinfo.ZoneInfo("UTC"))
    await cache.start()
    calls: list[str] = []
    try:
        await _wait_listening(cache)
        before = cache.ticket()
        assert await cache.get("a", _counting(calls, "a")) == ["a"]
        parts = [Part("b", _counting(calls, "b")), Part("c", _counting(calls, "c"))]
        assert await cache.get_all(parts) == [["b"], ["c"]]
        assert cache.ticket() == before  # no round trip was begun
        since = cache.ticket()
        assert await cache.get("a", _counting(calls, "a"), since=since) == ["a"]  # kept: a round trip first
        assert cache.ticket() == since + 1
        await cache.get("b", _counting(calls, "b"), since=since)
        await cache.get_all([Part("c", _counting(calls, "c")), Part("d", _counting(calls, "d"))], since=since)
        assert cache.ticket() == since + 1  # the request's round trip stood for its other lookups
        assert calls == ["a", "b", "c", "d"]
        await cache.get("a", _counting(calls, "a"))  # another request: a round trip of its own
        assert cache.ticket() == since + 2
    finally:
        await cache.close()


async def test_a_computation_begun_before_a_request_is_shared_only_after_its_round_trip(database_url, db):
    """A request that finds its result being computed may not take a query begun before it
    arrived without the round trip: a change between the two would be missing."""
    cache = ReportCache(database_url, zoneinfo.ZoneInfo("UTC"))
    await cache.start()
    today = dt.datetime.now(dt.UTC)
    scope = Scope(today.date(), today.date())
    release = asyncio.Event()
    calls = 0

    async def slow():
        nonlocal calls
        calls += 1
        answer = calls
        await release.wait()
        return answer

    try:
        await _wait_listening(cache)
        first = asyncio.ensure_future(cache.get("today", slow, scope))
        while calls < 1:
            await asyncio.sleep(0.01)
        await db.execute("SELECT pg_notify('reports_changed', $1)", report_changes.payload(_us(today), _us(today), [1]))
        second = asyncio.ensure_future(cache.get("today", slow, scope))  # arrives after the change
        while calls < 2:
            await asyncio.sleep(0.01)
        release.set()
        assert (await first, await second) == (1, 2)
    finally:
        await cache.close()


async def test_a_writers_announcement_says_the_zone_its_moments_are_cut_in(database_url, db):
    """The API may have seen another zone (the rollups rebuilt in Tokyo since): the writer's
    NOTIFY says the zone it read in its transaction, and the moments are cut into its days."""
    await rollups.ensure_timezone(db, "Asia/Tokyo")
    await set_codecs(db)  # as the worker's connections: its jsonb codec must not re-encode the payload
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(database_url)
    try:
        await listener.add_listener(report_changes.CHANNEL, lambda *args: heard.put_nowait(args[-1]))
        moment = dt.datetime(2026, 12, 4, 16, tzinfo=dt.UTC)  # 2026-12-05 01:00 in Tokyo
        async with db.transaction():
            await db.execute(report_changes.ANNOUNCE, report_changes.payload(_us(moment), _us(moment), [3]))
        payload = await asyncio.wait_for(heard.get(), 5)
    finally:
        await listener.close()
    change = parse_change(payload, zoneinfo.ZoneInfo("UTC"))
    tokyo = zoneinfo.ZoneInfo("Asia/Tokyo")
    assert change == Change(dt.date(2026, 12, 5), dt.date(2026, 12, 5), frozenset({3}), tokyo)
