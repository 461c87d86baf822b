"""The server's time as the till knows it: what a sale is stamped with when the till's clock is off.

Every answer carries the server's `Date` (whole seconds). Timed on the till's clock from the
request's sending to the answer's arrival, the server's time at the midpoint is Date + 0.5 s,
give or take half the round trip plus half a second. The offset is taken only when it is
larger than that uncertainty plus MIN_OFFSET, and kept while later answers agree with it
within their own uncertainty: a till whose clock is right stamps with its own clock, never
moved by the rounding of the header, and one that is off stamps the server's time. The offset
is kept in the spool, so a till restarted offline stamps corrected times at once.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import time
from collections.abc import Callable

MIN_OFFSET = 1.0  # seconds: less than that off is taken as right


class ServerClock:
    def __init__(self, wall: Callable[[], float] = time.time, offset: float = 0.0):
        self.wall = wall  # the till's own clock, Unix seconds
        self.offset = offset  # seconds to add to it to get the server's

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.wall() + self.offset, dt.timezone.utc)

    def observe(self, date_header: str | None, sent_at: float, received_at: float) -> bool:
        """Learn from one answer's `Date`, the request timed on `wall`; whether the offset changed."""
        try:
            server = email.utils.parsedate_to_datetime(date_header or "").timestamp()
        except (TypeError, ValueError):
            return False
        uncertainty = max(0.0, received_at - sent_at) / 2 + 0.5
        offset = server + 0.5 - (sent_at + received_at) / 2
        if abs(offset - self.offset) <= uncertainty:
            return False  # agrees with what is known
        new = offset if abs(offset) > uncertainty + MIN_OFFSET else 0.0
        changed = new != self.offset
        self.offset = new
        return changed
