"""How exceptions a handler raises become answers: PostgreSQL going away is a 503 to retry, not
a 500, however asyncpg reports it."""

from __future__ import annotations

import asyncio
import json
import socket
import struct

import asyncpg
import pytest
from aiohttp.test_utils import make_mocked_request

from api.errors import error_response


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "Connection refused"),
        asyncpg.CannotConnectNowError("the database system is shutting down"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        # asyncpg's protocol state, broken by the server closing mid-query (seen in the fault scenario)
        asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress"),
    ],
)
def test_the_database_going_away_is_503_with_retry_after(exc):
    response = error_response(make_mocked_request("POST", "/sales/1/returns/"), exc)
    assert response.status == 503
    assert response.headers["Retry-After"] == "5"
    assert json.loads(response.body) == {"error": "the database is unavailable; retry shortly"}


def test_anything_else_is_500_without_details():
    response = error_response(make_mocked_request("GET", "/"), KeyError("secret"))
    assert response.status == 500
    assert json.loads(response.body) == {"error": "internal error; it has been logged"}


async def test_a_connection_reset_while_postgresql_shuts_down_is_503():
    """A PostgreSQL shutting down resets a connection asyncpg is opening (seen in the fault
    scenario): ConnectionResetError, as a client going away raises, but the database's."""

    async def reset(reader, writer):
        await reader.read(8)  # asyncpg's SSLRequest
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()  # with linger 0: a reset, not a close

    server = await asyncio.start_server(reset, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ConnectionResetError) as raised:
            await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", timeout=5)
    finally:
        server.close()
        await server.wait_closed()
    response = error_response(make_mocked_request("POST", "/sales/1/returns/"), raised.value)
    assert response.status == 503
    assert response.headers["Retry-After"] == "5"


def test_a_client_going_away_is_left_to_aiohttp():
    gone = ConnectionResetError("Cannot write to closing transport")
    with pytest.raises(ConnectionResetError):
        error_response(make_mocked_request("POST", "/sales/"), gone)
