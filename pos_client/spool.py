"""The till's durable spool: every sale from the moment `record` returns until the server took it.

SQLite in WAL mode with synchronous=FULL: a commit returns only after the write-ahead log
is fsynced, so a recorded sale survives a crash or a power cut of the till (as far as the disk
honours fsync). Sent sales are kept (state 'sent', with the id the server gave) for
`keep_sent_days`: the spool is also the till's ledger, which the simulator and the tests
reconcile with the server. Sales the server refused for good stay as 'refused' with the reason
until someone requeues them.

Returns made at the till (`sale_return`) live beside the sales, by the same rules: durable when
recorded, pending until the server answered for them. A return names its sale by the till's
own `seq`, since the sale may have no server id yet (recorded offline); it is sent only once
its sale is 'sent', and set aside when its sale was.
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

from pos_client.errors import InvalidSale, SpoolError

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
-- Returns made at this till: sent once their sale has its server id.
CREATE TABLE IF NOT EXISTS sale_return (
    id              INTEGER PRIMARY KEY,          -- the till's own order of recording returns
    sale_seq        INTEGER NOT NULL,             -- the sale returned (sale.seq): kept while this row is
    quantity        INTEGER NOT NULL,
    return_time     TEXT    NOT NULL,             -- ISO 8601, UTC, as sent
    idempotency_key TEXT    NOT NULL UNIQUE,      -- made once, sent with every attempt
    state           TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'refused')),
    server_id       INTEGER,                      -- the return's id the server answered
    reason          TEXT,                         -- why it was set aside
    settled_at      REAL                          -- when it was sent or set aside (Unix time)
);
CREATE INDEX IF NOT EXISTS sale_return_pending ON sale_return (id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS sale_return_of_sale ON sale_return (sale_seq);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
-- The server's catalogue as last fetched (GET /catalogue/): what the till prices from offline.
CREATE TABLE IF NOT EXISTS catalogue_item (
    id         INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL,
    prices     TEXT    NOT NULL,                  -- JSON [[from (ISO 8601, UTC) or null, price], ...], in order
    retired_at TEXT                               -- ISO 8601, UTC
);
"""
# Spools made before sales carried the price charged, or the till's numbers, gain the columns.
_COLUMNS_ADDED = {
    "unit_price": "ALTER TABLE sale ADD COLUMN unit_price INTEGER",
    # The till's number of the sale (docs/guarantees.md, "Tills"): given durably just before its
    # first attempt, kept for every retry; NULL while unsent, and for a sale sent with its key.
    "till_seq": "ALTER TABLE sale ADD COLUMN till_seq INTEGER",
    "till_id": "ALTER TABLE sale ADD COLUMN till_id INTEGER",  # the till whose number it is
}
_SALE_COLUMNS = (
    "seq, idempotency_key, item_id, quantity, sale_time, state, server_id, reason, unit_price, till_seq, till_id"
)
# Numbers first, in their order (sent again before anything new), then the rest as recorded.
_SEND_ORDER = "till_seq IS NULL, till_seq, seq"
NUMBERED, KEYED = "till", "keys"  # meta `numbering`: how this spool's sales say who they are


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
    till_seq: int | None = None
    till_id: int | None = None

    def as_json(self, store_id: int, numbered: bool = True) -> dict:
        """The sale as the batch endpoint takes it: with the till's number (while the spool
        numbers: `numbered`), else its key."""
        sale: dict = {
            "item_id": self.item_id,
            "store_id": store_id,
            "quantity": self.quantity,
            "sale_time": self.sale_time,
        }
        if self.till_seq is not None and numbered:
            sale["seq"] = self.till_seq
        else:
            sale["idempotency_key"] = self.idempotency_key
        if self.unit_price is not None:
            sale["unit_price"] = self.unit_price
        return sale


@dataclasses.dataclass(frozen=True)
class NewReturn:
    idempotency_key: str
    sale_seq: int
    quantity: int
    return_time: dt.datetime  # aware


@dataclasses.dataclass(frozen=True)
class SpooledReturn:
    id: int
    idempotency_key: str
    sale_seq: int
    quantity: int
    return_time: str
    state: str = PENDING
    server_id: int | None = None
    reason: str | None = None
    sale_id: int | None = None  # its sale's server id, once the sale is sent
    item_id: int | None = None  # its sale's item

    def as_json(self, store_id: int) -> dict:
        """The return as the returns batch endpoint takes it (its sale must be sent)."""
        return {
            "sale_id": self.sale_id,
            "quantity": self.quantity,
            "return_time": self.return_time,
            "store_id": store_id,
            "idempotency_key": self.idempotency_key,
        }


@dataclasses.dataclass(frozen=True)
class Counts:
    pending: int
    sent: int
    refused: int
    oldest_pending: str | None  # sale_time of the oldest pending sale
    returns_pending: int = 0  # their sale's pending ones included
    returns_sent: int = 0
    returns_refused: int = 0


# A return with its sale's server id and item (NULL while the sale is not sent).
_RETURN_COLUMNS = (
    "r.id, r.idempotency_key, r.sale_seq, r.quantity, r.return_time, r.state, r.server_id, r.reason, "
    "CASE WHEN s.state = 'sent' THEN s.server_id END, s.item_id"
)
_RETURNS = f"SELECT {_RETURN_COLUMNS} FROM sale_return r LEFT JOIN sale s ON s.seq = r.sale_seq"


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
            new_spool = not self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'sale'").fetchone()
            self._db.executescript(_SCHEMA)
            present = {row[1] for row in self._db.execute("PRAGMA table_info(sale)")}
            for column, statement in _COLUMNS_ADDED.items():
                if column not in present:
                    self._db.execute(statement)
            self._db.execute("CREATE UNIQUE INDEX IF NOT EXISTS sale_till_seq ON sale (till_seq)")
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot open the spool {self.path}: {exc}") from exc
        self.store_id = self._claim_store(store_id)
        if self.meta("numbered_from") is None:
            # A spool of a release before numbers may hold sales already tried with their keys
            # (answers lost): those go on with their keys; the ones recorded from now on are numbered.
            self.set_metas({"numbered_from": "1" if new_spool else str(self.last_seq() + 1)})

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
            f"SELECT {_SALE_COLUMNS} FROM sale WHERE state = 'pending' AND seq > ? ORDER BY {_SEND_ORDER} LIMIT ?",
            (after_seq, limit),
        )
        return [SpooledSale(*row) for row in rows]

    def mark_sent(self, sent: Iterable[tuple[int, int | None]]) -> None:
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
                # its number goes: it was never stored, and a requeued sale is a new one (numbered anew)
                "UPDATE sale SET state = 'refused', reason = ?, settled_at = ?, till_seq = NULL, till_id = NULL "
                "WHERE seq = ? AND state = 'pending'",
                [(reason, now, seq) for seq, reason in refused],
            )

    # --- the till's numbers (docs/guarantees.md, "Tills: identity and sequence numbers")

    def till_id(self) -> int | None:
        """The till whose numbers this spool's sales carry (None: it has not numbered any)."""
        value = self.meta("till_id")
        return int(value) if value is not None else None

    def numbering(self) -> str | None:
        """NUMBERED or KEYED, as the server last said whether this spool's key is a till's; None before."""
        return self.meta("numbering")

    def numbered_pending(self, other_than: int) -> int:
        """How many pending sales were numbered as another till's than `other_than` (sent, with
        no answer yet: a new key must be of that till, else they could be counted twice)."""
        return self._query(
            "SELECT count(*) FROM sale WHERE state = 'pending' AND till_seq IS NOT NULL AND till_id != ?",
            (other_than,),
        )[0][0]

    def start_numbering(self, till: tuple[int, int] | None) -> bool:
        """Number the sales from now on as till `till` = (its id, the highest number the server
        holds of it), above that highest (None: the server has no till for the key; the sales go
        with their idempotency keys). True when the spool was another till's (the caller made
        sure none of its numbered sales waits for an answer: Sender._learn_numbering)."""
        if till is None:
            self.set_metas({"numbering": KEYED})
            return False
        till_id, server_highest = till
        with self._transaction() as db:
            metas = dict(
                db.execute("SELECT name, value FROM meta WHERE name IN ('next_till_seq', 'till_id', 'numbering')")
            )
            moved = metas.get("till_id") not in (None, str(till_id))
            # numbers only ever grow in a spool, another till's or not (so they stay unique in it)
            given = int(metas.get("next_till_seq", 1))
            values = [
                ("numbering", NUMBERED),
                ("till_id", str(till_id)),
                ("next_till_seq", str(max(server_highest + 1, given))),
            ]
            if metas.get("numbering") == KEYED:  # sales already tried with their keys go on with them
                last = db.execute("SELECT coalesce(max(seq), 0) FROM sale").fetchone()[0]
                values.append(("numbered_from", str(last + 1)))
            db.executemany(
                "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                values,
            )
        return moved

    def number(self, sales: list[SpooledSale]) -> list[SpooledSale]:
        """The sales about to be sent, those without a number given the next ones in order,
        durably before they go (a retry then carries the same number). Sales of a spool that
        does not number, or recorded before it did, are left with their keys."""
        if self.numbering() != NUMBERED:
            return sales
        first = int(self.meta("numbered_from") or 1)
        todo = [sale for sale in sales if sale.till_seq is None and sale.seq >= first]
        if not todo:
            return sales
        with self._transaction() as db:
            metas = dict(db.execute("SELECT name, value FROM meta WHERE name IN ('next_till_seq', 'till_id')"))
            start, till_id = int(metas["next_till_seq"]), int(metas["till_id"])
            numbers = {sale.seq: start + offset for offset, sale in enumerate(todo)}
            db.executemany(
                "UPDATE sale SET till_seq = ?, till_id = ? WHERE seq = ?",
                [(n, till_id, seq) for seq, n in numbers.items()],
            )
            db.execute("UPDATE meta SET value = ? WHERE name = 'next_till_seq'", (str(start + len(todo)),))
        return [
            dataclasses.replace(s, till_seq=numbers[s.seq], till_id=till_id) if s.seq in numbers else s for s in sales
        ]

    def unnumber(self, seqs: Iterable[int]) -> None:
        """Take the numbers of pending sales the server refused for now (a clock ahead): they
        were not stored, and go later with new numbers, after the ones sent meanwhile."""
        with self._transaction() as db:
            db.executemany(
                "UPDATE sale SET till_seq = NULL, till_id = NULL WHERE seq = ? AND state = 'pending'",
                [(s,) for s in seqs],
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
        """Forget sent sales and returns settled longer ago than that; how many. A sale is kept
        while the spool holds a return of it (a return's sale is what gives it its server id)."""
        before = time.time() - older_than_seconds
        with self._transaction() as db:
            returns = db.execute("DELETE FROM sale_return WHERE state = 'sent' AND settled_at < ?", (before,)).rowcount
            sales = db.execute(
                "DELETE FROM sale WHERE state = 'sent' AND settled_at < ? "
                "AND NOT EXISTS (SELECT 1 FROM sale_return r WHERE r.sale_seq = sale.seq)",
                (before,),
            ).rowcount
        return sales + returns

    # --- returns

    def add_return(self, new: NewReturn) -> SpooledReturn:
        """The return, committed (durable); InvalidSale when its sale is not in the spool or has
        fewer units left than it takes (returns of it at this till not set aside count)."""
        with self._transaction() as db:
            sale = db.execute("SELECT quantity, item_id FROM sale WHERE seq = ?", (new.sale_seq,)).fetchone()
            if sale is None:
                raise InvalidSale(f"sale {new.sale_seq} is not in this till's spool (sent sales are kept a while)")
            sold, item_id = sale
            taken = db.execute(
                "SELECT coalesce(sum(quantity), 0) FROM sale_return WHERE sale_seq = ? AND state != 'refused'",
                (new.sale_seq,),
            ).fetchone()[0]
            if new.quantity > sold - taken:
                raise InvalidSale(
                    f"sale {new.sale_seq} has {sold - taken} of its {sold} unit(s) left to return "
                    f"(returned at this till: {taken}), not {new.quantity}"
                )
            row = (new.sale_seq, new.quantity, iso_utc(new.return_time), new.idempotency_key)
            return_id = cast(
                int,
                db.execute(
                    "INSERT INTO sale_return (sale_seq, quantity, return_time, idempotency_key) VALUES (?, ?, ?, ?)",
                    row,
                ).lastrowid,
            )  # an INSERT's: an int
        return SpooledReturn(return_id, new.idempotency_key, new.sale_seq, new.quantity, row[2], item_id=item_id)

    def returns_ready(self, limit: int) -> list[SpooledReturn]:
        """Pending returns whose sale the server has (it answered the sale's id), oldest first."""
        rows = self._query(
            f"{_RETURNS} WHERE r.state = 'pending' AND s.state = 'sent' ORDER BY r.id LIMIT ?",
            (limit,),
        )
        return [SpooledReturn(*row) for row in rows]

    def mark_returns_sent(self, sent: Iterable[tuple[int, int]]) -> None:
        """(return id, server id) pairs: the server has these."""
        now = time.time()
        with self._transaction() as db:
            db.executemany(
                "UPDATE sale_return SET state = 'sent', server_id = ?, reason = NULL, settled_at = ? "
                "WHERE id = ? AND state = 'pending'",
                [(sid, now, return_id) for return_id, sid in sent],
            )

    def set_aside_returns(self, refused: Iterable[tuple[int, str]]) -> None:
        """(return id, reason) pairs refused for good: never sent again unless requeued."""
        now = time.time()
        with self._transaction() as db:
            db.executemany(
                "UPDATE sale_return SET state = 'refused', reason = ?, settled_at = ? WHERE id = ? AND state = 'pending'",
                [(reason, now, return_id) for return_id, reason in refused],
            )

    def set_aside_returns_of_refused_sales(self) -> int:
        """Pending returns whose sale the server refused can never be sent: set aside, saying
        why; how many."""
        waiting_in_vain = (
            "SELECT 1 FROM sale_return r JOIN sale s ON s.seq = r.sale_seq "
            "WHERE r.state = 'pending' AND s.state = 'refused' LIMIT 1"
        )
        if not self._query(waiting_in_vain):  # the usual case: no write (it runs every round)
            return 0
        with self._transaction() as db:
            return db.execute(
                "UPDATE sale_return SET state = 'refused', settled_at = ?, "
                "reason = 'its sale (seq ' || sale_seq || ') was set aside: ' "
                "|| (SELECT reason FROM sale WHERE sale.seq = sale_return.sale_seq) "
                "WHERE state = 'pending' AND sale_seq IN (SELECT seq FROM sale WHERE state = 'refused')",
                (time.time(),),
            ).rowcount

    def requeue_returns(self) -> int:
        """Every set-aside return back to pending (one whose sale is still set aside goes back); how many."""
        with self._transaction() as db:
            return db.execute(
                "UPDATE sale_return SET state = 'pending', reason = NULL, settled_at = NULL WHERE state = 'refused'"
            ).rowcount

    # --- looking

    def last_seq(self) -> int:
        return self._query("SELECT coalesce(max(seq), 0) FROM sale")[0][0]

    def pending_up_to(self, seq: int) -> int:
        return self._query("SELECT count(*) FROM sale WHERE state = 'pending' AND seq <= ?", (seq,))[0][0]

    def sale(self, seq: int) -> SpooledSale | None:
        rows = self._query(
            f"SELECT {_SALE_COLUMNS} FROM sale WHERE seq = ?",
            (seq,),
        )
        return SpooledSale(*rows[0]) if rows else None

    def last_return_id(self) -> int:
        return self._query("SELECT coalesce(max(id), 0) FROM sale_return")[0][0]

    def returns_pending_up_to(self, return_id: int) -> int:
        return self._query("SELECT count(*) FROM sale_return WHERE state = 'pending' AND id <= ?", (return_id,))[0][0]

    def backlog(self) -> tuple[int, str | None]:
        """Sales and returns pending, and the sale_time of the oldest pending sale: one query
        over the pending rows only (partial indexes), cheap enough for every request."""
        pending, oldest = self._query(
            "SELECT (SELECT count(*) FROM sale WHERE state = 'pending') "
            "+ (SELECT count(*) FROM sale_return WHERE state = 'pending'), "
            "(SELECT min(sale_time) FROM sale WHERE state = 'pending')"
        )[0]
        return pending, oldest

    def counts(self) -> Counts:
        rows = self._query(
            "SELECT 'sale', state, count(*) FROM sale GROUP BY state "
            "UNION ALL SELECT 'return', state, count(*) FROM sale_return GROUP BY state"
        )
        by_state = {(kind, state): count for kind, state, count in rows}
        oldest = self._query("SELECT sale_time FROM sale WHERE state = 'pending' ORDER BY seq LIMIT 1")
        return Counts(
            by_state.get(("sale", PENDING), 0),
            by_state.get(("sale", SENT), 0),
            by_state.get(("sale", REFUSED), 0),
            oldest[0][0] if oldest else None,
            returns_pending=by_state.get(("return", PENDING), 0),
            returns_sent=by_state.get(("return", SENT), 0),
            returns_refused=by_state.get(("return", REFUSED), 0),
        )

    def refused(self) -> list[SpooledSale]:
        rows = self._query(f"SELECT {_SALE_COLUMNS} FROM sale WHERE state = 'refused' ORDER BY seq")
        return [SpooledSale(*row) for row in rows]

    def ledger(self) -> list[SpooledSale]:
        """Every sale the spool holds, in order."""
        rows = self._query(f"SELECT {_SALE_COLUMNS} FROM sale ORDER BY seq")
        return [SpooledSale(*row) for row in rows]

    def refused_returns(self) -> list[SpooledReturn]:
        return [SpooledReturn(*row) for row in self._query(f"{_RETURNS} WHERE r.state = 'refused' ORDER BY r.id")]

    def returns_ledger(self) -> list[SpooledReturn]:
        """Every return the spool holds, in order."""
        return [SpooledReturn(*row) for row in self._query(f"{_RETURNS} ORDER BY r.id")]

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
