"""Idempotency keys: one ULID per sale, made on the till with the standard library.

Not a till id + counter: a counter starts again when a spool is restored from an old copy or
made anew, and a reused key would make the server answer with the earlier sale and store
nothing (a lost sale). 80 random bits per millisecond never repeat in practice; the time part
keeps keys in the order they were made, which helps whoever reads a spool.
"""

from __future__ import annotations

import os
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_key(now_ms: int | None = None) -> str:
    """A ULID: 26 characters (48 bits of milliseconds, 80 random bits), Crockford base 32."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))
