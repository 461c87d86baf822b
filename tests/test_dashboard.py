"""The owners' page in a real headless Chromium (Debian's), driven by Playwright."""

from __future__ import annotations

import datetime as dt
import os
import pathlib
import shutil

import pytest

from tests.conftest import ADMIN_TOKEN

pytestmark = pytest.mark.browser
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = pathlib.Path(os.environ.get("TEST_ARTIFACTS", "artifacts"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


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
        f"{selector} tbody tr", "rows => rows.map(r => Array.from(r.cells).map(c => c.textContent.trim()))"
    )


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
        [str(i + 1), s["address"], _fmt(s["income"])] for i, s in enumerate(stores)
    ]
    items = await (await client.get("/items/top/?cnt=10")).json()
    assert await _table(page, "#items-table") == [
        [str(i + 1), it["name"], _fmt(it["sales_amount"])] for i, it in enumerate(items)
    ]
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
        arg=want,
    )
    assert want != [[str(i + 1), s["address"], _fmt(s["income"])] for i, s in enumerate(stores)]

    # back to this month; a new sale shows up without a reload
    await page.select_option("#month", str(current_month))
    await page.evaluate("window.__noReload = true")
    before = summary["units"]
    response = await client.post("/sales/", json={"item_id": 1, "store_id": 1, "quantity": 5})
    assert response.status == 202
    await drain()
    await page.wait_for_function(
        f"document.getElementById('kpi-units').textContent === '{_fmt(before + 5)}'", timeout=15_000
    )
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


# ---- the period picker, the store page, the trend and the heat map ----------------------------

SHORT_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def _pct(pct) -> str:
    """A change as the page writes it: one decimal, a real minus sign, "–" when there is none."""
    if pct is None:
        return "–"
    return ("+" if pct > 0 else "−" if pct < 0 else "") + f"{abs(pct):,.1f}%"


def _ranked(rows, name: str, value: str) -> list[list[str]]:
    return [[str(i + 1), r[name], _fmt(r[value])] for i, r in enumerate(rows)]


async def _api(client, url: str):
    response = await client.get(url)
    assert response.status == 200, (url, await response.text())
    return await response.json()


async def _shown(page, view: str, store: int | None = None, cnt: int = 10) -> tuple[str, str]:
    """Waits until the page has drawn `view` (and `store`); the period it shows."""
    prefix = f"{view}|{store or ''}|"
    await page.wait_for_function("p => (document.getElementById('main').dataset.shown || '').startsWith(p)", arg=prefix)
    _, _, first, last, shown_cnt = (await page.get_attribute("#main", "data-shown")).split("|")
    assert shown_cnt == str(cnt)
    return first, last


async def _wait_period(page, view: str, first: str, last: str, store: int | None = None, cnt: int = 10) -> None:
    key = f"{view}|{store or ''}|{first}|{last}|{cnt}"
    await page.wait_for_function("k => document.getElementById('main').dataset.shown === k", arg=key)


async def _assert_trend(page, prefix: str, trend: list[dict]) -> None:
    assert len(trend) == 12
    assert await _table(page, f"#{prefix}trend-table") == [
        [
            f"{SHORT_MONTHS[int(t['month'][5:]) - 1]} {t['month'][:4]}",
            _fmt(t["income"]),
            _fmt(t["income_year_before"]),
            _pct(t["income_change_pct"]),
        ]
        for t in trend
    ]
    bars = await page.eval_on_selector_all(
        f"#{prefix}trend-chart g.trend-month",
        "gs => gs.map(g => [g.dataset.month, g.querySelector('.bar-now').dataset.value,"
        " g.querySelector('.bar-before').dataset.value, g.querySelector('.pct').textContent])",
    )
    assert bars == [
        [t["month"], str(t["income"]), str(t["income_year_before"]), _pct(t["income_change_pct"])] for t in trend
    ]


async def _assert_heat_map(page, container: str, hours: dict) -> None:
    cells = await page.eval_on_selector_all(
        f"{container} td", "tds => tds.map(td => [td.dataset.weekday, td.dataset.hour, td.dataset.sales, td.title])"
    )
    assert len(hours["cells"]) == 168
    assert cells == [
        [
            str(c["weekday"]),
            str(c["hour"]),
            str(c["sales"]),
            f"{WEEKDAYS[c['weekday'] - 1]} {c['hour']:02d}:00–{c['hour']:02d}:59: {_fmt(c['sales'])} sales, "
            f"{_fmt(c['units'])} units, income {_fmt(c['income'])}",
        ]
        for c in hours["cells"]
    ]
    assert sum(c["sales"] for c in hours["cells"]) > 0
    most = max(c["sales"] for c in hours["cells"])
    assert await page.text_content(f"{container} .heat-max") == f"{_fmt(most)} sales in an hour"


async def _return_some(client, db, drain, count: int, store_id: int | None = None) -> list[int]:
    """Returns one unit of `count` sales (of `store_id`, when given), through the API (the seeder
    returned some sales already: not those)."""
    rows = await db.fetch(
        "SELECT id FROM sales s WHERE ($1::int IS NULL OR store_id = $1)"
        " AND NOT EXISTS (SELECT 1 FROM returns r WHERE r.sale_id = s.id) ORDER BY id LIMIT $2",
        store_id,
        count,
    )
    assert len(rows) == count
    for row in rows:
        response = await client.post(f"/sales/{row['id']}/returns/", json={"quantity": 1})
        assert response.status == 202, await response.text()
    await drain()
    return [r["id"] for r in rows]


async def _sales_a_year_before(client, drain, store_id: int = 1) -> None:
    """Sales in the two months a year before this one and the last (the seed covers 12 months
    only), so that the trend has a year before to compare with."""
    now = dt.datetime.now(dt.UTC)
    for days, quantity in ((365, 3), (395, 2)):
        response = await client.post(
            "/sales/",
            json={
                "item_id": 1,
                "store_id": store_id,
                "quantity": quantity,
                "sale_time": (now - dt.timedelta(days=days)).isoformat(),
            },
        )
        assert response.status == 202, await response.text()
    await drain()


async def _discounted_sale(client, db, drain, store_id: int = 1) -> int:
    """A sale of item 1 charged 7 below its list price, twice over: 14 of discounts."""
    listed = await db.fetchval("SELECT price FROM item WHERE id = 1")
    body = {"item_id": 1, "store_id": store_id, "quantity": 2, "unit_price": listed - 7}
    response = await client.post("/sales/", json=body)
    assert response.status == 202, await response.text()
    await drain()
    return 14


async def test_period_picker_drives_the_chain_view(client, seed, db, drain, browser):
    await seed(items=8, stores=5, sales=1500)
    today = dt.date.fromisoformat((await _api(client, "/reports/totals/"))["to"])  # today in the report zone
    month_30 = f"from={today - dt.timedelta(days=29)}&to={today}"
    returned = (await _api(client, f"/reports/totals/?{month_30}"))["returns"]  # the seeder's
    await _return_some(client, db, drain, 3)
    await _sales_a_year_before(client, drain)
    discounts = await _discounted_sale(client, db, drain)
    page = await browser.new_page(viewport={"width": 1280, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(str(client.make_url("/")))
    await _shown(page, "chain")

    # "Last 30 days": 30 days up to today, for every card
    await page.select_option("#period", "last-30-days")
    first, last = str(today - dt.timedelta(days=29)), str(today)
    await _wait_period(page, "chain", first, last)
    assert await page.evaluate("location.hash") == f"#from={first}&to={last}"
    q = f"from={first}&to={last}"
    stores = await _api(client, f"/stores/top/?{q}&cnt=10")
    assert len(stores) == 5
    assert await _table(page, "#stores-table") == _ranked(stores, "address", "income")
    assert await page.eval_on_selector_all("#stores-chart .bar-value", "els => els.map(e => e.textContent)") == [
        _fmt(s["income"]) for s in stores
    ]
    items = await _api(client, f"/items/top/?{q}&cnt=10")
    assert await _table(page, "#period-items-table") == _ranked(items, "name", "sales_amount")
    assert await _table(page, "#items-table") == _ranked(
        await _api(client, "/items/top/?cnt=10"), "name", "sales_amount"
    )
    totals = await _api(client, f"/reports/totals/?{q}")
    assert totals["returns"] == returned + 3 and totals["refunds"] > 0 and totals["discounts"] == discounts
    for key in ("income", "units", "sales", "returns", "refunds", "discounts"):
        assert await page.text_content(f"#kpi-{key}") == _fmt(totals[key]), key
    daily = [
        d
        for mm in {(today - dt.timedelta(days=29)).replace(day=1), today.replace(day=1)}
        for d in await _api(client, f"/reports/daily/?mm={mm.month}&year={mm.year}")
        if first <= d["day"] <= last
    ]
    assert await _table(page, "#daily-table") == sorted([d["day"], _fmt(d["income"]), _fmt(d["units"])] for d in daily)
    await _assert_heat_map(page, "#hours-map", await _api(client, f"/reports/hours/?{q}"))
    trend = await _api(client, "/reports/trend/?months=12")
    assert sum(t["income_change_pct"] is not None for t in trend) >= 2
    await _assert_trend(page, "", trend)
    for caption in ("#stores-title", "#period-items-title", "#hours-title", "#daily-title"):
        assert "last 30 days" in await page.text_content(caption), caption
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "dashboard-period-wide.png"), full_page=True)

    # a redraw after a new sale keeps the keyboard focus on the store link it was on
    top = stores[0]["id"]
    await page.focus(f"#stores-table a[data-store='{top}']")
    response = await client.post("/sales/", json={"item_id": 2, "store_id": top, "quantity": 4})
    assert response.status == 202
    await drain()
    await page.evaluate("refresh(true)")
    totals = await _api(client, f"/reports/totals/?{q}")
    assert await page.text_content("#kpi-units") == _fmt(totals["units"])
    assert await page.evaluate(
        "document.activeElement.closest('#stores-table') && document.activeElement.dataset.store"
    ) == str(top)

    # a custom range, typed into the two date fields
    await page.select_option("#period", "custom")
    first, last = str(today - dt.timedelta(days=75)), str(today - dt.timedelta(days=40))
    await page.fill("#to", last)
    await page.fill("#from", first)
    await _wait_period(page, "chain", first, last)
    q = f"from={first}&to={last}"
    assert await _table(page, "#stores-table") == _ranked(
        await _api(client, f"/stores/top/?{q}&cnt=10"), "address", "income"
    )
    assert await _table(page, "#period-items-table") == _ranked(
        await _api(client, f"/items/top/?{q}&cnt=10"), "name", "sales_amount"
    )
    totals = await _api(client, f"/reports/totals/?{q}")
    assert await page.text_content("#kpi-income") == _fmt(totals["income"])
    for key in ("returns", "refunds"):
        assert await page.text_content(f"#kpi-{key}") == _fmt(totals[key]), key
    await _assert_heat_map(page, "#hours-map", await _api(client, f"/reports/hours/?{q}"))
    # from after to is refused in the page, before any request
    await page.fill("#from", str(today))
    assert "after" in await page.text_content("#range-error")
    assert await page.get_attribute("#main", "data-shown") == f"chain||{first}|{last}|10"

    # last month, and the link keeps the period
    await page.select_option("#period", "last-month")
    month = (today.replace(day=1) - dt.timedelta(days=1)).replace(day=1)
    first, last = str(month), str(today.replace(day=1) - dt.timedelta(days=1))
    await _wait_period(page, "chain", first, last)
    assert await _table(page, "#stores-table") == _ranked(
        await _api(client, f"/stores/top/?cnt=10&mm={month.month}&year={month.year}"), "address", "income"
    )
    summary = await _api(client, f"/reports/summary/?mm={month.month}&year={month.year}")
    assert await page.text_content("#kpi-income") == _fmt(summary["income"])
    assert await page.is_visible("#month") and not await page.is_visible("#from")

    narrow = await browser.new_page(viewport={"width": 390, "height": 900})
    await narrow.goto(str(client.make_url("/")) + f"#from={today - dt.timedelta(days=29)!s}&to={today}")
    await _wait_period(narrow, "chain", str(today - dt.timedelta(days=29)), str(today))
    assert await narrow.input_value("#period") == "last-30-days"
    assert await narrow.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    await narrow.screenshot(path=str(ARTIFACTS / "dashboard-period-narrow.png"), full_page=True)
    assert errors == []


async def test_store_page_shows_the_store_report(client, seed, db, drain, browser):
    await seed(items=8, stores=5, sales=2000)
    today = dt.date.fromisoformat((await _api(client, "/reports/totals/"))["to"])  # today in the report zone
    first, last = str(today - dt.timedelta(days=29)), str(today)
    store_id = (await _api(client, f"/stores/top/?from={first}&to={last}&cnt=1"))[0]["id"]
    returned = {
        q: (await _api(client, f"/stores/{store_id}/report/?{q}"))["returns"]  # the seeder's
        for q in (f"from={first}&to={last}", f"from={today - dt.timedelta(days=6)}&to={today}")
    }
    await _return_some(client, db, drain, 2, store_id)
    await _sales_a_year_before(client, drain, store_id)
    discounts = await _discounted_sale(client, db, drain, store_id)
    # an item renamed through the API: the page shows the new name
    top_item = (await _api(client, f"/stores/{store_id}/report/?from={first}&to={last}&cnt=1"))["top_items"][0]
    renamed = await client.patch(
        f"/catalogue/items/{top_item['id']}", json={"name": "renamed on the dashboard"}, headers=ADMIN
    )
    assert renamed.status == 200, await renamed.text()
    base = str(client.make_url("/"))
    page = await browser.new_page(viewport={"width": 1280, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(base + f"#from={first}&to={last}")
    await _wait_period(page, "chain", first, last)

    # from the stores table, with the keyboard
    await page.focus(f"#stores-table a[data-store='{store_id}']")
    await page.keyboard.press("Enter")
    await _wait_period(page, "store", first, last, store_id)
    assert await page.evaluate("location.hash") == f"#store={store_id}&from={first}&to={last}"
    assert await page.is_hidden("#chain-view")
    assert await page.evaluate("document.activeElement.id") == "store-title"
    report = await _api(client, f"/stores/{store_id}/report/?from={first}&to={last}&cnt=10")
    assert report["returns"] == returned[f"from={first}&to={last}"] + 2 and report["refunds"] > 0
    assert report["discounts"] == discounts
    assert await page.text_content("#store-title") == f"Store: {report['store']['address']}"
    for key in ("income", "units", "sales", "returns", "refunds", "discounts"):
        assert await page.text_content(f"#store-{key}") == _fmt(report[key]), key
    assert await _table(page, "#store-items-table") == _ranked(report["top_items"], "name", "sales_amount")
    assert "renamed on the dashboard" in [row[1] for row in await _table(page, "#store-items-table")]
    assert await _table(page, "#store-daily-table") == [
        [d["day"], *(_fmt(d[k]) for k in ("income", "units", "sales", "returns", "refunds", "discounts"))]
        for d in report["days"]
    ]
    bars = await page.eval_on_selector_all("#store-daily-chart rect title", "ts => ts.map(t => t.textContent)")
    assert len(bars) == len(report["days"]) and all(
        b.startswith(f"{d['day']}: income {_fmt(d['income'])},") for b, d in zip(bars, report["days"])
    )
    await _assert_trend(page, "store-", await _api(client, f"/reports/trend/?months=12&store_id={store_id}"))
    await _assert_heat_map(
        page, "#store-hours-map", await _api(client, f"/reports/hours/?from={first}&to={last}&store_id={store_id}")
    )
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "store-page-wide.png"), full_page=True)

    # the period picker works on the store page too, and the address follows it
    await page.select_option("#period", "last-7-days")
    week = (str(today - dt.timedelta(days=6)), str(today))
    await _wait_period(page, "store", *week, store_id)
    assert await page.evaluate("location.hash") == f"#store={store_id}&from={week[0]}&to={week[1]}"
    report = await _api(client, f"/stores/{store_id}/report/?from={week[0]}&to={week[1]}&cnt=10")
    assert report["returns"] == returned[f"from={week[0]}&to={week[1]}"] + 2
    for key in ("income", "units", "sales", "returns", "refunds"):
        assert await page.text_content(f"#store-{key}") == _fmt(report[key]), key
    assert await _table(page, "#store-items-table") == _ranked(report["top_items"], "name", "sales_amount")

    # the browser's back button returns to the chain, forward to the store again
    await page.go_back()
    await _wait_period(page, "chain", first, last)
    assert await page.is_hidden("#store-view")
    await page.go_forward()
    await _wait_period(page, "store", *week, store_id)
    # and the page's own way back keeps the period
    await page.click("#back-link")
    await _wait_period(page, "chain", *week)
    # a store's bar in the chart opens its page too
    other = await page.get_attribute(f"#stores-chart a[data-store]:not([data-store='{store_id}'])", "data-store")
    await page.click(f"#stores-chart a[data-store='{other}'] rect")
    await _wait_period(page, "store", *week, int(other))

    # the address is a link: a narrow window opens the same page from it
    narrow = await browser.new_page(viewport={"width": 390, "height": 900})
    await narrow.goto(base + f"#store={store_id}&from={first}&to={last}")
    await _wait_period(narrow, "store", first, last, store_id)
    report = await _api(client, f"/stores/{store_id}/report/?from={first}&to={last}&cnt=10")
    assert await narrow.text_content("#store-returns") == _fmt(report["returns"])
    assert await narrow.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    await narrow.screenshot(path=str(ARTIFACTS / "store-page-narrow.png"), full_page=True)

    # a store that does not exist: the API's error, plainly
    error = (await (await client.get("/stores/999/report/")).json())["error"]
    await narrow.goto(base + "#store=999")
    await narrow.wait_for_selector("#banner.error")
    assert error in await narrow.text_content("#banner")
    assert "Not available" in await narrow.text_content("#store-hours-map")
    assert errors == []
