"""The tills' ledgers (their spools) against the server: reports, and the database if given.

A till's ledger is its spool: every sale it recorded, with the id the server answered for the
ones it sent. Reconciled with the server:
- income per store and month (price x quantity: the price the till charged, else the item's
  from GET /items/) against `/stores/top/` and units per item against `/items/top/`, as the
  change between a snapshot taken before the tills sold and one after (other sales may be in
  the reports already; nobody else must sell in these stores meanwhile);
- with a database URL: every sent sale is in `sales` once, under its till's number or its
  key, with the id the
  server answered, and every sent return in `returns` likewise, naming its sale's id (needs
  asyncpg, which a till does not have: only the simulator uses this).
Returns count against their sale's price, in the month of their return_time (the reports are
net of returns, in the period of the return).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import urllib.parse
from collections.abc import Iterable
from typing import Any

from pos_client.spool import SENT, SpooledReturn, SpooledSale
from pos_client.transport import HttpTransport, check_key_over_http

try:
    import zoneinfo
except ImportError:  # Python < 3.9 has none; reports are then cut in UTC only
    zoneinfo = None  # type: ignore[assignment]  # the usual optional import: mypy knows only the module


@dataclasses.dataclass
class Ledger:
    store_id: int
    sales: list[SpooledSale]
    returns: list[SpooledReturn] = dataclasses.field(default_factory=list)

    @property
    def sent(self) -> list[SpooledSale]:
        return [s for s in self.sales if s.state == SENT]

    @property
    def returns_sent(self) -> list[SpooledReturn]:
        return [r for r in self.returns if r.state == SENT]


def month_of(sale_time: str, tz) -> tuple[int, int]:
    moment = dt.datetime.fromisoformat(sale_time).astimezone(tz)
    return moment.year, moment.month


def expected_totals(ledgers: Iterable[Ledger], prices: dict[int, int], tz) -> tuple[dict, dict]:
    """({(store, year, month): income}, {item: units}) of the sent sales: each at the price the
    till charged when it says (it stamps its catalogue copy's), else the item's price now."""
    income: dict[tuple[int, int, int], int] = collections.Counter()
    units: dict[int, int] = collections.Counter()
    for ledger in ledgers:
        for sale in ledger.sent:
            price = prices[sale.item_id] if sale.unit_price is None else sale.unit_price
            income[(ledger.store_id, *month_of(sale.sale_time, tz))] += price * sale.quantity
            units[sale.item_id] += sale.quantity
        sales = {sale.seq: sale for sale in ledger.sales}
        for ret in ledger.returns_sent:  # at its sale's price, in the month it was returned
            sale = sales[ret.sale_seq]
            price = prices[sale.item_id] if sale.unit_price is None else sale.unit_price
            income[(ledger.store_id, *month_of(ret.return_time, tz))] -= price * ret.quantity
            units[sale.item_id] -= ret.quantity
    return dict(income), dict(units)


class Reports:
    """GET the reports, as an owner key (or openly when the server requires none)."""

    def __init__(
        self,
        base_url: str,
        key: str | None = None,
        timeout: float = 30.0,
        *,
        ca_bundle: str | None = None,
        allow_plain_http: bool = False,
    ):
        check_key_over_http(base_url, key, allow_plain_http)
        self.http = HttpTransport(base_url, timeout=timeout, ca_bundle=ca_bundle, allow_plain_http=allow_plain_http)
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def get(self, path: str, **query) -> Any:  # decoded JSON
        answer = self.http.request(
            "GET", path + ("?" + urllib.parse.urlencode(query) if query else ""), headers=self.headers
        )
        if answer.status != 200:
            raise RuntimeError(f"GET {path}: {answer.status} {answer.error()}")
        return answer.json()

    def prices(self) -> dict[int, int]:
        return {item["id"]: item["price"] for item in self.get("/items/")}

    def snapshot(self, months: Iterable[tuple[int, int]]) -> dict:
        """Income per (store, year, month) for those months, and units per item (all time)."""
        income = {}
        for year, month in sorted(set(months)):
            for row in self.get("/stores/top/", cnt=1000, mm=month, year=year):
                income[(row["id"], year, month)] = row["income"]
        units = {row["id"]: row["sales_amount"] for row in self.get("/items/top/", cnt=1000)}
        return {"income": income, "units": units}

    def close(self) -> None:
        self.http.close()


def differences(before: dict, after: dict, income: dict, units: dict) -> dict:
    """Where the server's change between the snapshots is not what the ledgers say."""
    stores = {}
    for key in set(income) | {k for k in after["income"] if after["income"][k] != before["income"].get(k, 0)}:
        got = after["income"].get(key, 0) - before["income"].get(key, 0)
        if got != income.get(key, 0):
            stores[key] = {"ledgers": income.get(key, 0), "server": got}
    items = {}
    for item in set(units) | {k for k in after["units"] if after["units"][k] != before["units"].get(k, 0)}:
        got = after["units"].get(item, 0) - before["units"].get(item, 0)
        if got != units.get(item, 0):
            items[item] = {"ledgers": units.get(item, 0), "server": got}
    return {"stores": stores, "items": items}


def _identity(ledger: Ledger, sale: SpooledSale) -> tuple:
    """How the server tells the sale from others: its till's number, else its key."""
    if sale.till_seq is not None:
        return ("till", sale.till_id, sale.till_seq)
    return ("key", ledger.store_id, sale.idempotency_key)


def _row_identity(row) -> tuple:
    if row["till_seq"] is not None:
        return ("till", row["till_id"], row["till_seq"])
    return ("key", row["store_id"], row["idempotency_key"])


async def database_check(database_url: str, ledgers: Iterable[Ledger]) -> dict:
    """Every sent sale of the ledgers in `sales` exactly once, with the id it was answered,
    and no row of these keys or till numbers that the ledgers do not know."""
    import asyncpg  # the simulator's side only

    wanted = {_identity(ledger, s): s for ledger in ledgers for s in ledger.sales}
    numbered = [(till, seq) for kind, till, seq in wanted if kind == "till"]
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT id, store_id, item_id, quantity, idempotency_key, till_id, till_seq FROM sales "
            "WHERE idempotency_key = ANY($1::text[]) "
            "OR (till_id, till_seq) IN (SELECT * FROM unnest($2::int[], $3::bigint[]))",
            [key for kind, _, key in wanted if kind == "key"],
            [till for till, _ in numbered],
            [seq for _, seq in numbered],
        )
    finally:
        await conn.close()
    seen = collections.Counter(_row_identity(r) for r in rows)
    problems = []
    for row in rows:
        sale = wanted.get(_row_identity(row))
        if sale is None:
            problems.append(f"sale {row['id']} has a till's key under another store")
        elif sale.state != SENT:
            problems.append(f"sale {row['id']} ({_row_identity(row)}) is stored but the till has it {sale.state}")
        elif (row["id"], row["item_id"], row["quantity"]) != (sale.server_id, sale.item_id, sale.quantity):
            problems.append(f"sale {row['id']} differs from the till's: {dict(row)} vs {sale}")
    problems += [f"sale {identity} stored {n} times" for identity, n in seen.items() if n > 1]
    sent = [identity for identity, s in wanted.items() if s.state == SENT]
    missing = [identity for identity in sent if identity not in seen]
    problems += [f"sale {identity} sent but not in the database" for identity in missing[:10]]
    returns = await _returns_check(database_url, ledgers)
    return {
        "rows": len(rows),
        "sent": len(sent),
        "missing": len(missing),
        "problems": problems + returns.pop("problems"),
        **returns,
    }


async def _returns_check(database_url: str, ledgers: Iterable[Ledger]) -> dict:
    """Every sent return of the ledgers in `returns` exactly once, under its key, with the id
    it was answered and its sale's id; no row of these keys the ledgers do not have as sent."""
    import asyncpg  # the simulator's side only

    wanted = {(ledger.store_id, r.idempotency_key): r for ledger in ledgers for r in ledger.returns}
    rows: list = []
    if wanted:
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch(
                "SELECT id, sale_id, store_id, quantity, idempotency_key FROM returns "
                "WHERE idempotency_key = ANY($1::text[])",
                [key for _, key in wanted],
            )
        finally:
            await conn.close()
    seen = collections.Counter((r["store_id"], r["idempotency_key"]) for r in rows)
    problems = []
    for row in rows:
        ret = wanted.get((row["store_id"], row["idempotency_key"]))
        if ret is None:
            problems.append(f"return {row['id']} has a till's key under another store")
        elif ret.state != SENT:
            problems.append(f"return {row['id']} ({row['idempotency_key']}) is stored but the till has it {ret.state}")
        elif (row["id"], row["sale_id"], row["quantity"]) != (ret.server_id, ret.sale_id, ret.quantity):
            problems.append(f"return {row['id']} differs from the till's: {dict(row)} vs {ret}")
    problems += [f"return key {key} of store {store} stored {n} times" for (store, key), n in seen.items() if n > 1]
    sent = [key for key, r in wanted.items() if r.state == SENT]
    missing = [key for key in sent if key not in seen]
    problems += [f"return {key} of store {store} sent but not in the database" for store, key in missing[:10]]
    return {"returns_rows": len(rows), "returns_sent": len(sent), "returns_missing": len(missing), "problems": problems}


def timezone(name: str):
    if name == "UTC" or zoneinfo is None:
        return dt.timezone.utc
    return zoneinfo.ZoneInfo(name)
