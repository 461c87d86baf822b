"""SalesClient: what POS code calls. Recording is local and durable; sending is in the background."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import time
from collections.abc import Callable, Iterable

from pos_client.backoff import Backoff
from pos_client.clock import ServerClock
from pos_client.errors import InvalidSale, SpoolError
from pos_client.ids import new_key
from pos_client.sender import Sender
from pos_client.spool import NewReturn, NewSale, Spool, SpooledReturn, SpooledSale
from pos_client.transport import HttpTransport, check_key_over_http

MAX_BATCH = 1000  # the server's limit for POST /sales/batch/
INT32_MAX = 2_147_483_647
MAX_QUANTITY = 10_000
EARLIEST_SALE_TIME = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)


@dataclasses.dataclass(frozen=True)
class RecordedSale:
    seq: int
    idempotency_key: str
    item_id: int
    quantity: int
    sale_time: str  # ISO 8601, UTC
    unit_price: int | None = None  # the price charged, as sent


@dataclasses.dataclass(frozen=True)
class RecordedReturn:
    id: int  # the till's own number for the return
    idempotency_key: str
    sale_seq: int  # the sale returned (RecordedSale.seq)
    quantity: int
    return_time: str  # ISO 8601, UTC


@dataclasses.dataclass(frozen=True)
class Status:
    pending: int  # recorded, not yet taken by the server
    oldest_pending_age: float | None  # seconds since the oldest pending sale happened
    sent: int  # taken by the server (kept as the ledger for a while)
    set_aside: int  # refused by the server for good (see `python -m pos_client status`)
    last_error: str | None
    last_error_at: float | None  # Unix time
    stopped: str | None  # why sending is stopped (a refused key), else None
    last_sent_at: float | None = None  # Unix time of the last batch the server took (this process)
    online: bool | None = None  # did the last request get an answer (None: none made yet)
    clock_offset: float = 0.0  # seconds the server's clock is ahead of the till's (0: they agree)
    returns_pending: int = 0  # returns not yet taken by the server (those waiting for their sale included)
    returns_sent: int = 0
    returns_set_aside: int = 0  # refused for good, or their sale was (see `python -m pos_client status`)


def _check_id(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= INT32_MAX:
        raise InvalidSale(f"{name} must be an integer from 1 to {INT32_MAX}, got {value!r}")
    return value


def _check_quantity(quantity) -> int:
    if isinstance(quantity, bool) or not isinstance(quantity, int) or not 1 <= quantity <= MAX_QUANTITY:
        raise InvalidSale(f"quantity must be an integer from 1 to {MAX_QUANTITY}, got {quantity!r}")
    return quantity


def _sale_reference(sale) -> tuple[int, str]:
    """The till's own number and the key of the sale to return: a RecordedSale (or a
    SpooledSale of the ledger); the key tells another till's sale of the same number."""
    seq, key = getattr(sale, "seq", None), getattr(sale, "idempotency_key", None)
    if isinstance(seq, bool) or not isinstance(seq, int) or not isinstance(key, str):
        raise InvalidSale(f"a return names its sale as record() returned it (a RecordedSale), got {sale!r}")
    return seq, key


def _check_sale(item_id, quantity, sale_time, now: dt.datetime, unit_price=None) -> NewSale:
    _check_id("item_id", item_id)
    if unit_price is not None and (
        isinstance(unit_price, bool) or not isinstance(unit_price, int) or not 0 <= unit_price <= INT32_MAX
    ):
        raise InvalidSale(f"unit_price must be an integer from 0 to {INT32_MAX}, got {unit_price!r}")
    _check_quantity(quantity)
    if sale_time is None:
        sale_time = now
    elif not isinstance(sale_time, dt.datetime) or sale_time.utcoffset() is None:
        raise InvalidSale(f"sale_time must be a timezone-aware datetime, got {sale_time!r}")
    elif sale_time < EARLIEST_SALE_TIME:
        raise InvalidSale(f"sale_time must not be before 2000-01-01, got {sale_time.isoformat()}")
    return NewSale(new_key(), item_id, quantity, sale_time, unit_price)


def _lock_spool(path: str):
    """An exclusive lock beside the spool, so that two clients never send the same sales at
    once; the OS drops it when the process dies. None where flock does not exist."""
    try:
        import fcntl
    except ImportError:  # Windows: one client per spool is then the POS's own business
        return None
    handle = open(path + ".lock", "a")  # noqa: SIM115 - the lock lives as long as this handle
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise SpoolError(f"the spool {path} is in use by another SalesClient (pid in {path}.lock)") from exc
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


class SalesClient:
    """Record sales on the till's disk at once; a background thread sends them to the API.

        client = SalesClient("https://sales.example", key=POS_KEY, store_id=7, spool="/var/lib/pos/spool.db")
        client.record(item_id=24, quantity=2)   # durable on disk when it returns
        client.flush(timeout=5)                  # optional: wait until the server has them
        client.close()

    https is always verified; `ca_bundle` (a PEM file) trusts a private CA instead of the
    system's. A key is never sent over plain http:// unless `allow_plain_http=True`.
    """  # fmt: skip  # else ruff format unindents the example above

    def __init__(
        self,
        base_url: str,
        key: str | None = None,
        *,
        store_id: int,
        spool: str,
        batch_size: int = MAX_BATCH,
        flush_interval: float = 1.0,
        timeout: float = 10.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        keep_sent_days: float = 7.0,
        catalogue_interval: float = 300.0,
        ca_bundle: str | os.PathLike[str] | None = None,
        allow_plain_http: bool = False,
        transport=None,
        wall_clock: Callable[[], float] = time.time,
    ):
        _check_id("store_id", store_id)
        check_key_over_http(base_url, key, allow_plain_http)
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be from 1 to {MAX_BATCH}, got {batch_size}")
        if flush_interval <= 0 or timeout <= 0:
            raise ValueError("flush_interval and timeout must be positive")
        self.store_id = store_id
        self._timeout = timeout
        self._base_url = base_url
        self._allow_plain_http = allow_plain_http
        self._transport = transport or HttpTransport(
            base_url, timeout=timeout, ca_bundle=ca_bundle, allow_plain_http=allow_plain_http
        )
        self._lock = _lock_spool(str(spool))
        try:
            self._spool = Spool(str(spool), store_id)
            self._spool.set_metas({"stopped": None})  # a new start tries the key again
        except BaseException:
            if self._lock:
                self._lock.close()
            raise
        # Sales are stamped with the server's time as the answers' Date headers tell it
        # (pos_client.clock), the offset kept in the spool across restarts.
        self._clock = ServerClock(wall_clock, float(self._spool.meta("clock_offset") or 0))
        self._sender = Sender(
            self._spool,
            self._transport,
            store_id=store_id,
            key=key,
            batch_size=batch_size,
            interval=flush_interval,
            backoff=Backoff(backoff_base, backoff_cap),
            keep_sent_seconds=keep_sent_days * 86400,
            catalogue_interval=catalogue_interval,
            clock=self._clock,
        )
        self._closed = False
        self._sender.start()

    # --- recording

    def record(
        self, item_id: int, quantity: int = 1, sale_time: dt.datetime | None = None, unit_price: int | None = None
    ) -> RecordedSale:
        """Keep one sale; when this returns it is on the till's disk (fsynced) and will reach the
        server, however long the network is away. `sale_time` defaults to now; `unit_price` is
        what was charged (a discount), by default the list price of the till's catalogue copy."""
        return self.record_many([(item_id, quantity, unit_price)], sale_time)[0]

    def record_many(
        self, lines: Iterable[tuple[int, int] | tuple[int, int, int | None]], sale_time: dt.datetime | None = None
    ) -> list[RecordedSale]:
        """Several sales at once (a basket: (item_id, quantity) or (item_id, quantity, unit_price)),
        in one durable write. Each is stamped with the price charged: the one given, else the
        list price at its sale_time in the copy of the catalogue the till keeps (fetched while
        online), so a sale made offline counts at the price the customer paid."""
        self._check_open()
        now = self._clock.now()
        sales = []
        for item_id, quantity, *charged in lines:
            sale = _check_sale(item_id, quantity, sale_time, now, charged[0] if charged else None)
            if sale.unit_price is None and (listed := self._spool.list_price(sale.item_id, sale.sale_time)) is not None:
                sale = dataclasses.replace(sale, unit_price=listed)
            sales.append(sale)
        if not sales:
            return []
        return [
            RecordedSale(s.seq, s.idempotency_key, s.item_id, s.quantity, s.sale_time, s.unit_price)
            for s in self._spool.add(sales)
        ]

    def record_return(
        self, sale: RecordedSale, quantity: int = 1, return_time: dt.datetime | None = None
    ) -> RecordedReturn:
        """Take back `quantity` units of a sale recorded at this till (what record() returned);
        when this returns it is on the till's disk (fsynced). It is sent once the server has the
        sale, so a sale made offline can be returned before the network is back. `return_time`
        defaults to now. InvalidSale: more than is left of the sale at this till, a time before
        the sale, or a sale no longer in the spool."""
        self._check_open()
        seq, key = _sale_reference(sale)
        _check_quantity(quantity)
        sold = self._spool.sale(seq)
        if sold is None or sold.idempotency_key != key:
            raise InvalidSale(f"sale {seq} is not in this till's spool (sent sales are kept keep_sent_days)")
        sale_time = dt.datetime.fromisoformat(sold.sale_time)
        if return_time is None:
            # never before the sale, whose time may have been stamped before the clock was corrected
            return_time = max(self._clock.now(), sale_time)
        elif not isinstance(return_time, dt.datetime) or return_time.utcoffset() is None:
            raise InvalidSale(f"return_time must be a timezone-aware datetime, got {return_time!r}")
        elif return_time < sale_time:
            raise InvalidSale(f"return_time {return_time.isoformat()} is before the sale's ({sold.sale_time})")
        stored = self._spool.add_return(NewReturn(new_key(), seq, quantity, return_time))
        return RecordedReturn(stored.id, stored.idempotency_key, stored.sale_seq, stored.quantity, stored.return_time)

    def refresh_catalogue(self, timeout: float = 10.0) -> bool:
        """Check the catalogue copy with the server now (otherwise every `catalogue_interval`
        seconds while online); False when the server did not answer within `timeout`."""
        self._check_open()
        checks = self._sender.catalogue_checks
        deadline = time.monotonic() + timeout
        self._sender.refresh_catalogue_soon()
        with self._sender.progress:
            while self._sender.catalogue_checks == checks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._sender.progress.wait(min(remaining, 0.5))
        return True

    # --- sending

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the server has answered for every sale and return recorded so far (taken,
        or set aside); False when `timeout` seconds passed first or sending is stopped."""
        self._check_open()
        target, returns_target = self._spool.last_seq(), self._spool.last_return_id()
        deadline = None if timeout is None else time.monotonic() + timeout
        self._sender.wake()
        with self._sender.progress:
            while self._spool.pending_up_to(target) or self._spool.returns_pending_up_to(returns_target):
                if self._sender.stopped:
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._sender.progress.wait(0.5 if remaining is None else min(remaining, 0.5))
        return True

    def resume(self, key: str | None = None) -> None:
        """Start sending again after a refused key, with a new key if given."""
        check_key_over_http(self._base_url, key, self._allow_plain_http)
        self._sender.resume(key if key is not None else self._sender.key)

    def status(self) -> Status:
        self._check_open()
        counts = self._spool.counts()
        age = None
        if counts.oldest_pending:
            age = max(0.0, time.time() - dt.datetime.fromisoformat(counts.oldest_pending).timestamp())
        error_at = self._spool.meta("last_error_at")
        return Status(
            pending=counts.pending,
            oldest_pending_age=age,
            sent=counts.sent,
            set_aside=counts.refused,
            last_error=self._spool.meta("last_error"),
            last_error_at=float(error_at) if error_at else None,
            stopped=self._sender.stopped,
            last_sent_at=self._sender.last_sent_at,
            online=self._sender.online,
            clock_offset=self._clock.offset,
            returns_pending=counts.returns_pending,
            returns_sent=counts.returns_sent,
            returns_set_aside=counts.returns_refused,
        )

    def set_aside(self) -> list[SpooledSale]:
        """The sales the server refused for good, with the reason."""
        return self._spool.refused()

    def returns_set_aside(self) -> list[SpooledReturn]:
        """The returns the server refused for good, or whose sale it did, with the reason."""
        return self._spool.refused_returns()

    def close(self, timeout: float | None = None) -> None:
        """Stop the sender (what is still pending stays in the spool for the next start)."""
        if self._closed:
            return
        self._closed = True
        self._sender.close(self._timeout + 5 if timeout is None else timeout)
        self._transport.close()
        self._spool.close()
        if self._lock:
            self._lock.close()

    def __enter__(self) -> SalesClient:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise SpoolError("this SalesClient is closed")
