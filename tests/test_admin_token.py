"""No well-known admin token: placeholders and short tokens refused, a random one kept in a file."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pathlib
import stat
import subprocess
import sys

import aiohttp
import pytest

from shared import admin_token
from shared.settings import Settings
from tests.conftest import process_env
from tests.test_processes import REDIS_URL, ROOT, _free_port, _start, _wait_healthy


@pytest.mark.parametrize("token", ["change-me", "CHANGE-ME", "changeme", "admin", " password ", "short-but-random"])
def test_placeholders_and_short_tokens_are_refused(token):
    with pytest.raises(ValueError, match="ADMIN_TOKEN") as raised:
        Settings.from_env({"ADMIN_TOKEN": token})
    assert "secrets.token_urlsafe" in str(raised.value)  # says how to make a good one


def test_a_long_random_token_is_taken():
    token = "k3J9-vQ2xR7_mZ4pL8wN1s"
    assert Settings.from_env({"ADMIN_TOKEN": token}).admin_token == token
    assert Settings.from_env({}).admin_token is None  # none: the admin routes answer 403


def test_generated_once_kept_and_private(tmp_path):
    path = str(tmp_path / "secrets" / "admin_token")
    token, created = admin_token.read_or_create(path)
    assert created and len(token) >= 40
    admin_token.check(token)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert admin_token.read_or_create(path) == (token, False)
    assert sorted(p.name for p in (tmp_path / "secrets").iterdir()) == ["admin_token"]  # no draft left


def _race(path: str, queue) -> None:
    queue.put(admin_token.read_or_create(path))


def test_processes_starting_together_agree_on_one_token(tmp_path):
    path = str(tmp_path / "admin_token")
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    procs = [context.Process(target=_race, args=(path, queue)) for _ in range(8)]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=30) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    assert len({token for token, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert pathlib.Path(path).read_text().strip() == results[0][0]


def test_an_empty_token_file_is_an_error_not_an_empty_token(tmp_path):
    path = tmp_path / "admin_token"
    path.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        admin_token.read_or_create(str(path))


def test_the_api_refuses_to_start_with_a_placeholder(database_url):
    env = process_env(database_url, "test-token-refused:", _free_port(), processes=1, redis_url=REDIS_URL)
    env["ADMIN_TOKEN"] = "change-me"
    result = subprocess.run(
        [sys.executable, "-m", "api"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "configuration error: ADMIN_TOKEN is a well-known placeholder" in result.stderr


async def test_the_api_generates_its_token_says_so_once_and_the_token_works(seed, database_url, tmp_path):
    await seed(items=2, stores=2)
    token_file = tmp_path / "secrets" / "admin_token"
    port = _free_port()
    env = process_env(database_url, "test-token-file:", port, processes=2, redis_url=REDIS_URL)
    del env["ADMIN_TOKEN"]
    env["ADMIN_TOKEN_FILE"] = str(token_file)
    base = f"http://127.0.0.1:{port}"
    for start in (1, 2):
        log = tmp_path / f"api.{start}.log"
        api = await _start(["-m", "api"], env, log)
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
                await _wait_healthy(session, base, [api], [log], timeout=30)
                token = token_file.read_text().strip()
                async with session.get(f"{base}/create/?items=1&stores=1&sales=0") as response:
                    assert response.status == 401  # no token, no admin
                headers = {"Authorization": f"Bearer {token}"}
                async with session.get(f"{base}/items/", headers=headers) as response:
                    assert response.status == 200
                async with session.get(f"{base}/clear/", headers={"Authorization": "Bearer change-me"}) as response:
                    assert response.status == 403
            printed = subprocess.run(
                [sys.executable, "-m", "shared.admin_token"], cwd=ROOT, env=env, capture_output=True, text=True
            )
            assert printed.stdout.strip() == token
        finally:
            api.terminate()
            await asyncio.wait_for(api.wait(), 40)
        said = log.read_text().count("generated a random one into")
        assert said == (1 if start == 1 else 0), log.read_text()[-2000:]
        if start == 1:
            first = token
    assert token == first  # kept across restarts
