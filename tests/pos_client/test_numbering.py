"""A till numbers its sales (docs/guarantees.md, "Tills"): above the highest the server holds
of it, just before a sale's first attempt and durably, the same number at every retry, in the
order sent; a sale the server did not store gives its number up. The server is a script
(tests/pos_client/scripted.py); tests/test_till_sales.py has the server's side."""

from __future__ import annotations

import datetime as dt

from pos_client import SalesClient
from pos_client.sender import BATCH_PATH, TILL_PATH
from pos_client.spool import Spool
from tests.pos_client.scripted import ScriptedTransport, accepted, answer, unreachable

KEY = "sk_pos_Abcd1234.secret"


class TillServer(ScriptedTransport):
    """A script that also answers GET /tills/me: till `till_id` whose highest number is `highest`."""

    def __init__(self, respond, till_id=7, highest=41, me_status=200):
        super().__init__(respond)
        self.till_id, self.highest, self.me_status = till_id, highest, me_status
        self.asked = 0

    def request(self, method, path, body=None, headers=None):
        if method == "GET" and path == TILL_PATH:
            self.asked += 1
            if self.me_status != 200:
                return answer(self.me_status, {"error": "this answers a till"})
            return answer(200, {"till_id": self.till_id, "store_id": 3, "last_seq": self.highest})
        return super().request(method, path, body, headers)


def till(path, transport, key=KEY) -> SalesClient:
    return SalesClient(
        "http://127.0.0.1:9",
        key,
        store_id=3,
        spool=str(path),
        transport=transport,
        flush_interval=0.05,
        backoff_base=0.05,
        backoff_cap=0.2,
        allow_plain_http=True,
    )


def sent_batches(server: ScriptedTransport) -> list[list[dict]]:
    return [body for path, _, body in server.posts if path == BATCH_PATH]


def numbers(batch: list[dict]) -> list[int | None]:
    return [sale.get("seq") for sale in batch]


def test_sales_recorded_before_the_first_contact_are_numbered_above_the_servers_highest(tmp_path):
    server = TillServer(lambda b: accepted(b, 100), highest=41)
    client = till(tmp_path / "s.db", server)
    client.record_many([(1, 1), (2, 1), (3, 2)])
    assert client.flush(20)
    [batch] = sent_batches(server)
    assert numbers(batch) == [42, 43, 44]
    assert all("idempotency_key" not in sale for sale in batch)
    client.record(item_id=4)
    assert client.flush(20)
    assert numbers(sent_batches(server)[-1]) == [45]
    assert server.asked == 1  # once per start
    client.close()
    spool = Spool(str(tmp_path / "s.db"))
    assert [(s.till_seq, s.server_id) for s in spool.ledger()] == [(42, 100), (43, 101), (44, 102), (45, 100)]
    assert spool.till_id() == 7
    spool.close()


def test_a_retry_carries_the_same_numbers_and_newer_sales_come_after(tmp_path):
    answers = [answer(503, {"error": "busy"}, retry_after="0"), None]
    server = TillServer(lambda b: answers.pop(0) or accepted(b, 1), highest=0)
    client = till(tmp_path / "s.db", server)
    client.record_many([(1, 1), (2, 1)])
    server.wait_requests(1)
    client.record(item_id=3)  # recorded while the first batch waits for its retry
    assert client.flush(20)
    first, second = sent_batches(server)[:2]
    assert numbers(first) == [1, 2]
    assert numbers(second)[:2] == [1, 2] and numbers(sent_batches(server)[-1])[-1] == 3
    client.close()


def test_a_refused_sale_gives_its_number_up_and_a_requeued_one_gets_a_new(tmp_path):
    def respond(batch):
        if any(sale["item_id"] == 9 for sale in batch):
            bad = [i for i, sale in enumerate(batch) if sale["item_id"] == 9]
            return answer(422, {"error": "1 of 3", "errors": [{"index": i, "error": "unknown item_id 9"} for i in bad]})
        return accepted(batch, 10)

    server = TillServer(respond, highest=5)
    client = till(tmp_path / "s.db", server)
    client.record_many([(1, 1), (9, 1), (2, 1)])
    assert client.flush(20)
    assert [numbers(b) for b in sent_batches(server)] == [[6, 7, 8], [6, 8]]
    [refused] = client.set_aside()
    assert refused.till_seq is None
    client._spool.requeue([refused.seq])
    client._sender.wake()
    server.respond = lambda b: accepted(b, 20)
    assert client.flush(20)
    assert numbers(sent_batches(server)[-1]) == [9]
    client.close()


def test_a_sale_held_for_the_clock_gives_its_number_up(tmp_path):
    holds = [answer(422, {"error": "1 of 1", "errors": [{"index": 0, "error": "sale_time is in the future"}]})]
    server = TillServer(lambda b: holds.pop() if holds and len(b) == 1 else accepted(b, 30), highest=0)
    client = till(tmp_path / "s.db", server)
    ahead = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    client.record(item_id=1, sale_time=ahead)
    server.wait_requests(1)
    client.record(item_id=2)
    assert client.flush(20)
    sent = [numbers(b) for b in sent_batches(server)]
    assert sent[0] == [1] and sent[1] == [2] and sent[-1] == [3]  # the held one, last, with a new number
    client.close()


def test_without_a_till_the_sales_go_with_their_keys(tmp_path):
    for key, status in ((None, 200), (KEY, 403), (KEY, 404)):
        server = TillServer(lambda b: accepted(b, 1), me_status=status)
        client = till(tmp_path / f"s-{status}-{key is None}.db", server, key=key)
        client.record(item_id=1)
        assert client.flush(20)
        [batch] = sent_batches(server)
        assert "seq" not in batch[0] and batch[0]["idempotency_key"]
        assert server.asked == (0 if key is None else 1)
        client.close()


def test_sales_recorded_while_the_spool_sent_keys_keep_them(tmp_path):
    """A spool that sent with keys (an older server, open mode) and then learns its key is a
    till's: the sales it had may have been tried with their keys, so they keep them."""
    server = TillServer(unreachable, me_status=404)
    client = till(tmp_path / "s.db", server)
    client.record(item_id=1)
    server.wait_requests(1)  # tried with its key, no answer
    client.close()
    server = TillServer(lambda b: accepted(b, 50), highest=3)
    client = till(tmp_path / "s.db", server)
    assert client.flush(20)  # the waiting sale, with its key; and the key is a till's now
    client.record(item_id=2)
    assert client.flush(20)
    client.close()
    sent = [sale for batch in sent_batches(server) for sale in batch]
    assert numbers(sent) == [None, 4] and sent[0]["idempotency_key"]


def test_stored_already_counts_a_retried_number_as_sent_and_stops_on_a_fresh_one(tmp_path):
    """409 "stored already" for a number sent before (its answer lost long ago): counted, with
    no id. For a number never sent before: not this till's; sending stops, nothing is lost."""
    stored = answer(409, {"error": "1 of 2 sales are stored already", "errors": [{"index": 0, "error": "stored"}]})
    replies = [stored, answer(503, {"error": "busy"}, retry_after="0")]
    server = TillServer(lambda b: replies.pop() if replies else accepted(b, 60), highest=0)
    client = till(tmp_path / "s.db", server)
    client.record_many([(1, 1), (2, 1)])
    assert client.flush(20)
    assert [(s.state, s.server_id) for s in client._spool.ledger()] == [("sent", None), ("sent", 60)]
    assert "409" in client.status().last_error
    server.respond = lambda b: stored
    client.record(item_id=3)
    assert not client.flush(20)  # returns as soon as sending stops
    assert "the server holds numbers this till never sent" in client.status().stopped
    assert client.status().pending == 1
    client.close()


def test_another_sale_under_a_number_stops_sending(tmp_path):
    taken = "sale 1 of till 7 is another sale than the one stored under that number: does another till send..."
    server = TillServer(lambda b: answer(409, {"error": "1 of 1", "errors": [{"index": 0, "error": taken}]}))
    client = till(tmp_path / "s.db", server)
    client.record(item_id=1)
    assert not client.flush(20)  # returns as soon as sending stops
    assert taken in client.status().stopped and client.status().pending == 1
    client.close()


def test_a_key_of_another_till_waits_for_the_numbers_sent_as_the_first(tmp_path):
    """Sales sent as till 7 with no answer yet: a key of till 8 would number them again (counted
    twice if till 7's were stored); sending stops until the till gets a key of till 7."""
    server = TillServer(lambda b: answer(401, {"error": "unknown or revoked key"}), till_id=7, highest=10)
    client = till(tmp_path / "s.db", server)
    client.record(item_id=1)
    server.wait_requests(1)
    assert numbers(sent_batches(server)[0]) == [11]
    server.till_id, server.highest = 8, 2
    client.resume("sk_pos_Other123.secret")
    assert not client.flush(20)  # returns as soon as sending stops
    assert "give this till a key of that till (python -m shared.keys issue --till 7)" in client.status().stopped
    server.till_id = 7  # a key issued with --till 7
    server.respond = lambda b: accepted(b, 70)
    client.resume("sk_pos_Renewed1.secret")
    assert client.flush(20)
    assert numbers(sent_batches(server)[-1]) == [11]
    client.record(item_id=2)
    assert client.flush(20)
    assert numbers(sent_batches(server)[-1]) == [12]
    client.close()
