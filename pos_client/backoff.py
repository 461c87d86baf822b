"""How long to wait before trying the server again: exponential backoff with jitter, and
`Retry-After` honoured (never earlier than the server asked)."""

from __future__ import annotations

import email.utils
import random
import time
from typing import Callable

# Whatever a server says, a till tries again within the hour.
MAX_RETRY_AFTER = 3600.0


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class Backoff:
    """Delays that double from `base` up to `cap`, each drawn from its upper half ("equal
    jitter"): they keep growing, yet a thousand tills cut off together come back spread out."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, rng: Callable[[], float] = random.random):
        if not 0 < base <= cap:
            raise ValueError(f"backoff needs 0 < base <= cap, got base={base}, cap={cap}")
        self.base = base
        self.cap = cap
        self._rng = rng
        self.failures = 0

    def next_delay(self, retry_after: float | None = None) -> float:
        """The wait after one more failure; at least `retry_after`, plus up to a quarter of it."""
        self.failures += 1
        ceiling = min(self.cap, self.base * 2 ** min(self.failures - 1, 32))
        delay = ceiling / 2 + self._rng() * ceiling / 2
        if retry_after is not None:
            # spread the tills the server told to come back at the same moment
            delay = max(delay, retry_after + self._rng() * retry_after / 4)
        return delay

    def reset(self) -> None:
        self.failures = 0
