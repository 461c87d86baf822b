"""Backoff with jitter, Retry-After honoured: the numbers, and the client living by them."""

from __future__ import annotations

import email.utils
import random
import time

import pytest

from pos_client import SalesClient
from pos_client.backoff import Backoff, parse_retry_after
from pos_client.transport import TransportError
from tests.pos_client.scripted import ScriptedTransport, accepted, answer


def test_delays_double_up_to_the_cap_each_in_the_upper_half():
    backoff = Backoff(base=0.5, cap=30, rng=random.Random(1).random)
    delays = [backoff.next_delay() for _ in range(12)]
    ceilings = [min(30, 0.5 * 2**i) for i in range(12)]
    for delay, ceiling in zip(delays, ceilings):
        assert ceiling / 2 <= delay <= ceiling
    assert max(delays) <= 30
    backoff.reset()
    assert backoff.next_delay() <= 0.5


def test_jitter_spreads_tills_that_failed_together():
    tills = [Backoff(base=0.5, cap=30, rng=random.Random(seed).random) for seed in range(100)]
    for till in tills:
        for _ in range(5):
            till.next_delay()
    fifth = sorted(till.next_delay() for till in tills)  # the 6th delay of each: ceiling 16 s
    assert fifth[0] >= 8 and fifth[-1] <= 16
    assert fifth[-1] - fifth[0] > 4  # not all at the same moment


def test_retry_after_is_never_cut_short_and_spread_a_little():
    backoff = Backoff(base=0.5, cap=30, rng=random.Random(2).random)
    delays = [backoff.next_delay(retry_after=5) for _ in range(3)]
    assert all(5 <= d <= 6.25 for d in delays)
    assert len(set(delays)) == 3


@pytest.mark.parametrize(
    "header, seconds",
    [
        ("5", 5.0),
        (" 2 ", 2.0),
        ("0", 0.0),
        ("999999", 3600.0),
        (None, None),
        ("soon", None),
        ("-3", None),
        ("", None),
    ],
)
def test_parse_retry_after_seconds(header, seconds):
    assert parse_retry_after(header) == seconds


def test_parse_retry_after_http_date():
    now = time.time()
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0


def test_client_waits_for_retry_after_then_sends(tmp_path):
    answers = iter([answer(503, {"error": "too many sales are waiting"}, retry_after="1")])

    def respond(batch):
        return next(answers, None) or accepted(batch)

    server = ScriptedTransport(respond)
    client = SalesClient(
        "http://x", store_id=1, spool=str(tmp_path / "s.db"), transport=server, flush_interval=0.05, backoff_base=0.05
    )
    client.record(item_id=1)
    assert client.flush(timeout=10)
    (first, _), (second, _) = server.requests
    assert 1.0 <= second - first <= 1.5
    assert client.status().last_error == "503: too many sales are waiting"
    client.close()


def test_client_backs_off_while_the_server_is_unreachable(tmp_path):
    down_until = time.monotonic() + 1.5

    def respond(batch):
        if time.monotonic() < down_until:
            raise TransportError("ConnectionRefusedError")
        return accepted(batch)

    server = ScriptedTransport(respond)
    client = SalesClient(
        "http://x",
        store_id=1,
        spool=str(tmp_path / "s.db"),
        transport=server,
        flush_interval=0.05,
        backoff_base=0.1,
        backoff_cap=0.8,
    )
    client.record(item_id=1)
    assert not client.flush(timeout=0.5)
    assert client.status().online is False and "ConnectionRefusedError" in client.status().last_error
    assert client.flush(timeout=10)
    gaps = [b - a for (a, _), (b, _) in zip(server.requests, server.requests[1:])]
    assert len(server.requests) <= 8  # 0.05, 0.1, 0.2, 0.4, 0.8, ...: not a busy loop
    assert all(gap >= 0.04 for gap in gaps)
    client.close()
