"""How exceptions a handler raises become answers: PostgreSQL going away is a 503 to retry, not
a 500, however asyncpg reports it."""

from __future__ import annotations

import json

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
