"""In-memory copy of items (with prices), stores and archived months, so a sale is checked
without a query.

Besides the LISTEN on `catalogue_changed` (triggers on item and store) and the periodic
reload of LiveTable, a sale naming an id we do not know waits for a reload that began after
it arrived: a brand-new item is never refused by a stale copy.
"""

from __future__ import annotations

import datetime as dt
import logging

from api.live_table import DB_ERRORS, LiveTable

log = logging.getLogger(__name__)


class Catalogue(LiveTable):
    channel = "catalogue_changed"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.item_prices: dict[int, int] = {}
        self.store_ids: frozenset[int] = frozenset()
        # Months whose sales were archived (shared.retention): no sale of them is accepted.
        self.archived_months: frozenset[dt.date] = frozenset()

    async def _load(self) -> None:
        async with self._pool.acquire() as conn:
            items = await conn.fetch("SELECT id, price FROM item")
            stores = await conn.fetch("SELECT id FROM store")
            archived = await conn.fetch("SELECT month FROM archived_months")
        self.item_prices = {r["id"]: r["price"] for r in items}
        self.store_ids = frozenset(r["id"] for r in stores)
        self.archived_months = frozenset(r["month"] for r in archived)

    async def knows(self, item_ids: set[int], store_ids: set[int]) -> bool:
        """True when every id is known, after a fresh reload if some were not."""
        if self._all_known(item_ids, store_ids):
            return True
        try:
            await self.reload_after_change()
        except DB_ERRORS as exc:
            log.warning("catalogue reload failed, using the cached copy: %s", exc)
        return self._all_known(item_ids, store_ids)

    def _all_known(self, item_ids: set[int], store_ids: set[int]) -> bool:
        return item_ids <= self.item_prices.keys() and store_ids <= self.store_ids
