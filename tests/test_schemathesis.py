"""schemathesis against the API's own OpenAPI document, on a real `python -m api` process.

Every documented operation is fuzzed with a bounded number of examples, valid and invalid:
no answer may be a 5xx, and every answer must match the document (status code, content type,
JSON body, headers); data the document calls invalid must be refused with a 4xx.
The server runs as a real process on a private database seeded so that ids 1..5 exist.
/clear/ and /create/ are fuzzed without the admin token (401/403); one small test below
calls them with it.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import zoneinfo
from urllib.parse import urlsplit

import asyncpg
import hypothesis
import pytest
import redis
import requests
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.openapi import spec
from shared import seeding
from tests.conftest import ADMIN_TOKEN, REDIS_URL, _db_url, create_database, drop_database, process_env

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "25"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]

# Invalid input is refused with a 4xx the document lists: 413 is how a batch over the limit is refused.
CONFIG = schemathesis.Config.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": ["400", "401", "403", "404", "405", "413", "422"]}}}
)
schema = schemathesis.openapi.from_dict(spec(), config=CONFIG)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, base_url: str, database_url: str, prefix: str, log: pathlib.Path, proc: subprocess.Popen):
        self.base_url, self.database_url, self.prefix, self.log, self.proc = base_url, database_url, prefix, log, proc
        self.session = requests.Session()

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def server(template_db):
    """`python -m api` (one process) on a private database with 5 items, 5 stores, 60 sales."""
    name = f"sales_fuzz_{uuid.uuid4().hex[:12]}"
    database_url = _db_url(name)

    async def create():
        conn = await asyncpg.connect(await create_database(name, template_db))
        await seeding.seed(conn, items=5, stores=5, sales=60, tz=zoneinfo.ZoneInfo("UTC"), seed=1)
        await conn.close()

    asyncio.run(create())
    port = _free_port()
    prefix = f"test-fuzz-{uuid.uuid4().hex[:12]}:"
    env = process_env(database_url, prefix, port, processes=1)
    log = pathlib.Path(tempfile.mkdtemp(prefix="sales-fuzz-")) / "api.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "api"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    srv = Server(f"http://127.0.0.1:{port}", database_url, prefix, log, proc)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, f"the API exited early:\n{srv.log_tail()}"
            try:
                if requests.get(f"{srv.base_url}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, f"the API never became healthy:\n{srv.log_tail()}"
            time.sleep(0.05)
        yield srv
    finally:
        srv.session.close()
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.unlink(*keys)
        client.close()
        asyncio.run(drop_database(name))


@schema.parametrize()
@hypothesis.settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
def test_every_operation_conforms_to_the_document(case, server):
    assert server.proc.poll() is None, f"the API died:\n{server.log_tail()}"
    response = case.call(base_url=server.base_url, session=server.session, timeout=30)
    if _beyond_http_parser_limits(response.request):
        # aiohttp's HTTP parser refuses a request line or header over 8190 bytes with a plain-text
        # 400 before the application sees it: not JSON, but a 4xx and never a crash.
        assert response.status_code == 400, response.text
        return
    case.validate_response(response, checks=CHECKS, transport_kwargs={"base_url": server.base_url})


HTTP_LINE_LIMIT = 8190  # aiohttp's max_line_size and max_field_size


def _beyond_http_parser_limits(request) -> bool:
    url = urlsplit(request.url)
    target = url.path + ("?" + url.query if url.query else "")
    request_line = len(f"{request.method} {target} HTTP/1.1")
    return request_line > HTTP_LINE_LIMIT or any(
        len(name) + len(value) + 2 > HTTP_LINE_LIMIT for name, value in request.headers.items()
    )


def test_served_document_is_the_one_fuzzed(server):
    response = requests.get(f"{server.base_url}/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.json() == spec()


def test_server_logged_no_internal_error_and_is_alive(server):
    """Runs after the fuzzing (file order): nothing reached the catch-all 500 handler."""
    assert server.proc.poll() is None, server.log_tail()
    assert requests.get(f"{server.base_url}/health", timeout=5).status_code == 200
    log = server.log.read_text(errors="replace")
    assert "unhandled error" not in log and "Traceback" not in log, server.log_tail()


@pytest.mark.parametrize("path", ["/clear/", "/create/"])
@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", "Basic Zm9vOmJhcg==", "Bearer ", "x" * 5000])
def test_admin_routes_refuse_without_the_token(server, path, method, authorization):
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = requests.request(method, server.base_url + path, headers=headers, timeout=10)
    assert response.status_code in (400, 401, 403, 431), response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert "error" in response.json()


def test_admin_routes_with_the_token_answer_as_documented(server):
    """/create/ with small counts and /clear/, with the admin token, checked against the document."""
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    create_get, create_post = schema["/create/"]["GET"], schema["/create/"]["POST"]
    for case in (
        create_get.Case(query={"items": 5, "stores": 5, "sales": 100}, headers=auth),
        create_post.Case(body={"items": 5, "stores": 5, "sales": 50}, headers=auth, media_type="application/json"),
    ):
        response = case.call_and_validate(base_url=server.base_url, checks=CHECKS, timeout=60)
        assert response.status_code == 200
        assert response.json() == {"status": "created", "items": 5, "stores": 5, "sales": response.json()["sales"]}
    for case in (
        create_get.Case(query={"items": 0}, headers=auth),
        create_get.Case(query={"sales": 10_000_001}, headers=auth),
        create_post.Case(body={"items": 0}, headers=auth, media_type="application/json"),
    ):
        response = case.call_and_validate(base_url=server.base_url, checks=CHECKS, timeout=60)
        assert response.status_code == 400
    clear = schema["/clear/"]["POST"].Case(headers=auth)
    assert clear.call_and_validate(base_url=server.base_url, checks=CHECKS, timeout=60).status_code == 200
    # leave the seeded data in place for anything after this test
    response = requests.get(
        f"{server.base_url}/create/", params={"items": 5, "stores": 5, "sales": 60}, headers=auth, timeout=60
    )
    assert response.status_code == 200
