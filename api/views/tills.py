"""GET /tills/: every till with its last contact, backlog and clock, problems first (JSON or CSV)."""

from __future__ import annotations

import dataclasses

from aiohttp import web
from redis.exceptions import RedisError

from api import till_board
from api.appkeys import INTAKE, PG_POOL, REDIS, SETTINGS
from api.errors import ServiceUnavailable
from api.moments import iso_utc
from api.responses import json_response, table_response, wants_csv
from api.till_contacts import TILL_CONTACTS
from api.validation import int_param

MAX_ID = 2**31 - 1
MAX_SILENT_MINUTES = 7 * 24 * 60
OPEN_MODE_NOTE = (
    "tills are known only with AUTH_REQUIRED=true: a till is a pos key (python -m shared.keys issue --kind pos), "
    "and without keys nobody says which till is calling"
)


async def list_tills(request: web.Request) -> web.Response:
    silent_minutes = int_param(request.query, "silent_minutes", till_board.SILENT_MINUTES, 1, MAX_SILENT_MINUTES)
    store_id = int_param(request.query, "store_id", None, 1, MAX_ID)
    as_csv = wants_csv(request)
    contacts = request.app[TILL_CONTACTS]
    now_us = contacts.clock()
    limits = dataclasses.replace(till_board.Thresholds(), silent_minutes=silent_minutes)
    known = request.app[SETTINGS].auth_required
    tills: list[dict] = []
    if known:
        try:
            tills = await till_board.load(
                request.app[PG_POOL],
                request.app[REDIS],
                contacts.key,
                request.app[INTAKE].catalogue,
                now_us,
                limits,
                store_id,
            )
        except RedisError as exc:
            raise ServiceUnavailable(f"Redis, where the tills' last contacts are kept, does not answer: {exc}") from exc
    if as_csv:
        return table_response(tills, till_board.COLUMNS, "tills" + (f"-store-{store_id}" if store_id else ""), True)
    return json_response(
        {
            "tills_known": known,
            "note": None if known else OPEN_MODE_NOTE,
            "now": iso_utc(now_us),
            "thresholds": dataclasses.asdict(limits),
            "tills": tills,
        }
    )
