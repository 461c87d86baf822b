"""The till's durable spool: every sale from the moment `record` returns until the server took it.

SQLite in WAL mode with synchronous=FULL: a commit returns only after the write-ahead log
is fsynced, so a recorded sale survives a crash or a power cut of the till (as far as the disk
honours fsync). Sent sales are kept (state 'sent', with the id the server gave) for
`keep_sent_days`: the spool is also the till's ledger, which the simulator and the tests
reconcile with the server. Sales the server refused for good stay as 'refused' with the reason
until someone requeues them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from typing import cast

from pos_client.errors import SpoolError

PENDING, SENT, REFUSED = "pending", "sent", "refused"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sale (
    seq             INTEGER PRIMARY KEY,          -- the till's own order of recording
    idempotency_key TEXT    NOT NULL UNIQUE,      -- made once, sent with every attempt
    item_id         INTEGER NOT NULL,
    quantity        INTEGER NOT NULL,
    sale_time       TEXT    NOT NULL,             -- ISO 8601, UTC, as sent
    state           TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'refused')),
    server_id       INTEGER,                      -- the id the server answered
    reason          TEXT,                         -- why the server refused it
    settled_at      REAL                          -- when it was sent or refused (Unix time)
);
CREATE INDEX IF NOT EXISTS sale_pending ON sale (seq) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS sale_settled ON sale (settled_at) WHERE state = 'sent';
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
-- The server's catalogue as last fetched (GET /catalogue/): what the till prices from offline.
CREATE TABLE IF NOT EXISTS catalogue_item (
    id         INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL,
    prices     TEXT    NOT NULL,                  -- JSON [[from (ISO 8601, UTC) or null, price], ...], in order
    retired_at TEXT                               -- ISO 8601, UTC
);
"""
# Spools made before sales carried the price charged gain the column.
_COLUMNS_ADDED = {"unit_price": "ALTER TABLE sale ADD COLUMN unit_price INTEGER"}


@dataclasses.dataclass(frozen=True)
class NewSale:
    idempotency_key: str
    item_id: int
    quantity: int
    sale_time: dt.datetime  # aware
    unit_price: int | None = None  # what the till charged; None: the server prices it


@dataclasses.dataclass(frozen=True)
class SpooledSale:
    seq: int
    idempotency_key: str
    item_id: int
    quantity: int
    sale_time: str
    state: str = PENDING
    server_id: int | None = None
    reason: str | None = None
    unit_price: int | None = None

    def as_json(self, store_id: int) -> dict:
        """The sale as the batch endpoint takes it."""
        sale = {
            "item_id": self.item_id,
            "store_id": store_id,
            "quantity": self.quantity,
            "sale_time": self.sale_time,
            "idempotency_key": self.idempotency_key,
        }
        if self.unit_price is not None:
            sale["unit_price"] = self.unit_price
        return sale


@dataclasses.dataclass(frozen=True)
class Counts:
    pending: int
    sent: int
    refused: int
    oldest_pending: str | None  # sale_time of the oldest pending sale


def iso_utc(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).isoformat(timespec="microseconds")


class Spool:
    """One SQLite file; safe to use from several threads (one connection behind a lock)."""

    def __init__(self, path: str, store_id: int | None = None, *, timeout: float = 30.0):
        self.path = str(path)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise SpoolError(f"spool {self.path}: SQLite refused WAL mode (got {mode!r})")
            # FULL: the WAL is fsynced at every commit, so a returned record() survives a power cut.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            present = {row[1] for row in self._db.execute("PRAGMA table_info(sale)")}
            for column, statement in _COLUMNS_ADDED.items():
                if column not in present:
                    self._db.execute(statement)
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot open the spool {self.path}: {exc}") from exc
        self.store_id = self._claim_store(store_id)

    def _claim_store(self, store_id: int | None) -> int | None:
        """A spool holds the sales of one store: the first client names it, later ones must agree."""
        known = self.meta("store_id")
        if store_id is None:
            return int(known) if known is not None else None
        if known is None:
            self.set_metas({"store_id": str(store_id)})
        elif int(known) != store_id:
            raise SpoolError(
                f"the spool {self.path} holds sales of store {known}, not of store {store_id}: use one spool per store"
            )
        return store_id

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # --- recording and sending

    def add(self, sales: list[NewSale]) -> list[SpooledSale]:
        """The sales, committed (durable) together; each with its seq."""
        rows = [(s.idempotency_key, s.item_id, s.quantity, iso_utc(s.sale_time), s.unit_price) for s in sales]
        stored = []
        with self._transaction() as db:
            for row in rows:
                seq = cast(
                    int,
                    db.execute(
                        "INSERT INTO sale (idempotency_key, item_id, quantity, sale_time, unit_price) "
                        "VALUES (?, ?, ?, ?, ?)",
                        row,
                    ).lastrowid,
                )  # an INSERT's: an int
                key, item_id, quantity, sale_time, unit_price = row
                stored.append(SpooledSale(seq, key, item_id, quantity, sale_time, unit_price=unit_price))
        return stored

    def pending(self, limit: int, after_seq: int = 0) -> list[SpooledSale]:
        rows = self._query(
            "SELECT seq, idempotency_key, item_id, quantity, sale_time, state, server_id, reason, unit_price "
            "FROM sale WHERE state = 'pending' AND seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
        return [SpooledSale(*row) for row in rows]

    def mark_sent(self, sent: Iterable[tuple[int, int]]) -> None:
        """(seq, server id) pairs: the server has these; they are kept only as the ledger."""
        now = time.time()
        with self._transaction() as db:
            db.executemany(
                "UPDATE sale SET state = 'sent', server_id = ?, reason = NULL, settled_at = ? "
                "WHERE seq = ? AND state = 'pending'",
                [(sid, now, seq) for seq, sid in sent],
            )

    def set_aside(self, refused: Iterable[tuple[int, str]]) -> None:
        """(seq, reason) pairs the server refused for good: never sent again unless requeued."""
        now = time.time()
        with self._transaction() as db:
            db.executemany(
                "UPDATE sale SET state = 'refused', reason = ?, settled_at = ? WHERE seq = ? AND state = 'pending'",
                [(reason, now, seq) for seq, reason in refused],
            )

    def requeue(self, seqs: Iterable[int] | None = None) -> int:
        """Refused sales back to pending (all of them when `seqs` is None); how many."""
        with self._transaction() as db:
            if seqs is None:
                return db.execute(
                    "UPDATE sale SET state = 'pending', reason = NULL, settled_at = NULL WHERE state = 'refused'"
                ).rowcount
            return sum(
                db.execute(
                    "UPDATE sale SET state = 'pending', reason = NULL, settled_at = NULL "
                    "WHERE seq = ? AND state = 'refused'",
                    (seq,),
                ).rowcount
                for seq in seqs
            )

    def prune_sent(self, older_than_seconds: float) -> int:
        """Forget sent sales settled longer ago than that; how many."""
        with self._transaction() as db:
            return db.execute(
                "DELETE FROM sale WHERE state = 'sent' AND settled_at < ?", (time.time() - older_than_seconds,)
            ).rowcount

    # --- looking

    def last_seq(self) -> int:
        return self._query("SELECT coalesce(max(seq), 0) FROM sale")[0][0]

    def pending_up_to(self, seq: int) -> int:
        return self._query("SELECT count(*) FROM sale WHERE state = 'pending' AND seq <= ?", (seq,))[0][0]

    def counts(self) -> Counts:
        rows = dict(self._query("SELECT state, count(*) FROM sale GROUP BY state"))
        oldest = self._query("SELECT sale_time FROM sale WHERE state = 'pending' ORDER BY seq LIMIT 1")
        return Counts(rows.get(PENDING, 0), rows.get(SENT, 0), rows.get(REFUSED, 0), oldest[0][0] if oldest else None)

    def refused(self) -> list[SpooledSale]:
        rows = self._query(
            "SELECT seq, idempotency_key, item_id, quantity, sale_time, state, server_id, reason, unit_price "
            "FROM sale WHERE state = 'refused' ORDER BY seq"
        )
        return [SpooledSale(*row) for row in rows]

    def ledger(self) -> list[SpooledSale]:
        """Every sale the spool holds, in order."""
        rows = self._query(
            "SELECT seq, idempotency_key, item_id, quantity, sale_time, state, server_id, reason, unit_price "
            "FROM sale ORDER BY seq"
        )
        return [SpooledSale(*row) for row in rows]

    # --- the catalogue copy

    def replace_catalogue(self, items: list[dict], etag: str | None) -> None:
        """The server's whole catalogue (GET /catalogue/'s items) in place of the copy, at once."""
        rows = [
            (
                item["id"],
                item["name"],
                json.dumps([[p["from"], p["price"]] for p in item["prices"]]),
                item.get("retired_at"),
            )
            for item in items
        ]
        with self._transaction() as db:
            db.execute("DELETE FROM catalogue_item")
            db.executemany("INSERT INTO catalogue_item (id, name, prices, retired_at) VALUES (?, ?, ?, ?)", rows)
            db.execute(
                "INSERT INTO meta (name, value) VALUES ('catalogue_etag', ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (etag or "",),
            )

    def list_price(self, item_id: int, sale_time: dt.datetime) -> int | None:
        """The list price the copy gives the item at `sale_time` (None: the copy lacks it)."""
        rows = self._query("SELECT prices FROM catalogue_item WHERE id = ?", (item_id,))
        if not rows:
            return None
        moment = iso_utc(sale_time)
        price = None
        for start, listed in json.loads(rows[0][0]):
            if start is None or iso_utc(dt.datetime.fromisoformat(start)) <= moment:
                price = listed
        return price

    def meta(self, name: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE name = ?", (name,))
        return rows[0][0] if rows else None

    def set_metas(self, values: dict[str, str | None]) -> None:
        """Set (None: remove) several meta values in one write."""
        with self._transaction() as db:
            for name, value in values.items():
                if value is None:
                    db.execute("DELETE FROM meta WHERE name = ?", (name,))
                else:
                    db.execute(
                        "INSERT INTO meta (name, value) VALUES (?, ?) "
                        "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                        (name, value),
                    )

    def close(self) -> None:
        with self._lock:
            self._db.close()
