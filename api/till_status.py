"""The X-Till-Status header a till sends with its sales and returns: what its spool holds and how
far off its clock is.

    X-Till-Status: pending=12; oldest=2026-11-27T10:29:10+00:00; clock_offset=-3.5

`pending`: sales recorded and not yet taken by the server; `oldest`: when the oldest of them
happened (ISO 8601 with an offset; empty when none is pending); `clock_offset`: seconds the
server's clock is ahead of the till's.

Read defensively, for the owners' eyes only: it never refuses a request. A header that is
absent, too long, or in which no field parses says nothing (None); a field that does not
parse is unknown (None) beside the others.
"""

from __future__ import annotations

import datetime as dt
import math
import re

import msgspec

from api.moments import to_us

HEADER = "X-Till-Status"
MAX_LENGTH = 300  # three short fields; anything longer is not a till's status
MAX_PENDING = 10**9
MAX_CLOCK_OFFSET = 10 * 365 * 86400.0  # seconds; a till ten years off is a till with no clock

_PENDING = re.compile(r"[0-9]{1,10}")
_DECIMAL = re.compile(r"[+-]?[0-9]{1,12}(\.[0-9]{1,9})?")


class TillStatus(msgspec.Struct, frozen=True):
    """What a till said of itself, and when (`reported_us`: the server's moment, Unix µs)."""

    reported_us: int
    pending: int | None = None
    oldest_pending_us: int | None = None
    clock_offset: float | None = None


def _pending(value: str) -> int | None:
    if not _PENDING.fullmatch(value) or int(value) > MAX_PENDING:
        return None
    return int(value)


def _clock_offset(value: str) -> float | None:
    if not _DECIMAL.fullmatch(value):
        return None
    offset = float(value)
    return offset if math.isfinite(offset) and abs(offset) <= MAX_CLOCK_OFFSET else None


def _moment_us(value: str) -> int | None:
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return to_us(moment) if moment.utcoffset() is not None else None


def parse(header: str | None, reported_us: int) -> TillStatus | None:
    """The status in an X-Till-Status header heard at `reported_us`, or None when it says nothing."""
    if not header or len(header) > MAX_LENGTH:
        return None
    fields = {}
    for part in header.split(";"):
        name, equals, value = part.partition("=")
        if equals:
            fields[name.strip().lower()] = value.strip()
    pending = _pending(fields["pending"]) if "pending" in fields else None
    offset = _clock_offset(fields["clock_offset"]) if "clock_offset" in fields else None
    oldest_given = fields.get("oldest")
    oldest = _moment_us(oldest_given) if oldest_given else None
    # "oldest=" (empty) is a statement too: nothing is pending
    said_oldest = oldest_given == "" or oldest is not None
    if pending is None and offset is None and not said_oldest:
        return None
    return TillStatus(reported_us, pending, oldest, offset)
