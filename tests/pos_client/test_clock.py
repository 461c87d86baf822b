"""The till's clock corrected by the server's Date: what sales are stamped with."""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import time

from pos_client import SalesClient
from pos_client.clock import ServerClock
from tests.pos_client.test_sending import base_url, close, flush, stored_rows


def _date(unix: float) -> str:
    return email.utils.formatdate(unix, usegmt=True)


def test_a_right_clock_is_left_alone_whatever_the_rounding():
    clock = ServerClock(wall=lambda: 1000.0)
    for server in (999.0, 1000.0, 1001.0):  # Date is whole seconds: within a second either way
        assert not clock.observe(_date(server), 1000.0, 1000.2)
        assert clock.offset == 0.0


def test_a_clock_90_s_fast_is_corrected_and_the_correction_kept_while_answers_agree():
    till = [1090.0]
    clock = ServerClock(wall=lambda: till[0])
    assert clock.observe(_date(1000.0), 1090.0, 1090.1)
    assert abs(clock.offset - (-89.55)) < 0.01  # Date + 0.5 s against the request's midpoint
    assert abs(clock.now().timestamp() - 1000.45) < 0.01
    till[0] = 1100.0
    assert not clock.observe(_date(1010.0), 1099.9, 1100.0)  # agrees within its uncertainty
    assert not clock.observe("not a date", 0, 1)
    assert clock.observe(_date(1100.0), 1100.0, 1100.1)  # fixed by someone: back to its own
    assert clock.offset == 0.0


def test_a_slow_answer_says_little():
    clock = ServerClock(wall=time.time)
    # 3 s off, but the answer took 6 s: the server's time is known only within 3.5 s
    assert not clock.observe(_date(2003.0), 2000.0, 2006.0)
    assert clock.offset == 0.0


async def test_a_till_90_s_fast_stamps_the_servers_time_and_keeps_it_across_a_restart(
    seed, client, drain, db, tmp_path
):
    await seed(items=3, stores=2)
    fast = lambda: time.time() + 90  # noqa: E731 - the till's wrong clock
    spool = str(tmp_path / "s.db")
    till = SalesClient(base_url(client), store_id=1, spool=spool, flush_interval=0.05, wall_clock=fast)
    await asyncio.to_thread(till.refresh_catalogue)  # one answer, one Date
    assert abs(till.status().clock_offset + 90) < 2
    recorded = till.record(item_id=1)
    assert abs(dt.datetime.fromisoformat(recorded.sale_time).timestamp() - time.time()) < 2
    assert await flush(till)
    await close(till)
    # restarted with no server to ask: the offset comes from the spool
    again = SalesClient("http://127.0.0.1:9", store_id=1, spool=spool, flush_interval=60, wall_clock=fast)
    offline = again.record(item_id=2)
    assert abs(dt.datetime.fromisoformat(offline.sale_time).timestamp() - time.time()) < 2
    await close(again)
    await drain()
    (row,) = await stored_rows(db, [recorded.idempotency_key])
    assert abs(row["sale_time"].timestamp() - time.time()) < 5 and row["store_id"] == 1
