"""Redis clients that fail fast: a request must get a 503, never hang, when Redis is away."""
from __future__ import annotations

import redis.asyncio as redis


def connect_redis(url: str, *, max_connections: int = 64, socket_timeout: float = 2.0) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=0.5,
        max_connections=max_connections,
        health_check_interval=15,
    )
