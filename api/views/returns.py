"""POST /sales/{id}/returns/ and POST /returns/batch/."""

from __future__ import annotations

from aiohttp import web

from api.appkeys import RETURNS
from api.auth import pos_store
from api.moments import now_us
from api.responses import json_error, json_response
from api.returns import ReturnRefused, return_answer
from api.validation import BadRequest, decode_batch, decode_return, decode_return_of_sale, read_body
from api.views.sales import idempotency_header

# A sale not written yet: the till retries after this many seconds (api.returns).
RETRY_AFTER_SECONDS = 2


def _sale_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    # 19 digits at most: int() of thousands of digits raises (Python's conversion limit)
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or not 1 <= int(raw) < 2**63:
        raise BadRequest(f"sale id must be a positive integer, got {raw[:40]!r}", status=404)
    return int(raw)


def _refusal(exc: ReturnRefused, batch: bool) -> web.Response:
    status = exc.status
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 409 else None
    if not batch:
        [(_, message, extra)] = exc.errors.values()
        return json_error(status, message, headers=headers, **extra)
    return json_error(
        status,
        f"{len(exc.errors)} returns cannot be accepted; none was",
        headers=headers,
        errors=[{"index": i, "error": message, **extra} for i, (_, message, extra) in sorted(exc.errors.items())],
    )


async def post_return(request: web.Request) -> web.Response:
    accepted_us = now_us()
    sale_id = _sale_id(request)
    ret = decode_return(await read_body(request), accepted_us)
    header_key = idempotency_header(request)
    if header_key is not None:
        if ret.idempotency_key not in (None, header_key):
            raise BadRequest("the Idempotency-Key header and the idempotency_key field differ")
        ret.idempotency_key = header_key
    try:
        [stored] = await request.app[RETURNS].accept([(sale_id, ret)], accepted_us, pos_store(request))
    except ReturnRefused as exc:
        return _refusal(exc, batch=False)
    return json_response(return_answer(stored), status=202)


async def post_returns_batch(request: web.Request) -> web.Response:
    accepted_us = now_us()
    if "Idempotency-Key" in request.headers:
        raise BadRequest("a batch takes no Idempotency-Key header: give each return its own idempotency_key")
    raw = decode_batch(await read_body(request), "returns")
    returns, errors = [], {}
    for index, one in enumerate(raw):
        try:
            returns.append(decode_return_of_sale(one, accepted_us))
        except BadRequest as exc:
            errors[index] = str(exc)
    keys = [r.idempotency_key for r in returns if r.idempotency_key]
    if len(set(keys)) < len(keys):
        raise BadRequest("two returns of the batch share an idempotency_key")
    if errors:
        return json_error(
            400,
            f"{len(errors)} of {len(raw)} returns are invalid; none was accepted",
            errors=[{"index": i, "error": message} for i, message in sorted(errors.items())],
        )
    try:
        stored = await request.app[RETURNS].accept([(r.sale_id, r) for r in returns], accepted_us, pos_store(request))
    except ReturnRefused as exc:
        return _refusal(exc, batch=True)
    return json_response([return_answer(s) for s in stored], status=202)
