"""Every report answers CSV too, with a header row and the same values as its JSON."""

from __future__ import annotations

import csv
import datetime as dt
import io

import pytest

from tests.recount import ACTIVITY

REPORTS = [
    ("/items/", ["id", "name", "price"]),
    ("/stores/", ["id", "address"]),
    ("/items/top/?cnt=5", ["id", "name", "sales_amount"]),
    ("/stores/top/?cnt=5", ["id", "address", "income"]),
    ("/reports/daily/", ["day", "income", "units", "sales"]),
]


def _as_strings(rows: list[dict], columns: list[str]) -> list[list[str]]:
    return [[str(row[c]) for c in columns] for row in rows]


@pytest.mark.parametrize("path, columns", REPORTS)
async def test_csv_matches_json(client, seed, drain, path, columns):
    await seed(items=6, stores=4, sales=240)
    # seeded sales cover only the current month's days so far (none early on the 1st), and
    # /stores/top/ and /reports/daily/ report the current month: every store sells now too
    for store_id in range(1, 5):
        assert (await client.post("/sales/", json={"item_id": store_id, "store_id": store_id})).status == 202
    await drain()
    as_json = await (await client.get(path)).json()
    assert as_json, "the report must have rows for this comparison to mean something"
    sep = "&" if "?" in path else "?"
    for response in (
        await client.get(f"{path}{sep}format=csv"),
        await client.get(path, headers={"Accept": "text/csv"}),
    ):
        assert response.status == 200
        assert response.content_type == "text/csv"
        table = list(csv.reader(io.StringIO(await response.text())))
        assert table[0] == columns
        assert table[1:] == _as_strings(as_json, columns)


async def test_summary_csv_is_one_row_of_the_json(client, seed):
    await seed(items=3, stores=2, sales=120)
    summary = await (await client.get("/reports/summary/")).json()
    table = list(csv.reader(io.StringIO(await (await client.get("/reports/summary/?format=csv")).text())))
    assert table[0] == list(summary)
    assert table[1] == ["" if v is None else str(v) for v in summary.values()]


async def test_unknown_format_is_400(client, seed):
    await seed()
    response = await client.get("/items/?format=xml")
    assert response.status == 400
    assert "format" in (await response.json())["error"]


async def test_summary_compares_with_previous_month(client, seed, db):
    await seed(items=3, stores=2, sales=1200, now=dt.datetime(2026, 11, 27, tzinfo=dt.UTC))
    summary = await (await client.get("/reports/summary/?mm=10&year=2026")).json()
    sums = (
        f"SELECT sum(s.income)::bigint AS income, sum(s.units)::bigint AS units, sum(s.sales)::bigint AS sales "
        f"FROM {ACTIVITY} WHERE s.moment >= $1 AND s.moment < $2"
    )  # net of (seeded) returns
    recount = await db.fetchrow(sums, dt.datetime(2026, 10, 1, tzinfo=dt.UTC), dt.datetime(2026, 11, 1, tzinfo=dt.UTC))
    before = await db.fetchrow(sums, dt.datetime(2026, 9, 1, tzinfo=dt.UTC), dt.datetime(2026, 10, 1, tzinfo=dt.UTC))
    assert (summary["month"], summary["previous_month"]) == ("2026-10", "2026-09")
    assert (summary["income"], summary["units"], summary["sales"]) == (
        recount["income"],
        recount["units"],
        recount["sales"],
    )
    assert summary["previous_income"] == before["income"]
    assert summary["income_change_pct"] == round(
        float((recount["income"] - before["income"]) * 100 / before["income"]), 1
    )
