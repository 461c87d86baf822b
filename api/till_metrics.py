"""The stores' silence for Prometheus, computed at each scrape from the tills' board (api.till_board).

    sales_store_silent_seconds{store_id="3"} 1260

Seconds since any till of the store was last heard from (a till never heard from counts from
its key's issue), for the stores open now that have at least one active till: as many series as
such stores. A store that closes (is retired) or loses its last till drops out, so the alert on
it (StoreSilentWhileOpen, deploy/prometheus/alerts.yml) resolves. Empty without AUTH_REQUIRED
(no tills are known then).
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from api import till_board
from api.appkeys import INTAKE, PG_POOL, REDIS, SETTINGS
from api.till_contacts import TILL_CONTACTS

NAME = "sales_store_silent_seconds"
DOC = "Seconds since any till of the store was last heard from (stores open now that have a till)"


class _Families:
    def __init__(self, families):
        self._families = families

    def collect(self):
        return self._families


def store_silence(tills: list[dict]) -> dict[int, int]:
    """Per open store with tills, the silence of its most recently heard till."""
    silence: dict[int, int] = {}
    for till in tills:
        if till["store_open"]:
            store_id = till["store_id"]
            silence[store_id] = min(silence.get(store_id, till["silent_seconds"]), till["silent_seconds"])
    return silence


def render(silence: dict[int, int]) -> bytes:
    family = GaugeMetricFamily(NAME, DOC, labels=["store_id"])
    for store_id, seconds in sorted(silence.items()):
        family.add_metric([str(store_id)], seconds)
    registry = CollectorRegistry()
    registry.register(_Families([family]))
    return generate_latest(registry)


async def exposition(app: web.Application) -> bytes:
    if not app[SETTINGS].auth_required:
        return b""
    contacts = app[TILL_CONTACTS]
    now_us = contacts.clock()
    tills = await till_board.load(
        app[PG_POOL], app[REDIS], contacts.key, app[INTAKE].catalogue, now_us, till_board.Thresholds()
    )
    return render(store_silence(tills))


async def exposition_within(app: web.Application, seconds: float) -> bytes:
    """The exposition, or nothing when PostgreSQL or Redis does not answer in time: the scrape
    goes on without these series (the alert cannot fire on a store it does not see; the API's
    other alerts say why)."""
    try:
        return await asyncio.wait_for(exposition(app), seconds)
    except Exception:  # noqa: BLE001
        return b""
