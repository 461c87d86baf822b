"""Redis clients that fail fast: a request must get a 503, never hang, when Redis is away."""
from __future__ import annotations

import hiredis
import redis.asyncio as redis


class HiredisPackingConnection(redis.Connection):
    """redis-py's asyncio connection encodes commands in Python, argument by argument: 27% of
    the API's CPU under batch load (py-spy), where each flush carries thousands of arguments.
    hiredis (installed already, for parsing replies) encodes the same bytes in C."""

    def pack_command(self, *args):
        command = args[0]
        if isinstance(command, str) and " " in command:  # "SCRIPT LOAD" and the like, as redis-py
            args = (*command.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:  # a value hiredis does not take (bool, None...): redis-py's own error
            return super().pack_command(*args)


def connect_redis(url: str, *, max_connections: int = 64, socket_timeout: float = 2.0) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        connection_class=HiredisPackingConnection,  # a unix:// or rediss:// URL picks its own
        socket_timeout=socket_timeout,
        socket_connect_timeout=0.5,
        max_connections=max_connections,
        health_check_interval=15,
    )
