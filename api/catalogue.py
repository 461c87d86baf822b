"""In-memory copy of items (with their prices over time), stores and archived months, so a sale
is checked and priced without a query.

Besides the LISTEN on `catalogue_changed` (triggers on item and store on one node; the writers
of shared.catalogue on Citus too) and the periodic reload of LiveTable, a sale naming an id we
do not know waits for a reload that began after it arrived: an item created a moment ago
through another API process is never refused by a stale copy.
"""

from __future__ import annotations

import asyncio
import bisect
import datetime as dt
import hashlib
import logging
import time
from typing import NamedTuple

import msgspec

from api.live_table import DB_ERRORS, LiveTable
from api.moments import iso_utc
from shared.catalogue import CATALOGUE_LOCK

log = logging.getLogger(__name__)

# Moments come as microseconds since the epoch; -infinity (a price in effect since always) as this.
SINCE_ALWAYS_US = -(2**62)
_US = "CASE WHEN {0} = '-infinity' THEN {1} ELSE (extract(epoch FROM {0}) * 1000000)::bigint END"
# Everything, or what versioned writes changed after version $1 (an item's prices come whole
# with it: its version moves whenever they do; migration 015 indexes the versions).
_ITEMS = f"SELECT id, name, price, {_US.format('retired_at', 'NULL')} AS retired_us, version FROM item"
_STORES = f"SELECT id, address, {_US.format('retired_at', 'NULL')} AS retired_us, version FROM store"
_PRICES = f"SELECT item_id, {_US.format('effective_from', SINCE_ALWAYS_US)} AS from_us, price FROM item_price"
LOAD_ALL = (_ITEMS, _STORES, f"{_PRICES} ORDER BY item_id, effective_from")
# The prices by the changed items' ids: by the versions, the planner (its statistics behind a
# write that stamped many rows) hashed every price row, 10 ms at 100,000 items.
LOAD_IDS = (
    f"{_ITEMS} WHERE id = ANY($1::int[])",
    f"{_STORES} WHERE id = ANY($1::int[])",
    f"{_PRICES} WHERE item_id = ANY($1::int[]) ORDER BY item_id, effective_from",
)
LOAD_SINCE = (
    f"{_ITEMS} WHERE version > $1",
    f"{_STORES} WHERE version > $1",
    f"{_PRICES} WHERE item_id = ANY($1::int[]) ORDER BY item_id, effective_from",
)
# What shared.catalogue's writes say on the channel: only rows stamped with a newer version
# changed. Anything else (a trigger's table name, the seeder's or the archiver's '') means
# anything may have: a full load.
VERSIONED = "versioned"
# Before a whole load: a version taken under the writers' lock (shared.catalogue), so that every
# write before it is in the load's snapshot and every write after it has a higher version.
NEXT_VERSION_IN_ORDER = """
SELECT nextval('catalogue_version') FROM (SELECT pg_advisory_xact_lock($1)) AS writers_done
"""
# A whole load of a large catalogue (100,000 items: about half a second of Python) lets other
# requests run every this many rows.
ROWS_PER_STEP = 10_000


class PriceHistory(NamedTuple):
    """An item's list prices over time: prices[i] from starts_us[i] on (sorted)."""

    starts_us: list[int]
    prices: list[int]

    def at(self, moment_us: int, before_any: int) -> int:
        """The price in effect at `moment_us`; `before_any` before the first change."""
        index = bisect.bisect_right(self.starts_us, moment_us) - 1
        return self.prices[index] if index >= 0 else before_any

    def highest(self, first_us: int, last_us: int, before_any: int) -> int:
        """The highest price in effect at some moment of [first_us, last_us]."""
        first = bisect.bisect_right(self.starts_us, first_us) - 1  # in effect at first_us (-1: before_any)
        last = bisect.bisect_right(self.starts_us, last_us)
        candidates = self.prices[max(first, 0) : last]
        return max([before_any, *candidates] if first < 0 else candidates)


class Catalogue(LiveTable):
    """Loaded whole at start, every `refresh_interval` and after any change it cannot scope; after
    a versioned write (shared.catalogue) only the rows past the version it holds: a price change
    in a 100,000-item catalogue reloads one item, not all of them.

    Every change notifies, so the periodic whole load is only a safety net (a notification lost
    with the listening connection is also covered: a new one loads whole): every 5 minutes, where
    LiveTable's default is 30 s (a whole load of 100,000 items costs each API process 0.6 s)."""

    REFRESH_SECONDS = 300.0

    channel = "catalogue_changed"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # item.price: the list price of an item without history, the price before the first
        # change of one with it (shared.catalogue writes the price before a first change into
        # the history, so then the history says everything).
        self.item_prices: dict[int, int] = {}
        self.price_changes: dict[int, PriceHistory] = {}
        self.retired_items: dict[int, int] = {}  # id -> retired_at, Unix microseconds
        self.retired_stores: dict[int, int] = {}
        # Months whose sales were archived (shared.retention): no sale of them is accepted.
        self.archived_months: frozenset[dt.date] = frozenset()
        self.item_rows: dict[int, tuple[str, int]] = {}  # id -> (name, version)
        self.store_rows: dict[int, tuple[str, int]] = {}  # id -> (address, version)
        self.loads = 0  # how many loads this copy has had (GET /catalogue/ caches per load)
        self.whole_loads = 0
        # Which items changed when, by a count of changes: GET /catalogue/ keeps each item's JSON
        # until its item changes (a whole load that finds an item as it was leaves it alone).
        self.change_count = 0
        self.changed_at: dict[int, int] = {}
        self._starts: tuple[int, list[int]] | None = None  # (load, every price change's start, sorted)
        self.loaded_through = 0  # the newest version loaded (incremental loads read past it)
        # `?since=V` with V below this is answered whole: a whole load found changes that no
        # version marks (a hand edit, a reseed, or anything before this process started).
        self.floor = 0
        # Whole loads asked for, and the count a whole load had seen when it succeeded: a load
        # is whole while it is behind (a failed one leaves it behind).
        self._wholes_asked = 1
        self._wholes_done = 0
        self._full_loaded_at = 0.0
        self._listened = False

    @property
    def store_ids(self):
        return self.store_rows.keys()

    def _listening_again(self) -> None:
        # What changed while nobody listened is not known: everything, after a lost connection.
        # (The first one comes right after the start's whole load: the rows past its version.)
        if self._listened:
            self._wholes_asked += 1
        self._listened = True

    def _on_notify(self, _conn, _pid, _channel, payload: str) -> None:
        if payload != VERSIONED:
            self._wholes_asked += 1
        super()._on_notify()

    async def _load(self) -> None:
        # Whole when asked, and as the periodic safety net (LiveTable's refresh).
        asked = self._wholes_asked
        full = self._wholes_done < asked or time.monotonic() - self._full_loaded_at >= self._refresh_interval
        since = -1 if full else self.loaded_through
        if full:
            async with self._pool.acquire() as conn, conn.transaction():
                floor = await conn.fetchval(NEXT_VERSION_IN_ORDER, CATALOGUE_LOCK)
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            # one snapshot: an item and its prices as one write left them
            if since < 0:
                items, stores, prices = [await conn.fetch(query) for query in LOAD_ALL]
            else:
                # planned for this version: a generic plan guesses a third of the rows and scans them all
                await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
                items_since, stores_since, prices_of = LOAD_SINCE
                items = await conn.fetch(items_since, since)
                stores = await conn.fetch(stores_since, since)
                prices = await conn.fetch(prices_of, [r["id"] for r in items]) if items else []
            archived = await conn.fetch("SELECT month FROM archived_months") if since < 0 else None
        changes: dict[int, PriceHistory] = {}
        for start in range(0, len(prices), ROWS_PER_STEP):
            _histories(prices[start : start + ROWS_PER_STEP], changes)
            await asyncio.sleep(0)
        versions = [*(r["version"] for r in items), *(r["version"] for r in stores)]
        if since < 0:
            if await self._replace(items, stores, changes):
                self.floor = floor
            self.archived_months = frozenset(r["month"] for r in archived or ())
            self._full_loaded_at = time.monotonic()
            self._wholes_done = asked
            self.whole_loads += 1
            self.loaded_through = max([0, *versions])
        else:
            self._patch(items, stores, changes)
            self.loaded_through = max([self.loaded_through, *versions])
        self.loads += 1

    @property
    def version(self) -> int:
        """The version GET /catalogue/ answers: what a till asks `?since=` with next."""
        return max(self.loaded_through, self.floor)

    async def _replace(self, items, stores, changes: dict[int, PriceHistory]) -> bool:
        """Everything, built aside a step at a time (requests go on meanwhile), then put in place
        at once; whether anything differed from the copy it replaced."""
        prices, rows, retired = {}, {}, {}
        differ = []
        for n, r in enumerate(items, start=1):
            item_id = r["id"]
            prices[item_id] = r["price"]
            rows[item_id] = (r["name"], r["version"])
            if r["retired_us"] is not None:
                retired[item_id] = r["retired_us"]
            if (
                rows[item_id] != self.item_rows.get(item_id)
                or prices[item_id] != self.item_prices.get(item_id)
                or retired.get(item_id) != self.retired_items.get(item_id)
                or changes.get(item_id) != self.price_changes.get(item_id)
            ):
                differ.append(item_id)
            if n % ROWS_PER_STEP == 0:
                await asyncio.sleep(0)
        store_rows = {r["id"]: (r["address"], r["version"]) for r in stores}
        retired_stores = {r["id"]: r["retired_us"] for r in stores if r["retired_us"] is not None}
        # From here to the end nothing awaits: a reader sees the old copy or the new one, and the
        # items' change counts move with the swap (GET /catalogue/ keeps JSON by them).
        gone = self.item_rows.keys() - rows.keys()
        stores_differ = store_rows != self.store_rows or retired_stores != self.retired_stores
        self.item_prices, self.item_rows, self.retired_items = prices, rows, retired
        self.price_changes = changes
        self.store_rows, self.retired_stores = store_rows, retired_stores
        for item_id in differ:
            self._changed(item_id)
        for item_id in gone:
            self.changed_at.pop(item_id, None)
        return bool(differ or gone or stores_differ)

    def _changed(self, item_id: int) -> None:
        self.change_count += 1
        self.changed_at[item_id] = self.change_count

    def _patch(self, items, stores, changes: dict[int, PriceHistory]) -> None:
        """The rows a versioned write changed, in place (their prices whole)."""
        for r in items:
            item_id = r["id"]
            self._changed(item_id)
            self.item_prices[item_id] = r["price"]
            self.item_rows[item_id] = (r["name"], r["version"])
            _set_or_drop(self.retired_items, item_id, r["retired_us"])
            _set_or_drop(self.price_changes, item_id, changes.get(item_id))
        for r in stores:
            self.store_rows[r["id"]] = (r["address"], r["version"])
            _set_or_drop(self.retired_stores, r["id"], r["retired_us"])

    def prices_in_effect(self, moment_us: int) -> int:
        """How many price changes are in effect at `moment_us`: it moves exactly when a scheduled
        one takes effect (answers that show today's prices are kept per this count)."""
        if self._starts is None or self._starts[0] != self.loads:
            self._starts = (self.loads, sorted(s for h in self.price_changes.values() for s in h.starts_us))
        return bisect.bisect_right(self._starts[1], moment_us)

    def price_at(self, item_id: int, moment_us: int) -> int:
        """The item's list price in effect at `moment_us` (the item must be known)."""
        history = self.price_changes.get(item_id)
        base = self.item_prices[item_id]
        return base if history is None else history.at(moment_us, base)

    def highest_price(self, item_id: int, first_us: int, last_us: int) -> int:
        """The item's highest list price at some moment of [first_us, last_us]."""
        history = self.price_changes.get(item_id)
        base = self.item_prices[item_id]
        return base if history is None else history.highest(first_us, last_us, base)

    def refusal(self, item_id: int, store_id: int, moment_us: int) -> str | None:
        """Why a sale of a known item and store at `moment_us` cannot be stored (one of them
        was retired by then), or None."""
        retired = self.retired_items.get(item_id)
        if retired is not None and moment_us >= retired:
            return f"item {item_id} was retired at {iso_utc(retired)}: no sale dated from then on is accepted"
        retired = self.retired_stores.get(store_id)
        if retired is not None and moment_us >= retired:
            return f"store {store_id} was retired at {iso_utc(retired)}: no sale dated from then on is accepted"
        return None

    async def knows(self, item_ids: set[int], store_ids: set[int]) -> bool:
        """True when every id is known, after reading the unknown ones if some were not: by their
        ids, whatever wrote them (a hand INSERT stamps no version), in a query begun after the
        request arrived. One indexed query, not a whole load: a client sending unknown ids
        costs the database a lookup, not this process a reload of the catalogue."""
        if self._all_known(item_ids, store_ids):
            return True
        try:
            await self._load_ids(sorted(item_ids - self.item_prices.keys()), sorted(store_ids - self.store_ids))
        except DB_ERRORS as exc:
            log.warning("catalogue lookup failed, using the cached copy: %s", exc)
        return self._all_known(item_ids, store_ids)

    async def _load_ids(self, item_ids: list[int], store_ids: list[int]) -> None:
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            items = await conn.fetch(LOAD_IDS[0], item_ids) if item_ids else []
            stores = await conn.fetch(LOAD_IDS[1], store_ids) if store_ids else []
            prices = await conn.fetch(LOAD_IDS[2], [r["id"] for r in items]) if items else []
        if items or stores:
            self._patch(items, stores, _histories(prices))
            self.loads += 1

    def _all_known(self, item_ids: set[int], store_ids: set[int]) -> bool:
        return item_ids <= self.item_prices.keys() and store_ids <= self.store_ids


class CatalogueItem(msgspec.Struct):
    """An item as GET /catalogue/ shows it: its price now, and the prices from now on (the one in
    effect, then the scheduled ones; `from` null: since always)."""

    id: int
    name: str
    price: int
    prices: list[PriceFrom]
    retired_at: str | None


class PriceFrom(msgspec.Struct):
    price: int
    # msgspec names the JSON field "from" (a Python keyword).
    from_: str | None = msgspec.field(name="from")


class CatalogueStore(msgspec.Struct):
    id: int
    address: str
    retired_at: str | None


class CatalogueAnswer(msgspec.Struct):
    """GET /catalogue/: `version` is the newest of the catalogue; with `?since=V`, `changes_since`
    is V and the lists hold only what changed after V."""

    version: int
    changes_since: int | None
    items: list[CatalogueItem]
    stores: list[CatalogueStore]


MAX_SINCE_KEPT = 64


def _histories(prices, into: dict[int, PriceHistory] | None = None) -> dict[int, PriceHistory]:
    """Price rows (item, from, price; by item and time) as histories, added to `into`'s."""
    histories = into if into is not None else {}
    for item_id, from_us, price in prices:
        history = histories.get(item_id)
        if history is None:
            history = histories[item_id] = PriceHistory([], [])
        history.starts_us.append(from_us)
        history.prices.append(price)
    return histories


def _etag(body: bytes) -> str:
    return f'"{hashlib.blake2b(body, digest_size=12).hexdigest()}"'


def _set_or_drop(mapping: dict, key, value) -> None:
    if value is None:
        mapping.pop(key, None)
    else:
        mapping[key] = value


def _moment(us: int | None) -> str | None:
    return None if us is None or us == SINCE_ALWAYS_US else iso_utc(us)


class CatalogueViews:
    """The answers of GET /catalogue/ from a Catalogue, with an ETag of their bytes.

    The whole answer is each item's encoded JSON joined: an item's is kept until a load changes
    it (or a scheduled price of it takes effect), so after a price change in a 100,000-item
    catalogue one item is encoded again, not all of them; building is done a step at a time,
    other requests running in between."""

    def __init__(self, catalogue: Catalogue):
        self._catalogue = catalogue
        self._whole: tuple[int, int, bytes, str] | None = None  # (load, valid until us, body, etag)
        # item id -> (the catalogue's change count when encoded, its JSON)
        self._items: dict[int, tuple[int, bytes]] = {}
        self._expiring: dict[int, int] = {}  # item id -> when its next scheduled price takes effect
        self._building = asyncio.Lock()
        self._since: dict[int, tuple[int, int, bytes, str]] = {}  # version -> (load, valid until, body, etag)

    async def whole(self, now_us: int) -> tuple[bytes, str]:
        async with self._building:
            cached = self._whole
            if cached is not None and cached[0] == self._catalogue.loads and now_us < cached[1]:
                return cached[2], cached[3]
            loads = self._catalogue.loads
            body, valid_until = await self._build(now_us)
            etag = _etag(body)
            if self._catalogue.loads == loads:  # no load came during the build: it holds as a whole
                self._whole = (loads, valid_until, body, etag)
            return body, etag

    async def _build(self, now_us: int) -> tuple[bytes, int]:
        c = self._catalogue
        started_at = c.change_count  # an item changed after this is encoded again next time
        version = c.version
        for item_id in [i for i, until in self._expiring.items() if now_us >= until]:
            self._items.pop(item_id, None)
            del self._expiring[item_id]
        parts = []
        for n, item_id in enumerate(sorted(c.item_rows), start=1):
            if item_id not in c.item_rows:  # gone with a load during the build
                continue
            kept = self._items.get(item_id)
            if kept is None or c.changed_at.get(item_id, 0) > kept[0]:
                kept = self._items[item_id] = (started_at, _encoder.encode(self.item(item_id, now_us)))
                self._expiring.pop(item_id, None)
                if (upcoming := self._upcoming(item_id, now_us)) is not None:
                    self._expiring[item_id] = upcoming
            parts.append(kept[1])
            if n % ROWS_PER_STEP == 0:
                await asyncio.sleep(0)
        for gone in self._items.keys() - c.item_rows.keys():
            del self._items[gone]
            self._expiring.pop(gone, None)
        stores = _encoder.encode([self.store(i) for i in sorted(c.store_rows)])
        head = _encoder.encode({"version": version, "changes_since": None})[:-1]
        body = b"".join([head, b',"items":[', b",".join(parts), b'],"stores":', stores, b"}"])
        return body, min(self._expiring.values(), default=2**63)

    async def since(self, version: int, now_us: int) -> tuple[bytes, str]:
        """What changed after `version`; everything (the whole answer) when versions cannot say
        it: a `version` below the copy's floor (changes no version marks came since) or above
        its newest. Kept per version until the next load (tills ask with the same few)."""
        c = self._catalogue
        if not c.floor <= version <= c.version:
            return await self.whole(now_us)
        kept = self._since.get(version)
        if kept is not None and kept[0] == c.loads and now_us < kept[1]:
            return kept[2], kept[3]
        loads, valid_until = c.loads, 2**63
        changed = sorted(item_id for item_id, (_, stamped) in c.item_rows.items() if stamped > version)
        items = []
        for item_id in changed:
            items.append(self.item(item_id, now_us))
            if (upcoming := self._upcoming(item_id, now_us)) is not None:
                valid_until = min(valid_until, upcoming)
        stores = [self.store(i) for i, (_, stamped) in sorted(c.store_rows.items()) if stamped > version]
        body = _encoder.encode(CatalogueAnswer(c.version, version, items, stores))
        if len(self._since) >= MAX_SINCE_KEPT:
            self._since.clear()
        self._since[version] = (loads, valid_until, body, _etag(body))
        return body, self._since[version][3]

    def _upcoming(self, item_id: int, now_us: int) -> int | None:
        """When the item's next scheduled price takes effect (None: none is)."""
        history = self._catalogue.price_changes.get(item_id)
        if history is None:
            return None
        upcoming = bisect.bisect_right(history.starts_us, now_us)
        return history.starts_us[upcoming] if upcoming < len(history.starts_us) else None

    def item(self, item_id: int, now_us: int) -> CatalogueItem:
        """One item as GET /catalogue/ shows it (it must be known)."""
        c = self._catalogue
        base = c.item_prices[item_id]
        history = c.price_changes.get(item_id)
        if history is None:
            prices = [PriceFrom(base, None)]
        else:
            current = bisect.bisect_right(history.starts_us, now_us) - 1
            prices = [PriceFrom(base, None)] if current < 0 else []
            prices += [
                PriceFrom(history.prices[i], _moment(history.starts_us[i]))
                for i in range(max(current, 0), len(history.starts_us))
            ]
        name = c.item_rows[item_id][0]
        return CatalogueItem(item_id, name, prices[0].price, prices, _moment(c.retired_items.get(item_id)))

    def store(self, store_id: int) -> CatalogueStore:
        """One store as GET /catalogue/ shows it (it must be known)."""
        c = self._catalogue
        return CatalogueStore(store_id, c.store_rows[store_id][0], _moment(c.retired_stores.get(store_id)))


_encoder = msgspec.json.Encoder()
