"""Key management for admins: list, issue (the secret is shown once), revoke."""

from __future__ import annotations

import dataclasses

import msgspec
from aiohttp import web

from api.appkeys import PG_POOL
from api.responses import json_error, json_response
from api.validation import BadRequest, read_body
from shared import keys


class KeyRequest(msgspec.Struct, forbid_unknown_fields=True):
    kind: str
    store_id: int | None = None
    label: str = ""
    till_id: int | None = None  # a new key for this till (docs/guarantees.md, "Tills")


async def list_keys(request: web.Request) -> web.Response:
    async with request.app[PG_POOL].acquire() as conn:
        return json_response(await keys.list_keys(conn))


async def issue_key(request: web.Request) -> web.Response:
    try:
        wanted = msgspec.json.decode(await read_body(request), type=KeyRequest)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        raise BadRequest(
            f'body must be {{"kind": "pos"|"owner"|"admin", "store_id": N, "label": "...", "till_id": N}}: {exc}'
        ) from exc
    if len(wanted.label) > 200:
        raise BadRequest("label is at most 200 characters")
    async with request.app[PG_POOL].acquire() as conn:
        try:
            issued = await keys.issue(conn, wanted.kind, wanted.store_id, wanted.label, wanted.till_id)
        except ValueError as exc:
            return json_error(422 if "there is no" in str(exc) else 400, str(exc))
    return json_response(dataclasses.asdict(issued), status=201)


async def revoke_key(request: web.Request) -> web.Response:
    prefix = request.match_info["prefix"]
    async with request.app[PG_POOL].acquire() as conn:
        revoked = await keys.revoke(conn, prefix)
    if revoked is None:
        return json_error(404, f"no key with prefix {prefix[:40]!r}")
    return json_response(revoked)
