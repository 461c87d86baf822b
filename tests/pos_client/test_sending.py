"""The client against the real API (in this process, on a loopback port) on the real
PostgreSQL and Redis: stored once whatever is lost on the way, bad sales set aside, keys
refused. The client is synchronous: its blocking calls run in a thread beside the server's loop."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys

import pytest

from api.app import create_app
from pos_client import SalesClient
from pos_client.spool import Spool
from pos_client.transport import HttpTransport, TransportError
from shared import keys
from tests.conftest import ADMIN_TOKEN


class LosesAnswers(HttpTransport):
    """The request reaches the server, the answer never reaches the till (a cable pulled at the
    wrong moment, or the till dying before it wrote the answer down)."""

    def __init__(self, base_url: str, lose: int):
        super().__init__(base_url)
        self.lose = lose
        self.sent = 0

    def request(self, *args, **kwargs):
        answer = super().request(*args, **kwargs)
        self.sent += 1
        if self.sent <= self.lose:
            raise TransportError(f"answer {self.sent} lost (test)")
        return answer


def base_url(client) -> str:
    return str(client.make_url("")).rstrip("/")


async def stored_rows(db, keys_: list[str], spool: str | None = None) -> list:
    """The stored sales of these keys: by key, or for a till that numbers its sales (a pos key
    with AUTH_REQUIRED=true), by the numbers its ledger (the spool at that path) gave them."""
    till = Spool(spool) if spool else None
    ledger = till.ledger() if till else []
    if till:
        till.close()
    numbered = {(s.till_id, s.till_seq): s.idempotency_key for s in ledger if s.till_seq and s.idempotency_key in keys_}
    rows = await db.fetch(
        "SELECT id, store_id, item_id, quantity, sale_time, idempotency_key, till_id, till_seq FROM sales "
        "WHERE idempotency_key = ANY($1::text[]) "
        "OR (till_id, till_seq) IN (SELECT * FROM unnest($2::int[], $3::bigint[])) ORDER BY id",
        keys_,
        [till_id for till_id, _ in numbered],
        [seq for _, seq in numbered],
    )
    return [
        {**row, "idempotency_key": row["idempotency_key"] or numbered[row["till_id"], row["till_seq"]]} for row in rows
    ]


async def flush(client: SalesClient, timeout: float = 20) -> bool:
    return await asyncio.to_thread(client.flush, timeout)


async def close(client: SalesClient) -> None:
    await asyncio.to_thread(client.close)


@pytest.fixture
async def shop(seed):
    await seed(items=5, stores=4)


async def test_sales_are_stored_once_with_their_ids_and_times(shop, client, drain, db, tmp_path):
    till = SalesClient(base_url(client), store_id=2, spool=str(tmp_path / "s.db"), flush_interval=0.05)
    recorded = till.record_many([(1 + i % 5, 1 + i % 3) for i in range(30)])
    assert await flush(till)
    await drain()
    rows = await stored_rows(db, [s.idempotency_key for s in recorded])
    ledger = {s.idempotency_key: s for s in till._spool.ledger()}
    assert len(rows) == 30
    for row in rows:
        sale = ledger[row["idempotency_key"]]
        assert (row["id"], row["store_id"], row["item_id"], row["quantity"]) == (
            sale.server_id,
            2,
            sale.item_id,
            sale.quantity,
        )
        assert row["sale_time"].isoformat(timespec="microseconds") == sale.sale_time
    await close(till)


async def test_lost_answers_mean_the_same_sales_again_stored_once(shop, client, drain, db, tmp_path):
    transport = LosesAnswers(base_url(client), lose=2)
    till = SalesClient(
        base_url(client),
        store_id=1,
        spool=str(tmp_path / "s.db"),
        transport=transport,
        flush_interval=0.05,
        backoff_base=0.05,
    )
    recorded = till.record_many([(1, 1), (2, 2), (3, 3)])
    assert await flush(till)
    assert transport.sent == 3  # twice taken with no answer, then answered
    await drain()
    rows = await stored_rows(db, [s.idempotency_key for s in recorded])
    assert len(rows) == 3
    assert sorted(r["id"] for r in rows) == sorted(s.server_id for s in till._spool.ledger())
    await close(till)


async def test_till_dies_after_the_server_took_a_batch_and_starts_again(shop, client, drain, db, tmp_path):
    spool = str(tmp_path / "s.db")
    dying = SalesClient(
        base_url(client),
        store_id=3,
        spool=spool,
        transport=LosesAnswers(base_url(client), lose=99),
        flush_interval=0.05,
        backoff_base=5,
    )
    recorded = dying.record_many([(1 + i % 5, 1) for i in range(50)])
    while dying._transport.sent < 1:
        await asyncio.sleep(0.02)
    await close(dying)  # nothing was marked sent: as after a crash
    again = SalesClient(base_url(client), store_id=3, spool=spool, flush_interval=0.05)
    assert again.status().pending == 50
    assert await flush(again)
    await drain()
    rows = await stored_rows(db, [s.idempotency_key for s in recorded])
    assert len(rows) == 50 and len({r["idempotency_key"] for r in rows}) == 50
    await close(again)


async def test_unknown_item_is_set_aside_listed_and_not_retried(shop, client, drain, db, tmp_path):
    spool = str(tmp_path / "s.db")
    till = SalesClient(base_url(client), store_id=1, spool=spool, flush_interval=0.05)
    recorded = till.record_many([(1, 1), (999, 2), (2, 1)])
    assert await flush(till)
    status = till.status()
    assert (status.sent, status.set_aside, status.pending) == (2, 1, 0)
    assert "unknown item_id 999" in status.last_error
    [aside] = till.set_aside()
    assert aside.item_id == 999 and aside.reason == "unknown item_id 999"
    listing = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "pos_client", "status", "--spool", spool],
        check=False,
        capture_output=True,
        text=True,
    )
    assert "set aside: 1" in listing.stdout and "unknown item_id 999" in listing.stdout, listing.stdout
    till.record(item_id=3)
    assert await flush(till)
    assert till.status().set_aside == 1 and till.status().sent == 3
    await drain()
    rows = await stored_rows(db, [s.idempotency_key for s in recorded])
    assert sorted(r["item_id"] for r in rows) == [1, 2]
    await close(till)


async def test_a_till_prices_from_its_copy_of_the_catalogue_and_keeps_it_current(shop, client, drain, db, tmp_path):
    """The price goes to 120 after the till fetched its copy (100): sold at 100, it counts at
    100, the list price 120 beside it. The copy is fetched again only when it changed (ETag)."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert (await client.patch("/catalogue/items/1", json={"price": 100}, headers=admin)).status == 200
    till = SalesClient(
        base_url(client), store_id=1, spool=str(tmp_path / "s.db"), flush_interval=3600, catalogue_interval=3600
    )
    assert await asyncio.to_thread(till.refresh_catalogue)
    etag = till._spool.meta("catalogue_etag")
    assert etag
    assert (await client.patch("/catalogue/items/1", json={"price": 120}, headers=admin)).status == 200
    sold = till.record(item_id=1, quantity=2)
    discounted = till.record(item_id=2, unit_price=5)
    assert (sold.unit_price, discounted.unit_price) == (100, 5)
    assert await flush(till)
    await drain()
    rows = {r["item_id"]: r for r in await db.fetch("SELECT item_id, price, list_price, quantity FROM sales")}
    assert (rows[1]["price"], rows[1]["list_price"], rows[1]["quantity"]) == (100, 120, 2)
    assert rows[2]["price"] == 5
    assert await asyncio.to_thread(till.refresh_catalogue)  # changed: fetched again
    assert till._spool.meta("catalogue_etag") != etag
    assert till.record(item_id=1).unit_price == 120
    etag = till._spool.meta("catalogue_etag")
    assert await asyncio.to_thread(till.refresh_catalogue)  # unchanged: 304, the copy stays
    assert till._spool.meta("catalogue_etag") == etag
    await close(till)


@pytest.fixture
async def pos_keys(shop, db):
    return {store: await keys.issue(db, "pos", store, f"store {store} till") for store in (1, 2)}


@pytest.fixture
async def auth_client(aiohttp_client, settings, pos_keys):
    return await aiohttp_client(create_app(dataclasses.replace(settings, auth_required=True)))


async def test_revoked_key_stops_sending_until_a_new_key(auth_client, pos_keys, db, drain, tmp_path):
    old = pos_keys[2]
    till = SalesClient(
        base_url(auth_client),
        old.key,
        allow_plain_http=True,  # the test server is on loopback
        store_id=2,
        spool=str(tmp_path / "s.db"),
        flush_interval=0.05,
    )
    recorded = [till.record(item_id=1)]
    assert await flush(till)
    await keys.revoke(db, old.prefix)
    for _ in range(40):  # a revocation reaches every API process within 5 s; the till sells on
        recorded.append(till.record(item_id=2))
        if not await flush(till, timeout=0.25) and till.status().stopped:
            break
    status = till.status()
    assert "401" in status.stopped and "unknown or revoked key" in status.stopped
    assert status.pending >= 1
    new = await keys.issue(db, "pos", 2, "till 1, new key", till_id=old.till_id)  # the same till: its numbers go on
    till.resume(key=new.key)
    for _ in range(40):  # the new key reaches the API within 5 s too
        if await flush(till, timeout=0.25):
            break
        till.resume()
    assert till.status().pending == 0
    await drain()
    assert len(await stored_rows(db, [s.idempotency_key for s in recorded], till._spool.path)) == len(recorded)
    await close(till)


async def test_a_key_of_another_store_stops_sending(auth_client, pos_keys, tmp_path):
    other = pos_keys[1]
    till = SalesClient(
        base_url(auth_client),
        other.key,
        allow_plain_http=True,
        store_id=2,
        spool=str(tmp_path / "s.db"),
        flush_interval=0.05,
    )
    till.record(item_id=1)
    assert not await flush(till, timeout=10)
    assert "403" in till.status().stopped and "store 1 only" in till.status().stopped
    await close(till)


async def test_a_return_made_offline_reaches_the_server_after_its_sale(shop, client, drain, db, tmp_path):
    """Sold and partly returned while the server was away: the sale goes first, the return
    names the sale's id (waiting out the 409s while the sale is still queued), stored once."""
    till = SalesClient(base_url(client), store_id=2, spool=str(tmp_path / "s.db"), flush_interval=0.05)
    sale = till.record(item_id=3, quantity=3)
    returned = till.record_return(sale, quantity=2)
    flushing = asyncio.ensure_future(asyncio.to_thread(till.flush, 30))
    while not flushing.done():  # the worker's part: the sale is written, then the return
        await drain()
        await asyncio.sleep(0.05)
    assert flushing.result()
    await drain()
    [stored_sale] = await stored_rows(db, [sale.idempotency_key])
    [row] = await db.fetch("SELECT id, sale_id, store_id, quantity, idempotency_key FROM returns")
    [kept] = till._spool.returns_ledger()
    assert (row["id"], row["sale_id"], row["store_id"], row["quantity"], row["idempotency_key"]) == (
        kept.server_id,
        stored_sale["id"],
        2,
        2,
        returned.idempotency_key,
    )
    assert till.status().returns_sent == 1
    await close(till)
