"""The background thread that takes sales from the spool to the server.

Every `interval`, or when woken by `flush`, it sends the pending sales in batches of up to
`batch_size`, oldest first, until none is left; a day's backlog goes out batch after batch
without waiting. A sale leaves the pending state only after the server answered for it, so a
crash at any moment sends it again, with the same idempotency key, and the server stores it once.

A server certificate that is not trusted is a configuration problem, not the network's: it is
logged at ERROR with what to do (`ca_bundle=`) and shown in status(), and tried again with the
backoff like no answer at all, since it is fixed elsewhere (a renewed certificate on the server,
the till restarted with its CA bundle) and the till must then send without anyone's help.
Nothing is sent while it lasts: the handshake fails before the request, key included, is written.

Returns made at the till go after the sales, in the same round, through the returns batch
endpoint: only those whose sale has its server id, so a return recorded offline waits for its
sale. A return whose sale is still queued on the server (409) waits a growing while without
holding up anything else; one whose sale was set aside is set aside too.

Every POST carries `X-Till-Status: pending=<sales and returns pending>; oldest=<sale_time of
the oldest pending sale, or empty>; clock_offset=<server minus till, seconds>`, read from the
spool once per batch.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import cast

from pos_client.backoff import Backoff
from pos_client.clock import ServerClock
from pos_client.spool import NUMBERED, Spool, SpooledReturn, SpooledSale
from pos_client.transport import Answer, CertificateError, TransportError
from pos_client.verdicts import ReturnsVerdict, judge, judge_returns

log = logging.getLogger("pos_client")

BATCH_PATH = "/sales/batch/"
RETURNS_BATCH_PATH = "/returns/batch/"
TILL_PATH = "/tills/me"
TILL_STATUS_HEADER = "X-Till-Status"
CATALOGUE_PATH = "/catalogue/"
# A sale whose sale_time the server found in the future waits this long before the next try.
CLOCK_AHEAD_HOLD = 5.0
PRUNE_EVERY = 3600.0


def till_status(pending: int, oldest: str | None, clock_offset: float) -> str:
    """The X-Till-Status header's value, in the format the server parses."""
    # + 0.0 turns a -0.0 left by rounding into 0.0, so that no "-0.000" goes out
    offset = round(clock_offset, 3) + 0.0
    return f"pending={pending}; oldest={oldest or ''}; clock_offset={offset:.3f}"


class Sender:
    def __init__(
        self,
        spool: Spool,
        transport,
        *,
        store_id: int,
        key: str | None,
        batch_size: int,
        interval: float,
        backoff: Backoff,
        keep_sent_seconds: float,
        catalogue_interval: float = 300.0,
        clock: ServerClock | None = None,
    ):
        self.spool = spool
        self.clock = clock or ServerClock()
        self.transport = transport
        self.store_id = store_id
        self.key = key
        self.batch_size = batch_size
        self.interval = interval
        self.backoff = backoff
        self.keep_sent_seconds = keep_sent_seconds
        self.catalogue_interval = catalogue_interval
        self._catalogue_checked = -float("inf")  # monotonic
        self.catalogue_checks = 0  # how many times the copy was checked with the server (answered)
        self.progress = threading.Condition()  # notified whenever sales got settled or sending stopped
        self.stopped: str | None = None  # why sending stopped (a refused key)
        self.last_sent_at: float | None = None
        self.online: bool | None = None  # did the last request get an answer
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._held: dict[int, float] = {}  # seq -> not before (monotonic): clock ahead of the server's
        self._returns_held: dict[int, float] = {}  # return id -> not before (monotonic)
        self._numbering_known = False  # asked at each start: the key may have changed meanwhile
        # How long returns wait for a sale the server has not written yet (409), growing while it lasts.
        self._early_backoff = Backoff(backoff.base, backoff.cap)
        self._pruned_at = 0.0
        self._thread = threading.Thread(target=self._run, name="pos-client-sender", daemon=True)

    # --- control, from the POS's threads

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def resume(self, key: str | None) -> None:
        if key != self.key:
            self._numbering_known = False  # perhaps another till's key: ask before numbering on
        self.key = key
        self.stopped = None
        self.spool.set_metas({"stopped": None})
        self.wake()

    def close(self, timeout: float) -> None:
        self._closing.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # --- the thread

    def _run(self) -> None:
        while not self._closing.is_set():
            try:
                self._refresh_catalogue()
                self._send_pending()
                self._send_returns()
                self._prune()
            except Exception as exc:
                log.exception("sending failed unexpectedly; trying again later")
                self._note_error(f"{type(exc).__name__}: {exc}")
                self._closing.wait(self.backoff.next_delay())
            self._wake.wait(self.interval)
            self._wake.clear()

    def _send_pending(self) -> None:
        while not self._closing.is_set() and self.stopped is None:
            batch = self._next_batch()
            if not batch:
                return
            if not self._numbering_known and not self._learn_numbering():
                return
            unnumbered = {sale.seq for sale in batch if sale.till_seq is None}
            batch = self.spool.number(batch)
            self._send(batch, fresh={s.seq for s in batch if s.seq in unnumbered and s.till_seq is not None})

    def _learn_numbering(self) -> bool:
        """Before the first sale goes after a start or a new key: whether the key is a till's,
        and the highest number the server holds of it (GET /tills/me), above which this spool
        numbers its sales (a new spool of a till that had one). False when the server did not say."""
        if not self.key:
            self.spool.start_numbering(None)  # no key, no till: idempotency keys
            self._numbering_known = True
            return True
        answer = self._call("GET", TILL_PATH, None, {"Authorization": f"Bearer {self.key}"})
        if answer is None or answer.status >= 500:
            if answer is not None:
                self._retry_later(f"{answer.status} from {TILL_PATH}: {answer.error()}", None)
            # a spool that numbers goes on from its own next number: its till's highest is below
            self._numbering_known = self.spool.numbering() == NUMBERED
            return self._numbering_known
        payload = answer.json() if answer.status == 200 else None
        till = tuple(payload.get(name) for name in ("till_id", "last_seq")) if isinstance(payload, dict) else ()
        if till and all(isinstance(n, int) and not isinstance(n, bool) for n in till):
            till_id, highest = cast(tuple[int, int], till)
            if waiting := self.spool.numbered_pending(other_than=till_id):
                self._stop(
                    f"this key is till {till_id}'s, and {waiting} sale(s) of the spool were sent as another till's "
                    "with no answer yet: give this till a key of that till (python -m shared.keys issue --till "
                    f"{self.spool.till_id()}), or they could be counted twice"
                )
                return False
            self.spool.start_numbering((till_id, highest))
            log.info("till %d numbers its sales from %d on", till_id, highest + 1)
        elif answer.status in (403, 404):  # not a till's key (open mode, an admin key) or an older server
            self.spool.start_numbering(None)
        elif answer.status == 401:
            self._stop(f"the server refused this till's key (401: {answer.error()}); sending is stopped")
            return False
        else:
            self._retry_later(f"{answer.status} from {TILL_PATH}: {answer.error()}", None)
            return False
        self._numbering_known = True
        return True

    def _next_batch(self) -> list[SpooledSale]:
        now = time.monotonic()
        self._held = {seq: until for seq, until in self._held.items() if until > now}
        candidates = self.spool.pending(self.batch_size + len(self._held))
        return [s for s in candidates if s.seq not in self._held][: self.batch_size]

    def _send(self, batch: list[SpooledSale], fresh: set[int]) -> None:
        """One batch, and the parts the server's answer calls for; returns after a backoff wait
        when the server could not take it. `fresh`: the sales numbered for this first attempt."""
        todo = [batch]
        headers = self._post_headers()
        numbered = self.spool.numbering() == NUMBERED
        while todo and not self._closing.is_set():
            part = todo.pop(0)
            try:
                body = [s.as_json(self.store_id, numbered) for s in part]
                answer = self._request("POST", BATCH_PATH, body, headers)
            except CertificateError as exc:
                self.online = False
                self._retry_later(str(exc), None, first_level=logging.ERROR)
                return
            except TransportError as exc:
                self.online = False
                self._retry_later(f"no answer from the server: {exc}", None)
                return
            self.online = True
            verdict = judge(part, answer)
            if fresh.intersection(verdict.stored_without_id):  # never sent, yet "stored": not this till's
                verdict.stop = (
                    f"{verdict.error}: the server holds numbers this till never sent: does another till send with "
                    "this key, or was an old copy of the spool put back? Each till needs a pos key of its own"
                )
                verdict.stored_without_id = []
            retried = [sale for sale in verdict.held if sale.till_seq is not None and sale.seq not in fresh]
            if retried:  # may have been stored at an earlier try: keeps its number, and goes first again
                verdict.held = [sale for sale in verdict.held if sale not in retried]
                verdict.retry, verdict.send_again = True, []
            if verdict.stored_without_id:
                log.error(
                    "the server holds %d sale(s) of this till under their numbers already (%s): counted as sent, "
                    "with no id; was an old copy of the spool put back?",
                    len(verdict.stored_without_id),
                    verdict.error,
                )
                self.spool.mark_sent((seq, None) for seq in verdict.stored_without_id)
                self._note_error(f"{verdict.error} (counted as sent, with no id)")
            if verdict.sent:
                self.spool.mark_sent(verdict.sent)
                self.last_sent_at = time.time()
                self.backoff.reset()
            if verdict.refused:
                self.spool.set_aside(verdict.refused)
                for seq, reason in verdict.refused:
                    log.warning("sale %d set aside: the server refused it: %s", seq, reason)
            for sale in verdict.held:
                self._held[sale.seq] = time.monotonic() + CLOCK_AHEAD_HOLD
            if verdict.held:  # not stored: they go later with new numbers, after the ones sent meanwhile
                self.spool.unnumber(sale.seq for sale in verdict.held)
            if verdict.held:
                self._note_error(f"{verdict.error} (is the till's clock ahead of the server's?)")
            elif verdict.refused:
                reasons = sorted({reason for _, reason in verdict.refused})
                self._note_error(
                    f"{len(verdict.refused)} sale(s) set aside, refused by the server: "
                    + "; ".join(reasons[:3])
                    + ("; ..." if len(reasons) > 3 else "")
                )
            if verdict.sent or verdict.refused:
                self._notify()
            if verdict.stop:
                self._stop(verdict.stop)
                return
            if verdict.retry:
                self._retry_later(cast(str, verdict.error), verdict.retry_after)  # every retry verdict says why
                return
            todo[0:0] = verdict.send_again

    def _send_returns(self) -> None:
        """The pending returns whose sale the server has, in batches, until none is left or the
        server cannot take them now."""
        if aside := self.spool.set_aside_returns_of_refused_sales():
            log.warning("%d return(s) set aside: their sale was set aside by the server", aside)
            self._note_error(f"{aside} return(s) set aside: their sale was set aside by the server")
            self._notify()
        while not self._closing.is_set() and self.stopped is None:
            batch = self._next_returns()
            if not batch or not self._send_returns_batch(batch):
                return

    def _next_returns(self) -> list[SpooledReturn]:
        now = time.monotonic()
        self._returns_held = {rid: until for rid, until in self._returns_held.items() if until > now}
        candidates = self.spool.returns_ready(self.batch_size + len(self._returns_held))
        return [r for r in candidates if r.id not in self._returns_held][: self.batch_size]

    def _send_returns_batch(self, batch: list[SpooledReturn]) -> bool:
        """One batch of returns and the parts the answer calls for; False when sending should
        pause (after a backoff wait, or stopped)."""
        todo = [batch]
        headers = self._post_headers()
        while todo and not self._closing.is_set():
            part = todo.pop(0)
            answer = self._post(RETURNS_BATCH_PATH, [r.as_json(self.store_id) for r in part], headers)
            if answer is None:
                return False
            verdict = judge_returns(part, answer)
            self._settle_returns(verdict)
            if verdict.stop:
                self._stop(verdict.stop)
                return False
            if verdict.retry:
                self._retry_later(cast(str, verdict.error), verdict.retry_after)  # every retry verdict says why
                return False
            todo[0:0] = verdict.send_again
        return True

    def _settle_returns(self, verdict: ReturnsVerdict) -> None:
        """What the answer settled into the spool; the returns to wait, held."""
        if verdict.sent:
            self.spool.mark_returns_sent(verdict.sent)
            self.last_sent_at = time.time()
            self.backoff.reset()
            self._early_backoff.reset()
        if verdict.refused:
            self.spool.set_aside_returns(verdict.refused)
            for return_id, reason in verdict.refused:
                log.warning("return %d set aside: the server refused it: %s", return_id, reason)
            reasons = sorted({reason for _, reason in verdict.refused})
            self._note_error(
                f"{len(verdict.refused)} return(s) set aside, refused by the server: " + "; ".join(reasons[:3])
            )
        if verdict.early:
            wait = self._early_backoff.next_delay(verdict.retry_after)
            log.info("%d return(s) wait %.1f s: %s", len(verdict.early), wait, verdict.error)
            for ret in verdict.early:
                self._returns_held[ret.id] = time.monotonic() + wait
        for ret in verdict.held:
            self._returns_held[ret.id] = time.monotonic() + CLOCK_AHEAD_HOLD
        if verdict.held:
            self._note_error(f"{verdict.error} (is the till's clock ahead of the server's?)")
        if verdict.sent or verdict.refused:
            self._notify()

    def _post(self, path: str, body, headers: dict[str, str]) -> Answer | None:
        """The server's answer; None when there was none (then after the backoff's wait)."""
        return self._call("POST", path, body, headers)

    def _call(self, method: str, path: str, body, headers: dict[str, str]) -> Answer | None:
        try:
            answer = self._request(method, path, body, headers)
        except CertificateError as exc:
            self.online = False
            self._retry_later(str(exc), None, first_level=logging.ERROR)
            return None
        except TransportError as exc:
            self.online = False
            self._retry_later(f"no answer from the server: {exc}", None)
            return None
        self.online = True
        return answer

    def _post_headers(self) -> dict[str, str]:
        """The key, and the till's backlog and clock for the server (one query: once per batch)."""
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        headers[TILL_STATUS_HEADER] = till_status(*self.spool.backlog(), self.clock.offset)
        return headers

    def refresh_catalogue_soon(self) -> None:
        self._catalogue_checked = -float("inf")
        self.wake()

    def _request(self, method: str, path: str, body, headers: dict[str, str]):
        """The transport's request, its answer's `Date` taught to the clock."""
        sent_at = self.clock.wall()
        answer = self.transport.request(method, path, body, headers)
        if self.clock.observe(answer.headers.get("date"), sent_at, self.clock.wall()):
            if self.clock.offset:
                log.warning(
                    "the till's clock is %.1f s off the server's: sales are stamped with the server's time",
                    -self.clock.offset,
                )
            else:
                log.warning("the till's clock agrees with the server's again")
            self.spool.set_metas({"clock_offset": repr(self.clock.offset)})
        return answer

    def _refresh_catalogue(self) -> None:
        """The server's catalogue into the spool, every `catalogue_interval` while online: a
        304 when the copy is current (If-None-Match), else the whole copy. Offline, the last copy
        keeps pricing; a failure here never holds up sending."""
        if self.stopped or time.monotonic() - self._catalogue_checked < self.catalogue_interval:
            return
        self._catalogue_checked = time.monotonic()
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        if etag := self.spool.meta("catalogue_etag"):
            headers["If-None-Match"] = etag
        try:
            answer = self._request("GET", CATALOGUE_PATH, None, headers)
        except CertificateError as exc:  # shown even when no sale waits to hit it
            log.error("the catalogue could not be fetched: %s", exc)
            self.online = False
            self._note_error(str(exc))
            return
        except TransportError as exc:
            log.info("the catalogue could not be fetched (%s); pricing from the copy", exc)
            return
        if answer.status == 200:
            try:
                self.spool.replace_catalogue(answer.json()["items"], answer.headers.get("etag"))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("the server's catalogue could not be read: %s", exc)
        elif answer.status != 304:
            log.warning("the catalogue could not be fetched: %s", answer.error())
        self.catalogue_checks += 1
        self._notify()

    def _retry_later(self, error: str, retry_after: float | None, first_level: int = logging.WARNING) -> None:
        delay = self.backoff.next_delay(retry_after)
        # the first failure of a run is news; the next ones while it lasts are not
        log.log(first_level if self.backoff.failures == 1 else logging.INFO, "%s; next try in %.1f s", error, delay)
        self._note_error(error)
        self._closing.wait(delay)

    def _stop(self, reason: str) -> None:
        log.error("%s", reason)
        self.stopped = reason
        self._note_error(reason)
        self.spool.set_metas({"stopped": reason})
        self._notify()

    def _note_error(self, error: str) -> None:
        self.spool.set_metas({"last_error": error, "last_error_at": f"{time.time():.3f}"})

    def _notify(self) -> None:
        with self.progress:
            self.progress.notify_all()

    def _prune(self) -> None:
        if time.monotonic() - self._pruned_at >= PRUNE_EVERY:
            self._pruned_at = time.monotonic()
            self.spool.prune_sent(self.keep_sent_seconds)
