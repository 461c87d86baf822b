"""The spool: durable at once, one store, one client, a crash between send and mark resends."""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
import subprocess
import sys
import time

import pytest

from pos_client import InvalidSale, SalesClient, SpoolError
from pos_client.ids import new_key
from pos_client.spool import Spool
from tests.pos_client.scripted import ScriptedTransport, accepted, unreachable


def offline_client(path, transport=None, **kwargs) -> SalesClient:
    return SalesClient(
        "http://127.0.0.1:9",
        store_id=kwargs.pop("store_id", 3),
        spool=str(path),
        transport=transport or ScriptedTransport(unreachable),
        **kwargs,
    )


def test_a_recorded_sale_is_committed_when_record_returns(tmp_path):
    client = offline_client(tmp_path / "spool.db")
    sale = client.record(item_id=24, quantity=2)
    # another connection (as after a crash of this process) sees it: it is committed, not buffered
    other = sqlite3.connect(tmp_path / "spool.db")
    assert other.execute("SELECT idempotency_key, item_id, quantity, state FROM sale").fetchall() == [
        (sale.idempotency_key, 24, 2, "pending")
    ]
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other.close()
    assert client._spool._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: fsync at every commit
    client.close()


def test_sale_time_is_taken_when_recorded_not_when_sent(tmp_path):
    client = offline_client(tmp_path / "spool.db")
    before = dt.datetime.now(dt.UTC)
    sale = client.record(item_id=1)
    after = dt.datetime.now(dt.UTC)
    assert before <= dt.datetime.fromisoformat(sale.sale_time) <= after
    given = dt.datetime(2026, 11, 20, 18, 5, tzinfo=dt.timezone(dt.timedelta(hours=3)))
    assert client.record(item_id=1, sale_time=given).sale_time == "2026-11-20T15:05:00.000000+00:00"
    client.close()


def test_keys_are_ulids_made_once_per_sale(tmp_path):
    keys = {new_key() for _ in range(10_000)}
    assert len(keys) == 10_000
    assert all(re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{26}", k) for k in keys)
    assert new_key(now_ms=1) < new_key(now_ms=2)  # time-ordered
    client = offline_client(tmp_path / "spool.db")
    recorded = client.record_many([(1, 1), (2, 1), (3, 2)])
    assert len({s.idempotency_key for s in recorded}) == 3
    client.close()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"item_id": 0}, "item_id must be an integer from 1"),
        ({"item_id": "24"}, "item_id must be an integer"),
        ({"item_id": True}, "item_id must be an integer"),
        ({"item_id": 1, "quantity": 0}, "quantity must be an integer from 1 to 10000"),
        ({"item_id": 1, "quantity": 10_001}, "quantity must be an integer from 1 to 10000"),
        ({"item_id": 1, "sale_time": dt.datetime(2026, 1, 1)}, "timezone-aware"),
        ({"item_id": 1, "sale_time": "2026-01-01T00:00:00Z"}, "timezone-aware datetime"),
        ({"item_id": 1, "sale_time": dt.datetime(1999, 12, 31, tzinfo=dt.UTC)}, "before 2000"),
    ],
)
def test_a_sale_the_server_would_always_refuse_is_not_recorded(tmp_path, kwargs, message):
    client = offline_client(tmp_path / "spool.db")
    with pytest.raises(InvalidSale, match=message):
        client.record(**kwargs)
    assert client.status().pending == 0
    client.close()


def test_a_spool_belongs_to_one_store_and_one_client(tmp_path):
    path = tmp_path / "spool.db"
    client = offline_client(path)
    with pytest.raises(SpoolError, match="in use by another SalesClient"):
        offline_client(path)
    client.close()
    with pytest.raises(SpoolError, match="holds sales of store 3, not of store 4"):
        offline_client(path, store_id=4)
    offline_client(path).close()  # the lock went with the first client


def test_crash_between_send_and_mark_sends_the_same_sales_again(tmp_path):
    """The server took the batch, the till died before writing that down: at the next start the
    same sales go again with the same keys (the server stores them once: test_sending.py)."""
    path = tmp_path / "spool.db"
    client = offline_client(path)
    recorded = client.record_many([(1, 1), (2, 3)])
    client.close()

    spool = Spool(str(path), 3)
    taken = spool.pending(1000)  # what the sender read and POSTed ...
    spool.close()  # ... and then the till lost power: nothing marked
    assert [s.idempotency_key for s in taken] == [s.idempotency_key for s in recorded]

    server = ScriptedTransport(lambda batch: accepted(batch, 100))
    again = offline_client(path, server, flush_interval=0.05)
    assert again.flush(timeout=5)
    client_keys = [s["idempotency_key"] for _, batch in server.requests for s in batch]
    assert client_keys == [s.idempotency_key for s in recorded]
    assert [s["sale_time"] for _, batch in server.requests for s in batch] == [s.sale_time for s in recorded]
    assert again.status().pending == 0 and again.status().sent == 2
    again.close()


def test_sent_sales_are_kept_as_ledger_then_pruned(tmp_path):
    spool_path = tmp_path / "spool.db"
    server = ScriptedTransport(lambda batch: accepted(batch))
    client = SalesClient("http://x", store_id=3, spool=str(spool_path), transport=server, flush_interval=0.05)
    client.record(item_id=1)
    assert client.flush(timeout=5)
    client.close()
    spool = Spool(str(spool_path))
    assert [(s.state, s.server_id) for s in spool.ledger()] == [("sent", 1)]
    assert spool.prune_sent(3600) == 0
    time.sleep(0.01)
    assert spool.prune_sent(0) == 1
    assert spool.ledger() == []
    spool.close()


def test_status_cli_on_an_empty_or_missing_spool(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pos_client", "status", "--spool", str(tmp_path / "none.db")],
        check=False,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "no spool at" in result.stderr
    offline_client(tmp_path / "spool.db").close()
    result = subprocess.run(
        [sys.executable, "-m", "pos_client", "status", "--spool", str(tmp_path / "spool.db")],
        check=False,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and "pending:   0" in result.stdout
