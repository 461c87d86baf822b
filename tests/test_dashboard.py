"""The owners' page in a real headless Chromium (Debian's), driven by Playwright."""
from __future__ import annotations

import os
import pathlib
import shutil

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = pathlib.Path(os.environ.get("TEST_ARTIFACTS", "artifacts"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
async def browser():
    playwright_api = pytest.importorskip("playwright.async_api")
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install chromium")
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


def _fmt(n: int) -> str:
    return f"{n:,}"


async def _table(page, selector: str) -> list[list[str]]:
    return await page.eval_on_selector_all(
        f"{selector} tbody tr", "rows => rows.map(r => Array.from(r.cells).map(c => c.textContent.trim()))")


async def test_dashboard_shows_the_api_numbers_and_follows_new_sales(client, seed, drain, browser):
    await seed(items=8, stores=5, sales=1200)
    base = str(client.make_url("/"))
    page = await browser.new_page(viewport={"width": 1280, "height": 1000})
    await page.goto(base)
    await page.wait_for_function("document.getElementById('kpi-income').textContent !== '–'")

    summary = await (await client.get("/reports/summary/")).json()
    assert await page.text_content("#kpi-income") == _fmt(summary["income"])
    assert await page.text_content("#kpi-units") == _fmt(summary["units"])
    stores = await (await client.get(f"/stores/top/?cnt=10&mm={int(summary['month'][5:])}")).json()
    assert await _table(page, "#stores-table") == [
        [str(i + 1), s["address"], _fmt(s["income"])] for i, s in enumerate(stores)]
    items = await (await client.get("/items/top/?cnt=10")).json()
    assert await _table(page, "#items-table") == [
        [str(i + 1), it["name"], _fmt(it["sales_amount"])] for i, it in enumerate(items)]
    # bars carry the same numbers as the table
    bar_values = await page.eval_on_selector_all("#stores-chart .bar-value", "els => els.map(e => e.textContent)")
    assert bar_values == [_fmt(s["income"]) for s in stores]
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "dashboard-wide.png"), full_page=True)

    # another month: the stores table follows the picker
    current_month = int(summary["month"][5:])
    other = current_month - 1 or 12
    other_year = int(summary["month"][:4]) - (current_month == 1)
    await page.select_option("#month", str(other))
    expected = await (await client.get(f"/stores/top/?cnt=10&mm={other}&year={other_year}")).json()
    want = [[str(i + 1), s["address"], _fmt(s["income"])] for i, s in enumerate(expected)]
    await page.wait_for_function(
        "want => JSON.stringify(Array.from(document.querySelectorAll('#stores-table tbody tr'))"
        ".map(r => Array.from(r.cells).map(c => c.textContent.trim()))) === JSON.stringify(want)",
        arg=want)
    assert want != [[str(i + 1), s["address"], _fmt(s["income"])] for i, s in enumerate(stores)]

    # back to this month; a new sale shows up without a reload
    await page.select_option("#month", str(current_month))
    await page.evaluate("window.__noReload = true")
    before = summary["units"]
    response = await client.post("/sales/", json={"item_id": 1, "store_id": 1, "quantity": 5})
    assert response.status == 202
    await drain()
    await page.wait_for_function(
        f"document.getElementById('kpi-units').textContent === '{_fmt(before + 5)}'", timeout=15_000)
    assert await page.evaluate("window.__noReload") is True
    assert "Updated" in await page.text_content("#status")

    narrow = await browser.new_page(viewport={"width": 390, "height": 900})
    await narrow.goto(base)
    await narrow.wait_for_function("document.getElementById('kpi-income').textContent !== '–'")
    assert await narrow.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    await narrow.screenshot(path=str(ARTIFACTS / "dashboard-narrow.png"), full_page=True)


async def test_empty_database_is_said_plainly(client, browser):
    page = await browser.new_page()
    await page.goto(str(client.make_url("/")))
    await page.wait_for_selector("#banner:not([hidden])")
    assert "no sales yet" in (await page.text_content("#banner")).lower()
    assert "No sales in this period yet." in await page.text_content("#stores-chart")


async def test_database_down_is_said_plainly(database_url, settings, aiohttp_client, browser):
    import asyncpg

    from api.app import create_app

    client = await aiohttp_client(create_app(settings))
    page = await browser.new_page()
    await page.goto(str(client.make_url("/")))
    await page.wait_for_function("document.getElementById('status').textContent.startsWith('Updated')")
    # cut the app's database connections off, as a crashed server would
    admin = await asyncpg.connect(database_url.rsplit("/", 1)[0] + "/postgres")
    name = database_url.rsplit("/", 1)[1]
    await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
    await admin.close()
    try:
        await page.wait_for_selector("#banner.error", timeout=15_000)
        assert "cannot load the reports" in (await page.text_content("#banner")).lower()
    finally:
        admin = await asyncpg.connect(database_url.rsplit("/", 1)[0] + "/postgres")
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()


async def test_dashboard_with_auth_uses_the_owner_key_from_the_browser(settings, aiohttp_client, seed, db, browser):
    import dataclasses

    from api.app import create_app
    from shared import keys

    await seed(items=4, stores=3, sales=120)
    owner = await keys.issue(db, "owner", None, "browser")
    client = await aiohttp_client(create_app(dataclasses.replace(settings, auth_required=True)))
    context = await browser.new_context(http_credentials={"username": "owner", "password": owner.key})
    page = await context.new_page()
    requested = []
    page.on("request", lambda r: requested.append(r.url))
    await page.goto(str(client.make_url("/")))
    await page.wait_for_function("document.getElementById('status').textContent.startsWith('Updated')")
    summary = await (await client.get("/reports/summary/", headers={"Authorization": f"Bearer {owner.key}"})).json()
    assert await page.text_content("#kpi-income") == _fmt(summary["income"])
    assert not any(owner.key in url or owner.key.split(".")[1] in url for url in requested)
    await context.close()
