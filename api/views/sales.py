"""POST /sales/ and POST /sales/batch/."""

from __future__ import annotations

import msgspec
from aiohttp import web

from api.appkeys import INTAKE
from api.auth import check_store_scope
from api.moments import now_us
from api.responses import json_error, json_response
from api.sales import SalesRefused, sale_answer, sale_answers
from api.validation import BadRequest, IdempotencyKey, SaleIn, decode_batch, decode_sale, decode_valid_batch, read_body

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
    if refusal := check_store_scope(request, [sale.store_id]):
        return json_error(403, refusal)
    try:
        [stored] = await request.app[INTAKE].accept([sale], accepted_us)
    except SalesRefused as exc:
        return json_error(422, str(exc))
    return json_response(sale_answer(stored), status=202)


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
    if errors:  # report every bad sale at once, those that cannot be stored included
        errors.update(await intake.refusals(sales, accepted_us))
    else:
        try:
            stored = await intake.accept(list(sales.values()), accepted_us)
        except SalesRefused as exc:
            errors = exc.errors
        else:
            return json_response(sale_answers(stored), status=202)
    return json_error(
        422,
        f"{len(errors)} of {count} sales are invalid; none was accepted",
        errors=[{"index": i, "error": message} for i, message in sorted(errors.items())],
    )
