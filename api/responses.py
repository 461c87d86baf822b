"""JSON answers, encoded with msgspec (fast, and exact for ints and strings); CSV on request."""

from __future__ import annotations

import csv
import io
from typing import Any

import msgspec
from aiohttp import web

from api.validation import BadRequest

_encoder = msgspec.json.Encoder()


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=_encoder.encode(data), status=status, headers=headers, content_type="application/json")


def json_error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> web.Response:
    return json_response({"error": message, **extra}, status=status, headers=headers)


def wants_csv(request: web.Request) -> bool:
    """`?format=csv`, or an Accept header that prefers text/csv; `?format=json` forces JSON."""
    values = request.query.getall("format", [])
    if len(values) > 1:
        raise BadRequest("format is given more than once")
    if values:
        if values[0] not in ("json", "csv"):
            raise BadRequest(f"format must be json or csv, got {values[0][:40]!r}")
        return values[0] == "csv"
    accept = request.headers.get("Accept", "")
    return "text/csv" in accept and "application/json" not in accept


def table_response(rows: list[dict], columns: list[str], name: str, as_csv: bool) -> web.Response:
    """The rows as JSON, or as CSV with a header row (`as_csv`: see wants_csv)."""
    if not as_csv:
        return json_response(rows)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    writer.writerows([row[c] for c in columns] for row in rows)
    return web.Response(
        text=out.getvalue(),
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": f'inline; filename="{name}.csv"'},
    )
