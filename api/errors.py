"""Every failure answers `{"error": ...}` as JSON: never HTML, never a traceback."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from aiohttp import web

from api.responses import json_error
from api.validation import BadRequest

log = logging.getLogger(__name__)

# PostgreSQL away or overloaded: the request was fine, so this is a 503, not a 500.
# InternalClientError: asyncpg's protocol state broken by a server going away mid-query ("cannot
# switch to state 12; another operation is in progress", seen while PostgreSQL shut down)
DATABASE_DOWN = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
# SQLSTATE classes meaning "the server cannot serve now": connection, resources, operator
# intervention (shutdown), object not in prerequisite state (database not accepting connections).
UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "55", "57")


def _database_unavailable(exc: Exception) -> bool:
    if isinstance(exc, DATABASE_DOWN):
        return True
    return isinstance(exc, asyncpg.PostgresError) and (exc.sqlstate or "")[:2] in UNAVAILABLE_SQLSTATE_CLASSES


def _raised_by_database_driver(exc: Exception) -> bool:
    """Whether asyncpg raised it: a PostgreSQL shutting down resets the connections being opened
    (ConnectionResetError, as a client that goes away does)."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__", "").startswith("asyncpg."):
            return True
        tb = tb.tb_next
    return False


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


def error_response(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The `{"error": ...}` answer for an exception a handler raised (re-raised if not an error)."""
    if isinstance(exc, BadRequest):
        return json_error(exc.status, str(exc))
    if isinstance(exc, ServiceUnavailable):
        return json_error(503, str(exc), headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "WWW-Authenticate", "Retry-After")}
        return json_error(exc.status, _http_message(request, exc), headers=headers)
    if isinstance(exc, ConnectionResetError) and not _raised_by_database_driver(exc):
        raise exc  # the client went away: aiohttp's to handle
    if _database_unavailable(exc):
        log.warning("database unavailable on %s %s: %s", request.method, request.path, exc)
        return json_error(503, "the database is unavailable; retry shortly", headers={"Retry-After": "5"})
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return json_error(500, "internal error; it has been logged")
