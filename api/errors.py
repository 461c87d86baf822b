"""Every failure answers `{"error": ...}` as JSON: never HTML, never a traceback."""
from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from api import metrics
from api.responses import json_error
from api.validation import BadRequest

log = logging.getLogger(__name__)


class ServiceUnavailable(Exception):
    """A dependency is away; the client should retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


def _http_message(request: web.Request, exc: web.HTTPException) -> str:
    if exc.status == 404:
        return f"no such endpoint: {request.method} {request.path}"
    if exc.status == 405:
        allowed = ", ".join(sorted(getattr(exc, "allowed_methods", ()) or ()))
        return f"{request.method} is not allowed on {request.path}" + (f"; use {allowed}" if allowed else "")
    if exc.status == 413:
        return "request body is too large: at most 1 MiB"
    text = exc.text or exc.reason
    return text.removeprefix(f"{exc.status}: ") if text else exc.reason


@web.middleware
async def json_errors(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadRequest as exc:
        return json_error(exc.status, str(exc))
    except ServiceUnavailable as exc:
        return json_error(503, str(exc), headers={"Retry-After": str(exc.retry_after)})
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "WWW-Authenticate", "Retry-After")}
        return json_error(exc.status, _http_message(request, exc), headers=headers)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_error(500, "internal error; it has been logged")


@web.middleware
async def request_metrics(request: web.Request, handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        metrics.HTTP_REQUESTS.labels(request.method, route, str(status)).inc()
        metrics.HTTP_LATENCY.labels(request.method, route).observe(time.perf_counter() - started)
