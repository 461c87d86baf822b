"""The catalogue over the API: the tills' copy (GET /catalogue/, with ETag), and the admins'
writes (items and stores created, changed, retired; CSV in and out), through shared.catalogue."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web

from api.appkeys import CATALOGUE_VIEWS, INTAKE, PG_POOL
from api.moments import now_us
from api.responses import json_error, json_response
from api.validation import BadRequest, bounded_int, decode_object, int_param, read_body
from shared import catalogue
from shared.catalogue import CatalogueRefused, ItemEdit, StoreEdit

MAX_ID = 2**31 - 1
# A bulk import is read in full before it is checked: up to this many bytes (about 500,000
# lines of items), beyond the 1 MiB other bodies may hold.
MAX_IMPORT_BYTES = 32 * 1024 * 1024

_item_decoder = msgspec.json.Decoder(ItemEdit)
_store_decoder = msgspec.json.Decoder(StoreEdit)


async def get_catalogue(request: web.Request) -> web.Response:
    """Items with their prices (now and scheduled) and stores, as the tills keep them."""
    since = int_param(request.query, "since", None, 0, 2**62)
    views = request.app[CATALOGUE_VIEWS]
    body, etag = await views.whole(now_us()) if since is None else await views.since(since, now_us())
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if etag in _etags(request.headers.get("If-None-Match", "")):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type="application/json", headers=headers)


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",")} if header else set()


def _path_id(request: web.Request) -> int:
    return bounded_int(request.match_info["id"], "the id in the path", 1, MAX_ID)


def _refused(exc: CatalogueRefused, what: str = "index") -> web.Response:
    if len(exc.errors) == 1 and what == "index":
        return json_error(exc.status, str(exc))
    return json_error(
        exc.status,
        f"{len(exc.errors)} {'lines' if what == 'line' else 'edits'} cannot be made; nothing was written",
        errors=[{what: key, "error": why} for key, why in sorted(exc.errors.items())],
    )


async def _written(request: web.Request, kind: str, ids: list[int], status: int = 200) -> web.Response:
    """The items or stores as GET /catalogue/ shows them, from this process's copy, reloaded
    first: the writer sees its write at once (the others within a second)."""
    await request.app[INTAKE].catalogue.reload_after_change(rate_limited=False)
    views, now = request.app[CATALOGUE_VIEWS], now_us()
    rows = [views.item(i, now) if kind == "items" else views.store(i) for i in ids]
    return json_response(rows[0] if len(ids) == 1 else rows, status=status)


def _write(kind: str, create: bool | None):
    decoder = _item_decoder if kind == "items" else _store_decoder
    # either writer: the edit is of its kind (mypy cannot tie the two choices together)
    write: Callable[..., Awaitable[catalogue.Written]] = (
        catalogue.write_items if kind == "items" else catalogue.write_stores
    )

    async def handler(request: web.Request) -> web.Response:
        edit = decode_object(await read_body(request), decoder)
        if create is False:
            if edit.id is not None:
                raise BadRequest("the id is in the path, not in the body")
            edit.id = _path_id(request)
        async with request.app[PG_POOL].acquire() as conn:
            try:
                written = await write(conn, [edit], create=create)
            except CatalogueRefused as exc:
                return _refused(exc)
        return await _written(request, kind, written.ids, status=201 if create else 200)

    return handler


def _retire(kind: str):
    edit_type = ItemEdit if kind == "items" else StoreEdit
    # either writer: the edit is of its kind (mypy cannot tie the two choices together)
    write: Callable[..., Awaitable[catalogue.Written]] = (
        catalogue.write_items if kind == "items" else catalogue.write_stores
    )

    async def handler(request: web.Request) -> web.Response:
        """Retired now: no sale dated from now on; its history and reports stay."""
        edit = edit_type(id=_path_id(request), retired_at=dt.datetime.now(dt.UTC))
        async with request.app[PG_POOL].acquire() as conn:
            try:
                written = await write(conn, [edit], create=False)
            except CatalogueRefused as exc:
                return _refused(exc)
        return await _written(request, kind, written.ids)

    return handler


def _export(kind: str):
    async def handler(request: web.Request) -> web.Response:
        async with request.app[PG_POOL].acquire() as conn:
            text = await catalogue.export_csv(conn, kind)
        return web.Response(
            text=text,
            content_type="text/csv",
            charset="utf-8",
            headers={"Content-Disposition": f'attachment; filename="{kind}.csv"'},
        )

    return handler


async def _read_import(request: web.Request) -> str:
    if request.content_length is not None and request.content_length > MAX_IMPORT_BYTES:
        raise BadRequest(f"an import is at most {MAX_IMPORT_BYTES // 1024 // 1024} MiB", status=413)
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > MAX_IMPORT_BYTES:
            raise BadRequest(f"an import is at most {MAX_IMPORT_BYTES // 1024 // 1024} MiB", status=413)
        chunks.append(chunk)
    try:
        return b"".join(chunks).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the CSV is not UTF-8 (byte {exc.start})") from exc


def _import(kind: str):
    async def handler(request: web.Request) -> web.Response:
        """Create or change every line's item or store: all or nothing, errors by line."""
        text = await _read_import(request)
        async with request.app[PG_POOL].acquire() as conn:
            try:
                written = await catalogue.import_csv(conn, kind, text)
            except CatalogueRefused as exc:
                return _refused(exc, "line")
        await request.app[INTAKE].catalogue.reload_after_change(rate_limited=False)
        return json_response({"imported": len(written.ids), "version": written.version})

    return handler


create_item, update_item, retire_item = _write("items", True), _write("items", False), _retire("items")
create_store, update_store, retire_store = _write("stores", True), _write("stores", False), _retire("stores")
export_items, export_stores = _export("items"), _export("stores")
import_items, import_stores = _import("items"), _import("stores")
