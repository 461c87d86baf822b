"""Returns made at the till (SalesClient.record_return): durable at once, sent only once the
server has their sale, set aside with it, retried with the same key; and the X-Till-Status
header every POST carries. The server is a script (tests/pos_client/scripted.py); the real API
and worker are in tests/pos_client/stack."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import sqlite3
import subprocess
import sys
import threading

import pytest

from pos_client import InvalidSale, SalesClient
from pos_client.sender import BATCH_PATH, RETURNS_BATCH_PATH, TILL_STATUS_HEADER, till_status
from pos_client.spool import Spool
from pos_client.transport import TransportError
from tests.pos_client.scripted import ScriptedTransport, accepted, answer, returns_accepted, unreachable

HEADER = re.compile(r"pending=(\d+); oldest=(\S*); clock_offset=(-?\d+\.\d{3})")


class Network:
    """Down until `up` is set: every request fails as with the cable pulled."""

    def __init__(self, respond):
        self.up = threading.Event()
        self.respond = respond

    def __call__(self, batch):
        if not self.up.is_set():
            unreachable(batch)
        return self.respond(batch)


def till(path, transport, **kwargs) -> SalesClient:
    return SalesClient(
        "http://127.0.0.1:9",
        store_id=3,
        spool=str(path),
        transport=transport,
        flush_interval=0.05,
        backoff_base=0.05,
        backoff_cap=0.2,
        **kwargs,
    )


def posts_to(server: ScriptedTransport, path: str) -> list[tuple[dict[str, str], list[dict]]]:
    return [(headers, body) for to, headers, body in server.posts if to == path]


def test_a_sale_made_offline_and_returned_before_the_network_is_back(tmp_path):
    sales, returns = Network(lambda b: accepted(b, 700)), Network(lambda b: returns_accepted(b, 900))
    server = ScriptedTransport(sales, returns)
    client = till(tmp_path / "spool.db", server)
    sale = client.record(item_id=5, quantity=2)
    returned = client.record_return(sale)
    assert (returned.sale_seq, returned.quantity) == (sale.seq, 1)
    assert not client.flush(timeout=0.3)
    status = client.status()
    assert (status.pending, status.returns_pending, status.returns_sent) == (1, 1, 0)
    sales.up.set()
    returns.up.set()
    assert client.flush(timeout=5)
    status = client.status()
    assert (status.pending, status.sent, status.returns_pending, status.returns_sent) == (0, 1, 0, 1)
    [(_, [sent])] = [(h, b) for h, b in posts_to(server, RETURNS_BATCH_PATH)]
    assert sent == {
        "sale_id": 700,  # the id the server gave the sale
        "quantity": 1,
        "return_time": returned.return_time,
        "store_id": 3,
        "idempotency_key": returned.idempotency_key,
    }
    [kept] = client._spool.returns_ledger()
    assert (kept.state, kept.server_id, kept.sale_id) == ("sent", 900, 700)
    client.close()


def test_a_return_goes_only_after_its_sale_got_its_id(tmp_path):
    """The sale is refused with 503 twice, then taken: nothing goes to the returns endpoint
    before that, and the return names the id the sale was given."""
    answers = iter([answer(503, {"error": "queue full"}), answer(503, {"error": "queue full"})])
    server = ScriptedTransport(lambda b: next(answers, None) or accepted(b, 41), lambda b: returns_accepted(b, 1))
    client = till(tmp_path / "spool.db", server)
    sale = client.record(item_id=1, quantity=3)
    client.record_return(sale, quantity=3)
    assert client.flush(timeout=10)
    paths = [path for path, _, _ in server.posts]
    assert paths == [BATCH_PATH, BATCH_PATH, BATCH_PATH, RETURNS_BATCH_PATH]
    assert posts_to(server, RETURNS_BATCH_PATH)[0][1][0]["sale_id"] == 41
    client.close()


def test_a_return_of_a_sale_still_queued_on_the_server_waits_without_holding_up_sales(tmp_path):
    """409 (the sale is not written yet): the return waits at least Retry-After and goes again
    with its key; a sale recorded meanwhile goes at once."""
    early = [
        answer(409, {"error": "1 returns cannot be accepted; none was", "errors": [{"index": 0}]}, retry_after="1")
    ]
    server = ScriptedTransport(lambda b: accepted(b, 10), lambda b: early.pop() if early else returns_accepted(b, 20))
    client = till(tmp_path / "spool.db", server)
    returned = client.record_return(client.record(item_id=1))
    server.wait_requests(2)  # the sale, then the return answered 409
    client.record(item_id=2)
    assert client.flush(timeout=0.8) is False  # the sale went; the return waits its second
    assert client.status().pending == 0 and client.status().returns_pending == 1
    assert client.flush(timeout=5)
    keys = [body[0]["idempotency_key"] for _, body in posts_to(server, RETURNS_BATCH_PATH)]
    assert keys == [returned.idempotency_key] * 2
    client.close()


def test_a_return_retried_after_5xx_and_lost_answers_keeps_its_key(tmp_path):
    failures = [answer(500, {"error": "boom"}), TransportError("timed out"), answer(503, {"error": "busy"})]

    def returns(batch):
        if failures:
            failure = failures.pop(0)
            if isinstance(failure, Exception):
                raise failure
            return failure
        return returns_accepted(batch, 77)

    server = ScriptedTransport(lambda b: accepted(b), returns)
    client = till(tmp_path / "spool.db", server)
    returned = client.record_return(client.record(item_id=1))
    assert client.flush(timeout=10)
    keys = {body[0]["idempotency_key"] for _, body in posts_to(server, RETURNS_BATCH_PATH)}
    assert keys == {returned.idempotency_key} and len(posts_to(server, RETURNS_BATCH_PATH)) == 4
    assert client._spool.returns_ledger()[0].server_id == 77
    client.close()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"quantity": 0}, "quantity must be an integer from 1 to 10000"),
        ({"quantity": 10_001}, "quantity must be an integer from 1 to 10000"),
        ({"quantity": True}, "quantity must be an integer"),
        ({"return_time": dt.datetime(2030, 1, 1)}, "timezone-aware"),
        ({"return_time": dt.datetime(2020, 1, 1, tzinfo=dt.UTC)}, "before the sale's"),
    ],
)
def test_a_return_the_server_would_refuse_is_not_recorded(tmp_path, kwargs, message):
    client = till(tmp_path / "spool.db", ScriptedTransport(unreachable))
    sale = client.record(item_id=1, quantity=2)
    with pytest.raises(InvalidSale, match=message):
        client.record_return(sale, **kwargs)
    with pytest.raises(InvalidSale, match="a return names its sale"):
        client.record_return(sale.idempotency_key)  # type: ignore[arg-type]
    with pytest.raises(InvalidSale, match="not in this till's spool"):  # another till's sale
        client.record_return(dataclasses.replace(sale, idempotency_key="01J0000000000000000000000A"))
    assert client.status().returns_pending == 0
    client.close()


def test_more_than_is_left_of_a_sale_is_refused_at_the_till(tmp_path):
    client = till(tmp_path / "spool.db", ScriptedTransport(unreachable))
    sale = client.record(item_id=1, quantity=3)
    client.record_return(sale, quantity=2)
    with pytest.raises(InvalidSale, match=r"1 of its 3 unit\(s\) left to return \(returned at this till: 2\), not 2"):
        client.record_return(sale, quantity=2)
    client.record_return(sale)
    with pytest.raises(InvalidSale, match="0 of its 3"):
        client.record_return(sale)
    assert client.status().returns_pending == 2
    client.close()


def test_a_return_of_a_sale_the_server_refused_is_set_aside_with_it(tmp_path):
    refusal = answer(422, {"error": "1 of 2 sales refused", "errors": [{"index": 0, "error": "unknown item_id 999"}]})
    answers = [refusal]
    server = ScriptedTransport(lambda b: answers.pop() if answers else accepted(b, 5), lambda b: returns_accepted(b))
    client = till(tmp_path / "spool.db", server)
    bad, good = client.record_many([(999, 1), (1, 1)])
    client.record_return(bad)
    client.record_return(good)
    assert client.flush(timeout=5)
    status = client.status()
    assert (status.set_aside, status.returns_set_aside, status.returns_sent, status.returns_pending) == (1, 1, 1, 0)
    [aside] = client.returns_set_aside()
    assert aside.sale_seq == bad.seq
    assert aside.reason == f"its sale (seq {bad.seq}) was set aside: unknown item_id 999"
    assert [body[0]["sale_id"] for _, body in posts_to(server, RETURNS_BATCH_PATH)] == [5]  # the good sale's
    listing = subprocess.run(
        [sys.executable, "-m", "pos_client", "status", "--spool", str(tmp_path / "spool.db")],
        check=False,
        capture_output=True,
        text=True,
    )
    assert "returns:   0 pending (their sale's included), 1 sent, 1 set aside" in listing.stdout, listing.stdout
    assert "unknown item_id 999" in listing.stdout.split("returns set aside")[1]
    client.close()


def test_a_return_the_server_refuses_is_set_aside_and_the_others_go(tmp_path):
    refusal = answer(
        422,
        {
            "error": "1 returns cannot be accepted; none was",
            "errors": [{"index": 1, "error": "sale 2 has 0 unit(s) left to return, not 1", "remaining": 0}],
        },
    )
    answers = [refusal]
    server = ScriptedTransport(lambda b: accepted(b), lambda b: answers.pop() if answers else returns_accepted(b, 50))
    client = till(tmp_path / "spool.db", server)
    for sale in client.record_many([(1, 1), (2, 1), (3, 1)]):
        client.record_return(sale)
    assert client.flush(timeout=5)
    assert [len(body) for _, body in posts_to(server, RETURNS_BATCH_PATH)] == [3, 2]
    assert [(r.state, r.reason) for r in client._spool.returns_ledger()] == [
        ("sent", None),
        ("refused", "sale 2 has 0 unit(s) left to return, not 1"),
        ("sent", None),
    ]
    assert "1 return(s) set aside" in client.status().last_error
    client.close()


def test_a_return_is_durable_across_a_close_and_goes_after_the_next_start(tmp_path):
    path = tmp_path / "spool.db"
    client = till(path, ScriptedTransport(unreachable))
    sale = client.record(item_id=4, quantity=2)
    returned = client.record_return(sale, quantity=2, return_time=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))
    # another connection (as after a crash of this process) sees it: committed when record_return returned
    other = sqlite3.connect(path)
    assert other.execute("SELECT idempotency_key, sale_seq, quantity, state FROM sale_return").fetchall() == [
        (returned.idempotency_key, sale.seq, 2, "pending")
    ]
    other.close()
    client.close()

    sales, returns = Network(lambda b: accepted(b, 30)), Network(lambda b: returns_accepted(b, 31))
    server = ScriptedTransport(sales, returns)
    again = till(path, server)
    assert again.status().returns_pending == 1  # (the network still down: nothing sent yet)
    with pytest.raises(InvalidSale, match="0 of its 2"):  # what was returned before the restart counts
        again.record_return(sale)
    sales.up.set()
    returns.up.set()
    assert again.flush(timeout=20)
    [(_, [sent])] = posts_to(server, RETURNS_BATCH_PATH)
    assert (sent["idempotency_key"], sent["sale_id"], sent["return_time"]) == (
        returned.idempotency_key,
        30,
        returned.return_time,
    )
    again.close()


def test_a_sale_is_kept_in_the_ledger_while_a_return_of_it_is(tmp_path):
    path = tmp_path / "spool.db"
    client = till(path, ScriptedTransport(lambda b: accepted(b), lambda b: returns_accepted(b)))
    client.record_return(client.record(item_id=1))
    client.record(item_id=2)
    assert client.flush(timeout=5)
    client.close()
    spool = Spool(str(path))
    spool._db.execute("UPDATE sale SET settled_at = settled_at - 7200")  # sold two hours ago, returned now
    assert spool.prune_sent(3600) == 1  # the sale not returned only
    assert [s.item_id for s in spool.ledger()] == [1]
    assert spool.prune_sent(-60) == 2  # the return, then its sale
    assert spool.ledger() == [] and spool.returns_ledger() == []
    spool.close()


def test_every_post_says_the_till_s_backlog_and_clock(tmp_path):
    path = tmp_path / "spool.db"
    spool = Spool(str(path), 3)
    spool.set_metas({"clock_offset": "-12.3456"})  # learnt before: the server's clock is behind
    spool.close()
    sales, returns = Network(lambda b: accepted(b)), Network(lambda b: returns_accepted(b))
    server = ScriptedTransport(sales, returns)
    client = till(path, server)
    earlier = dt.datetime(2026, 11, 20, 9, 30, tzinfo=dt.UTC)
    first = client.record(item_id=1)
    client.record(item_id=2, sale_time=earlier)  # recorded second, happened first
    client.record_return(first)
    server.wait_requests(1)  # tried while the network is down ...
    sales.up.set()
    returns.up.set()
    assert client.flush(timeout=5)  # ... and sent once it is back
    sales_headers = [h[TILL_STATUS_HEADER] for h, _ in posts_to(server, BATCH_PATH)]
    assert all(HEADER.fullmatch(h) for h in sales_headers), sales_headers
    assert sales_headers[-1] == "pending=3; oldest=2026-11-20T09:30:00.000000+00:00; clock_offset=-12.346"
    [(headers, _)] = posts_to(server, RETURNS_BATCH_PATH)
    assert headers[TILL_STATUS_HEADER] == "pending=1; oldest=; clock_offset=-12.346"  # only the return waits
    client.close()


def test_the_status_header_format():
    assert till_status(0, None, 0.0) == "pending=0; oldest=; clock_offset=0.000"
    assert till_status(7, "2026-11-20T09:30:00.000000+00:00", 1.23456) == (
        "pending=7; oldest=2026-11-20T09:30:00.000000+00:00; clock_offset=1.235"
    )
    assert till_status(1, None, -0.0001) == "pending=1; oldest=; clock_offset=0.000"  # no "-0.000"
    assert till_status(1, None, -3.5) == "pending=1; oldest=; clock_offset=-3.500"
