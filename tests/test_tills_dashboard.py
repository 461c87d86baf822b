"""The dashboard's Tills panel in a real headless Chromium: tills post sales with their
X-Till-Status header, and the owner sees the silent, the behind and the clock that is off first."""

from __future__ import annotations

import asyncio
import dataclasses
import os

import pytest

from api.app import create_app
from api.appkeys import ACCESS_CONTROL
from api.moments import iso_utc, now_us
from shared import keys
from tests.test_dashboard import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.browser


@pytest.fixture
async def browser():
    playwright_api = pytest.importorskip("playwright.async_api")
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install chromium")
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


async def _rows(page) -> list[dict]:
    return await page.eval_on_selector_all(
        "#tills-table tbody tr",
        "rows => rows.map(r => ({till: r.dataset.till, flags: r.dataset.flags,"
        " cells: Array.from(r.cells).map(c => c.textContent.trim())}))",
    )


async def test_the_tills_panel_shows_problems_first(settings, aiohttp_client, seed, db, browser):
    await seed(items=4, stores=3, sales=60)
    owner = await keys.issue(db, "owner", None, "dashboard")
    steady = await keys.issue(db, "pos", 1, "store 1, till 1")
    lagging = await keys.issue(db, "pos", 2, "store 2, till 1")
    drifting = await keys.issue(db, "pos", 2, "store 2, till 2")
    forgotten = await keys.issue(db, "pos", 3, "store 3, till 1")
    # a till installed an hour ago that has never called since
    await db.execute("UPDATE api_key SET created_at = now() - interval '1 hour' WHERE prefix = $1", forgotten.prefix)
    ids = {r["prefix"]: r["id"] for r in await db.fetch("SELECT id, prefix FROM api_key")}
    client = await aiohttp_client(create_app(dataclasses.replace(settings, auth_required=True)))
    while client.server.app[ACCESS_CONTROL].keys.authenticate(forgotten.key) is None:  # type: ignore[union-attr]
        await asyncio.sleep(0.05)

    now = now_us()
    statuses = {
        steady: "pending=0; oldest=; clock_offset=0.4",
        lagging: f"pending=37; oldest={iso_utc(now - 9 * 60 * 1_000_000)}; clock_offset=1.2",
        drifting: "pending=1; oldest=; clock_offset=-94.5",
    }
    for key, status in statuses.items():
        for _ in range(3):
            response = await client.post(
                "/sales/",
                json={"item_id": 1, "store_id": key.store_id},
                headers={"Authorization": f"Bearer {key.key}", "X-Till-Status": status},
            )
            assert response.status == 202, await response.text()

    context = await browser.new_context(
        http_credentials={"username": "owner", "password": owner.key}, viewport={"width": 1280, "height": 1000}
    )
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(str(client.make_url("/")))
    # the contacts reach Redis within a second; the page refreshes every 5 s
    expected = "3 of 4 tills need attention: 1 silent, 1 behind, 1 clock off."
    await page.wait_for_function(
        "want => document.getElementById('tills-summary').textContent === want", arg=expected, timeout=15_000
    )
    rows = await _rows(page)
    assert [(r["till"], r["flags"]) for r in rows] == [
        (str(ids[forgotten.prefix]), "silent"),
        (str(ids[lagging.prefix]), "behind"),
        (str(ids[drifting.prefix]), "clock_off"),
        (str(ids[steady.prefix]), ""),
    ]
    forgotten_row, lagging_row, drifting_row, steady_row = (r["cells"] for r in rows)
    assert forgotten_row[:4] == ["store 3, till 1", "store 3", "never", "–"] and forgotten_row[-1] == "silent"
    assert lagging_row[0] == "store 2, till 1" and lagging_row[3] == "37" and lagging_row[4] == "9 min old"
    assert lagging_row[-1] == "behind"
    assert drifting_row[5] == "−94.5 s" and drifting_row[-1] == "clock off"
    assert steady_row[2].endswith("s ago") and steady_row[-1] == "OK"

    answer = await (await client.get("/tills/", headers={"Authorization": f"Bearer {owner.key}"})).json()
    assert [str(t["till_id"]) for t in answer["tills"]] == [r["till"] for r in rows]
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "dashboard-tills.png"), full_page=True)

    narrow = await context.new_page()
    await narrow.set_viewport_size({"width": 390, "height": 900})
    await narrow.goto(str(client.make_url("/")))
    await narrow.wait_for_selector("#tills-table tbody tr[data-till]")
    assert await narrow.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    await context.close()
    assert errors == []


async def test_without_keys_the_panel_says_why_it_is_empty(client, browser):
    page = await browser.new_page()
    await page.goto(str(client.make_url("/")))
    await page.wait_for_function("document.getElementById('tills-summary').textContent.includes('AUTH_REQUIRED')")
    assert await page.is_hidden("#tills-table")


async def test_with_keys_and_no_till_yet_the_panel_says_how_to_add_one(settings, aiohttp_client, seed, db, browser):
    await seed(items=2, stores=2, sales=20)
    owner = await keys.issue(db, "owner", None, "dashboard")
    client = await aiohttp_client(create_app(dataclasses.replace(settings, auth_required=True)))
    context = await browser.new_context(http_credentials={"username": "owner", "password": owner.key})
    page = await context.new_page()
    await page.goto(str(client.make_url("/")))
    await page.wait_for_function("document.getElementById('status').textContent.startsWith('Updated')")
    assert (await page.text_content("#tills-summary")).startswith("No tills yet")
    assert await page.is_hidden("#tills-table")
    await context.close()
