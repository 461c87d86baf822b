"""POST /sales/ and POST /sales/batch/."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import msgspec
from aiohttp import web

from api.appkeys import INTAKE, PG_POOL
from api.auth import check_store_scope, pos_store, pos_till
from api.moments import now_us
from api.responses import json_error, json_response
from api.sales import SalesRefused, SalesStored, sale_answer, sale_answers
from api.validation import BadRequest, IdempotencyKey, SaleIn, decode_batch, decode_sale, decode_valid_batch, read_body
from shared.queue import TILL_WINDOW

_header_key = msgspec.json.Decoder(IdempotencyKey)


def idempotency_header(request: web.Request) -> str | None:
    value = request.headers.get("Idempotency-Key")
    if value is None:
        return None
    try:  # the same rules as the body field
        return _header_key.decode(msgspec.json.encode(value))
    except msgspec.ValidationError as exc:
        raise BadRequest(f"Idempotency-Key header: {exc}") from exc
    except UnicodeEncodeError as exc:  # bytes that are not UTF-8 reach us as lone surrogates
        raise BadRequest("Idempotency-Key header: not UTF-8") from exc


async def post_sale(request: web.Request) -> web.Response:
    accepted_us = now_us()
    request.app[INTAKE].refuse_if_full()
    sale = decode_sale(await read_body(request), accepted_us)
    header_key = idempotency_header(request)
    if header_key is not None:
        if sale.idempotency_key not in (None, header_key):
            raise BadRequest("the Idempotency-Key header and the idempotency_key field differ")
        sale.idempotency_key = header_key
        if sale.seq is not None:
            raise BadRequest("a sale carries a till's seq or an idempotency_key, not both")
    if refusal := check_store_scope(request, [sale.store_id]):
        return json_error(403, refusal)
    try:
        [stored] = await request.app[INTAKE].accept([sale], accepted_us, till_of(request, [sale]))
    except SalesStored as exc:
        return json_error(409, str(exc))
    except SalesRefused as exc:
        return json_error(422, str(exc))
    return json_response(sale_answer(stored), status=202)


NO_TILL = (
    "seq is a till's own number for its sales: it comes with the till's pos key (AUTH_REQUIRED=true); "
    "other callers give each sale an idempotency_key"
)


def till_of(request: web.Request, sales: Iterable[SaleIn]) -> int | None:
    """The till that sent the sales (its pos key's id); 400 when one carries a seq without a
    till, or when the numbers of a request do not rise, or span more than the till's window
    (each would be taken for a retry of another: docs/guarantees.md, "Tills")."""
    till_id = pos_till(request)
    numbers = [sale.seq for sale in sales if sale.seq is not None]
    if numbers and till_id is None:
        raise BadRequest(NO_TILL)
    if any(later <= earlier for earlier, later in itertools.pairwise(numbers)):
        raise BadRequest("a till's sales in one request go in the order of their seq, each number once")
    if numbers and numbers[-1] - numbers[0] >= TILL_WINDOW:
        raise BadRequest(f"the seq of one request's sales span fewer than {TILL_WINDOW} numbers")
    return till_id


def _decode_sale_by_sale(body: bytes, accepted_us: int) -> tuple[dict[int, SaleIn], dict[int, str], int]:
    """The good sales and the error of each bad one, by index; the batch's own shape errors raise."""
    raw_sales = decode_batch(body)
    sales: dict[int, SaleIn] = {}
    errors: dict[int, str] = {}
    for index, raw in enumerate(raw_sales):
        try:
            sales[index] = decode_sale(raw, accepted_us)
        except BadRequest as exc:
            errors[index] = str(exc)
    return sales, errors, len(raw_sales)


async def post_batch(request: web.Request) -> web.Response:
    accepted_us = now_us()
    if "Idempotency-Key" in request.headers:
        raise BadRequest("a batch takes no Idempotency-Key header: give each sale its own idempotency_key")
    request.app[INTAKE].refuse_if_full()
    body = await read_body(request)
    errors: dict[int, str]
    if (valid := decode_valid_batch(body, accepted_us)) is not None:  # the usual case
        sales, errors, count = dict(enumerate(valid)), {}, len(valid)
    else:
        sales, errors, count = _decode_sale_by_sale(body, accepted_us)
    if refusal := check_store_scope(request, [s.store_id for s in sales.values()]):
        return json_error(403, refusal)
    intake = request.app[INTAKE]
    till_id = till_of(request, sales.values())
    status = 422
    if errors:  # report every bad sale at once, those that cannot be stored included
        errors.update(await intake.refusals(sales, accepted_us, till_id))
    else:
        try:
            stored = await intake.accept(list(sales.values()), accepted_us, till_id)
        except SalesRefused as exc:
            errors = exc.errors
            status = 409 if isinstance(exc, SalesStored) else 422
        else:
            return json_response(sale_answers(stored), status=202)
    what = "are stored already" if status == 409 else "are invalid"
    return json_error(
        status,
        f"{len(errors)} of {count} sales {what}; none was accepted",
        errors=[{"index": i, "error": message} for i, message in sorted(errors.items())],
    )


async def till_numbers(request: web.Request) -> web.Response:
    """GET /tills/me: the calling till and the highest number of its sales that the server
    holds, queued or stored (a till with a new spool numbers its sales above it): Redis's, which
    is never below the database's; the database's when Redis has none (no query otherwise, so a
    till restarted while PostgreSQL is away still sends)."""
    till_id, store_id = pos_till(request), pos_store(request)
    if till_id is None or store_id is None:
        return json_error(403, "this answers a till: call it with the till's pos key (AUTH_REQUIRED=true)")
    highest = await request.app[INTAKE].queue.till_highest(store_id, till_id)
    if highest is None:  # Redis holds nothing of the till (never sold, or its state expired or was lost)
        async with request.app[PG_POOL].acquire() as conn:
            highest = await conn.fetchval(TILL_STORED, store_id, till_id) or 0
    return json_response({"till_id": till_id, "store_id": store_id, "last_seq": highest})


TILL_STORED = "SELECT last_seq FROM till_progress WHERE store_id = $1 AND till_id = $2"
