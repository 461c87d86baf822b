"""The simulator's trading day through a real Caddy (deploy/caddy/Caddyfile, its internal CA)
in front of the product as processes, keys required: the tills processes and the simulator
given the CA's root as --ca-bundle, reconciled with the reports and the database. The same
day pointed at the plain http:// API is refused before anything is sent (keys need
--allow-plain-http). Skipped without `caddy`."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from tests.fault.conftest import ROOT
from tests.pos_client.stack import test_tills as stack_tests  # a module: its tests are not collected twice
from tests.tls_proxy import CaddyProxy

pytestmark = pytest.mark.slow


def simulate(url: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pos_client.simulate",
        "--url",
        url,
        "--stores",
        "2",
        "--tills",
        "1",
        "--day-seconds",
        "8",
        "--baskets",
        "60",
        "--kill",
        "0",
        "--offline-share",
        "0",
        "--admin-token",
        stack_tests.ADMIN,
        "--seed",
        "5",
        *extra,
    ]


async def run(command: list[str]) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(
        subprocess.run, command, check=False, capture_output=True, text=True, timeout=150, cwd=ROOT
    )


async def test_simulated_day_over_tls_with_the_proxy_root_as_ca_bundle(
    make_stack, redis_client, database_url, tmp_path, record
):
    stack = await stack_tests.start(make_stack, redis_client, AUTH_REQUIRED="true")
    proxy = CaddyProxy(f"127.0.0.1:{stack.port}", tmp_path)
    await asyncio.to_thread(proxy.start)
    try:
        refused = await run(simulate(stack.base_url, "--spool-dir", str(tmp_path / "plain")))
        assert refused.returncode != 0
        assert "refusing to send a key over plain HTTP" in refused.stderr and "--allow-plain-http" in refused.stderr

        result = await run(
            simulate(
                proxy.https_url,
                "--ca-bundle",
                str(proxy.root_ca),
                "--database-url",
                database_url,
                "--spool-dir",
                str(tmp_path / "tls"),
            )
        )
    finally:
        await asyncio.to_thread(proxy.stop)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Result: OK" in result.stdout
    logs = sorted((tmp_path / "tls").glob("*.log"))
    assert len(logs) == 2 and not any("certificate verify failed" in log.read_text() for log in logs)
    record(summary=result.stdout.strip().splitlines()[-8:])
