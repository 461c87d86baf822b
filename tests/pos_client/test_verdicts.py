"""What each answer means for a batch, and a refused batch split so the good sales go through."""

from __future__ import annotations

from pos_client import SalesClient
from pos_client.spool import SpooledSale
from pos_client.verdicts import judge
from tests.pos_client.scripted import ScriptedTransport, accepted, answer


def sales(n: int) -> list[SpooledSale]:
    return [SpooledSale(i + 1, f"k{i + 1}", 10 + i, 1, "2026-11-27T10:00:00.000000+00:00") for i in range(n)]


def test_accepted_batch_gives_each_sale_its_server_id():
    batch = sales(3)
    verdict = judge(batch, accepted([s.as_json(1) for s in batch], first_id=500))
    assert verdict.sent == [(1, 500), (2, 501), (3, 502)]
    assert not (verdict.retry or verdict.refused or verdict.send_again)


def test_accepted_with_an_unreadable_answer_is_sent_again():
    verdict = judge(sales(3), answer(202, [{"id": 1}]))
    assert verdict.retry and not verdict.sent


def test_422_by_index_sets_aside_the_bad_and_sends_the_rest_at_once():
    batch = sales(5)
    verdict = judge(
        batch,
        answer(
            422,
            {
                "error": "2 of 5 sales are invalid; none was accepted",
                "errors": [
                    {"index": 1, "error": "unknown item_id 11"},
                    {"index": 3, "error": "sale_time is before 2000-01-01"},
                ],
            },
        ),
    )
    assert verdict.refused == [(2, "unknown item_id 11"), (4, "sale_time is before 2000-01-01")]
    assert verdict.send_again == [[batch[0], batch[2], batch[4]]]
    assert not verdict.retry


def test_a_sale_older_than_the_servers_limit_is_set_aside_not_held():
    """A till whose clock fell back: the server's 422 names MAX_SALE_AGE_DAYS; the sale is set aside
    with that reason (not held as a clock running ahead), the others go on."""
    batch = sales(2)
    reason = (
        "sale_time 2000-01-02T10:00:00+00:00 is more than 400 days ago, the most this server accepts "
        "(MAX_SALE_AGE_DAYS); the oldest accepted now is 2025-10-31T10:00:00+00:00"
    )
    verdict = judge(
        batch, answer(422, {"error": "1 of 2 sales are invalid", "errors": [{"index": 0, "error": reason}]})
    )
    assert verdict.refused == [(1, reason)]
    assert not verdict.held
    assert verdict.send_again == [[batch[1]]]


def test_422_for_a_clock_ahead_holds_the_sale_instead_of_refusing_it():
    batch = sales(2)
    verdict = judge(
        batch, answer(422, {"error": "1 of 2", "errors": [{"index": 0, "error": "sale_time is in the future"}]})
    )
    assert verdict.held == [batch[0]] and verdict.refused == [] and verdict.send_again == [[batch[1]]]


def test_refusal_that_names_no_sale_halves_the_batch():
    batch = sales(5)
    for refusal in (answer(422, {"error": "invalid"}), answer(400, {"error": "malformed"}), answer(413, None)):
        verdict = judge(batch, refusal)
        assert verdict.send_again == [batch[:2], batch[2:]]
    lone = judge(batch[:1], answer(400, {"error": "malformed JSON"}))
    assert lone.refused == [(1, "400: malformed JSON")]


def test_401_and_403_stop_sending():
    for status in (401, 403):
        verdict = judge(sales(1), answer(status, {"error": "unknown or revoked key"}))
        assert verdict.stop and "unknown or revoked key" in verdict.stop and not verdict.refused


def test_5xx_and_429_are_tried_again_later_as_the_server_says():
    verdict = judge(sales(1), answer(503, {"error": "Redis away"}, retry_after="7"))
    assert verdict.retry and verdict.retry_after == 7.0 and verdict.error == "503: Redis away"
    assert judge(sales(1), answer(429, None)).retry
    assert judge(sales(1), answer(500, None)).retry


def test_client_isolates_a_bad_sale_the_server_does_not_name(tmp_path):
    """A server that refuses a whole batch without saying which sale: 1 bad sale of 64 costs
    2 * log2(64) extra requests, and the 63 good ones are stored."""

    def respond(batch):
        if any(s["item_id"] == 99 for s in batch):
            return answer(422, {"error": "a sale is invalid"})
        return accepted(batch)

    server = ScriptedTransport(respond)
    client = SalesClient("http://x", store_id=1, spool=str(tmp_path / "s.db"), transport=server, flush_interval=0.05)
    client.record_many([(1 + i % 5, 1) for i in range(40)] + [(99, 1)] + [(2, 1)] * 23)
    assert client.flush(timeout=10)
    status = client.status()
    assert (status.sent, status.set_aside, status.pending) == (63, 1, 0)
    [refused] = client.set_aside()
    assert refused.item_id == 99 and refused.reason == "422: a sale is invalid"
    assert len(server.requests) <= 1 + 2 * 6
    count = len(server.requests)
    client.record(item_id=3)
    assert client.flush(timeout=10)
    assert all(s["item_id"] != 99 for _, batch in server.requests[count:] for s in batch)  # never again
    client.close()


def test_client_sends_a_backlog_in_batches_of_at_most_1000(tmp_path):
    server = ScriptedTransport(lambda batch: accepted(batch))
    client = SalesClient("http://x", store_id=1, spool=str(tmp_path / "s.db"), transport=server, flush_interval=5)
    client.record_many([(1, 1)] * 2500)
    assert client.flush(timeout=10)  # flush wakes the sender: no wait for the 5 s interval
    assert [len(batch) for _, batch in server.requests] == [1000, 1000, 500]
    client.close()


def test_a_refused_key_stops_sending_and_says_so(tmp_path):
    server = ScriptedTransport(lambda batch: answer(401, {"error": "unknown or revoked key"}))
    client = SalesClient(
        "https://x", key="sk_pos_x.y", store_id=1, spool=str(tmp_path / "s.db"), transport=server, flush_interval=0.05
    )
    client.record(item_id=1)
    assert not client.flush(timeout=10)
    status = client.status()
    assert status.stopped and "401: unknown or revoked key" in status.stopped and status.pending == 1
    client.record(item_id=2)  # recording goes on: the sales wait on disk for a valid key
    assert not client.flush(timeout=10)
    assert len(server.requests) == 1
    server.respond = lambda batch: accepted(batch)
    client.resume(key="sk_pos_new.key")
    assert client.flush(timeout=10)
    assert client.status().stopped is None and client.status().sent == 2
    client.close()
