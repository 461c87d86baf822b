"""Each till's last contact and what it last said of itself, for GET /tills/ and /metrics.

A till is a pos key (its id is api_key.id). Every request its key authenticates is a contact,
answered or refused; with its sales and returns comes the X-Till-Status header (api.till_status). A request costs a dict
update in this process; once a second the latest per till go to Redis in one HSET, in one hash
under the queue's prefix, `{prefix}tills`, two fields per till (so its size is bounded by the
number of tills):

    "<till id>"         {"last_contact_us": ..., "store_id": ...}
    "<till id>:status"  {"reported_us": ..., "pending": ..., "oldest_pending_us": ..., "clock_offset": ...}

Two fields, not one record: a request without a usable header (GET /catalogue/, a till on an
older client) moves the contact only, whichever API process it reached, and what the till said
last stays. With several API processes the last writer wins: a field may be up to one flush
interval (1 s) older than the newest contact, which is far below what the flags look for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import msgspec
import redis.asyncio as redis
from aiohttp import web

from api.appkeys import QUEUE_KEYS, REDIS
from api.auth import pos_store, pos_till
from api.moments import now_us
from api.till_status import HEADER, TillStatus, parse
from shared.queue import QueueKeys

log = logging.getLogger(__name__)

FLUSH_SECONDS = 1.0
STATUS_SUFFIX = ":status"
WARN_EVERY_SECONDS = 60.0


class Contact(msgspec.Struct, frozen=True):
    last_contact_us: int
    store_id: int | None


class TillRecord(msgspec.Struct, frozen=True):
    """What Redis holds of one till (either part may be missing)."""

    contact: Contact | None
    status: TillStatus | None


_encode = msgspec.json.Encoder().encode
_contact_decoder = msgspec.json.Decoder(Contact)
_status_decoder = msgspec.json.Decoder(TillStatus)


def tills_key(keys: QueueKeys) -> str:
    return f"{keys.prefix}tills"


class TillContacts:
    """The latest contact and status header of each till heard by this process since the last flush."""

    def __init__(self, client: redis.Redis, key: str, clock: Callable[[], int] = now_us):
        self._redis = client
        self.key = key
        self.clock = clock  # Unix µs; the tests set it to control the flags' times
        self._contacts: dict[int, Contact] = {}
        self._headers: dict[int, tuple[int, str]] = {}  # parsed at flush, once per till, not per request
        self._warned_at = -WARN_EVERY_SECONDS

    def heard(self, till_id: int, store_id: int | None, status_header: str | None) -> None:
        moment = self.clock()
        self._contacts[till_id] = Contact(moment, store_id)
        if status_header:
            self._headers[till_id] = (moment, status_header)

    def _fields(self, contacts: dict[int, Contact], headers: dict[int, tuple[int, str]]) -> dict[str, bytes]:
        fields = {str(till_id): _encode(contact) for till_id, contact in contacts.items()}
        for till_id, (moment, header) in headers.items():
            status = parse(header, moment)
            if status is not None:  # a header that says nothing leaves what the till said last
                fields[f"{till_id}{STATUS_SUFFIX}"] = _encode(status)
        return fields

    async def flush(self) -> int:
        """Writes what was heard since the last flush in one HSET; how many fields it wrote."""
        contacts, self._contacts = self._contacts, {}
        headers, self._headers = self._headers, {}
        fields = self._fields(contacts, headers)
        if not fields:
            return 0
        try:
            await self._redis.hset(self.key, mapping=fields)  # type: ignore[misc]
        except BaseException:
            # kept for the next flush (or the last one, at shutdown), unless heard again meanwhile
            for till_id, contact in contacts.items():
                self._contacts.setdefault(till_id, contact)
            for till_id, header in headers.items():
                self._headers.setdefault(till_id, header)
            raise
        return len(fields)

    async def flush_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await self.flush()
            except Exception:  # the next flush tries again; say why now and then
                if time.monotonic() - self._warned_at >= WARN_EVERY_SECONDS:
                    self._warned_at = time.monotonic()
                    log.warning("writing the tills' last contacts to Redis failed", exc_info=True)


def _decoded(decoder: msgspec.json.Decoder, raw: bytes | None):
    if raw is None:
        return None
    try:
        return decoder.decode(raw)
    except msgspec.DecodeError:  # not ours, or an older layout: as if never heard
        return None


async def read(client: redis.Redis, key: str, till_ids: list[int]) -> dict[int, TillRecord]:
    """What Redis holds of these tills, in one HMGET."""
    if not till_ids:
        return {}
    fields = [name for till_id in till_ids for name in (str(till_id), f"{till_id}{STATUS_SUFFIX}")]
    values = await client.hmget(key, fields)  # type: ignore[misc]
    return {
        till_id: TillRecord(_decoded(_contact_decoder, values[2 * i]), _decoded(_status_decoder, values[2 * i + 1]))
        for i, till_id in enumerate(till_ids)
    }


TILL_CONTACTS = web.AppKey("till_contacts", TillContacts)


@web.middleware
async def record_till_contacts(request: web.Request, handler) -> web.StreamResponse:
    """Notes the contact of a till: any request a pos key authenticated, answered or refused.
    Wraps the access check (api.app.edge), which says who is calling only as it runs."""
    try:
        return await handler(request)
    finally:
        till_id = pos_till(request)
        if till_id is not None:
            request.app[TILL_CONTACTS].heard(till_id, pos_store(request), request.headers.get(HEADER))


async def till_contacts_ctx(app: web.Application):
    contacts = TillContacts(app[REDIS], tills_key(app[QUEUE_KEYS]))
    app[TILL_CONTACTS] = contacts
    flusher = asyncio.create_task(contacts.flush_every(FLUSH_SECONDS))
    yield
    flusher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await flusher
    with contextlib.suppress(Exception):  # the last second's contacts, if Redis still answers
        await contacts.flush()
