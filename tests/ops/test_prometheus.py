"""A real Prometheus (Debian's) scrapes a running API with AUTH_REQUIRED=true and evaluates the
shipped rules (deploy/prometheus/): the scrape config is the shipped one, with the target, the
key file and the intervals (1 s) changed for the test.

Checked through Prometheus's HTTP API: the target is up with the owner key; a recording rule
returns the queue depth the test made (sales posted with no worker running); NoWorkerConsuming
goes pending; PostgreSQL stopped makes PostgresUnavailable pending, and it clears once
PostgreSQL is back. (Pending, not firing: the rules' `for` durations are a minute or more,
and promtool test rules in deploy/prometheus/alerts_test.yml covers them.)

    python -m pytest -m slow tests/ops/test_prometheus.py
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import aiohttp
import pytest
import yaml

from tests.servers import free_port, tail as _tail

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "prometheus"
ADMIN = "fault-admin-token-0123"  # the fault stack's ADMIN_TOKEN


def _prometheus_binary() -> str:
    """Debian's prometheus, installed here when missing and we may (root); else skip."""
    found = shutil.which("prometheus")
    if found is None and shutil.which("apt-get"):
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"],
                capture_output=True,
                timeout=600,
                check=False,
            )
        found = shutil.which("prometheus")
    if found is None:
        pytest.skip("the prometheus binary is missing and `apt-get install prometheus` did not provide it")
    return found


class Prometheus:
    """A Prometheus server on a free port with a temporary storage directory."""

    def __init__(self, binary: str, config: dict):
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="prometheus-test-"))
        self.port = free_port()
        self.config_file = self.dir / "prometheus.yml"
        self.config_file.write_text(yaml.safe_dump(config))
        self.log = self.dir / "prometheus.log"
        with open(self.log, "wb") as handle:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={self.config_file}",
                    f"--storage.tsdb.path={self.dir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def get(self, session: aiohttp.ClientSession, path: str, **params) -> dict:
        async with session.get(self.url + path, params=params) as response:
            body = await response.json()
            assert body["status"] == "success", body
            return body["data"]

    async def wait_ready(self, session: aiohttp.ClientSession, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}\n{_tail(self.log)}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(self.url + "/-/ready") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"prometheus not ready in {timeout} s\n{_tail(self.log)}")

    async def until(self, session, what: str, check, timeout: float = 30):
        """Poll `check(session)` until it returns something truthy; that value."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = await check(session)
            if last:
                return last
            await asyncio.sleep(0.5)
        raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})\n{_tail(self.log)}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


def _test_config(api_port: int, key_file: pathlib.Path) -> dict:
    """The shipped prometheus.yml, pointed at the test's API and key, evaluated every second."""
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s", scrape_timeout="1s")
    config["rule_files"] = [str(DEPLOY / name) for name in config["rule_files"]]
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "sales-api")
    job["authorization"]["credentials_file"] = str(key_file)
    job["static_configs"] = [{"targets": [f"127.0.0.1:{api_port}"]}]
    return config


def _issue_owner_key(stack) -> str:
    issued = subprocess.run(
        [sys.executable, "-m", "shared.keys", "issue", "--kind", "owner", "--label", "prometheus"],
        cwd=ROOT,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert issued.returncode == 0, issued.stderr
    return issued.stdout.splitlines()[0].strip()


def _alert_state(prom: Prometheus, name: str):
    """A check: the alert's state ("pending", "firing"), or None while it is inactive."""

    async def check(session):
        data = await prom.get(session, "/api/v1/alerts")
        return next((a["state"] for a in data["alerts"] if a["labels"]["alertname"] == name), None)

    return check


async def _query(prom: Prometheus, session, expr: str) -> list[dict]:
    return (await prom.get(session, "/api/v1/query", query=expr))["result"]


async def test_prometheus_scrapes_with_owner_key_and_evaluates_rules(make_stack, pg_server, tmp_path):
    binary = _prometheus_binary()
    stack = make_stack(AUTH_REQUIRED="true")
    await stack.start_api()  # no worker: what is posted stays queued
    key_file = tmp_path / "sales-owner.key"
    key_file.write_text(_issue_owner_key(stack) + "\n")

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.get(stack.base_url + "/metrics") as response:
            assert response.status == 401  # auth really is on: only the key gets Prometheus in
        prom = Prometheus(binary, _test_config(stack.port, key_file))
        try:
            await prom.wait_ready(session)

            async def target_up(session):
                targets = (await prom.get(session, "/api/v1/targets"))["activeTargets"]
                target = next((t for t in targets if t["labels"]["job"] == "sales-api"), None)
                return target if target and target["health"] == "up" else None

            # the API loads new keys within 5 s
            target = await prom.until(session, "the sales-api target up", target_up, timeout=30)
            assert target["lastError"] == ""
            assert [float(r["value"][1]) for r in await _query(prom, session, 'up{job="sales-api"}')] == [1.0]

            posted = 7
            for n in range(posted):
                async with session.post(
                    stack.base_url + "/sales/",
                    headers={"Authorization": f"Bearer {ADMIN}"},
                    json={"item_id": 1 + n, "store_id": 1, "idempotency_key": f"prom-{n}"},
                ) as response:
                    assert response.status == 202, await response.text()

            async def recorded_depth(session):
                result = await _query(prom, session, "job:queue_depth_sales:max")
                return result if result and float(result[0]["value"][1]) == posted else None

            depth = await prom.until(session, "job:queue_depth_sales:max == 7", recorded_depth)
            assert depth[0]["metric"] == {"__name__": "job:queue_depth_sales:max", "job": "sales-api"}
            assert await prom.until(session, "NoWorkerConsuming active", _alert_state(prom, "NoWorkerConsuming")) in {
                "pending",
                "firing",
            }
            assert await _alert_state(prom, "PostgresUnavailable")(session) is None

            await asyncio.to_thread(pg_server.stop, "fast")
            try:
                state = await prom.until(
                    session, "PostgresUnavailable active", _alert_state(prom, "PostgresUnavailable")
                )
                assert state in {"pending", "firing"}
                assert [float(r["value"][1]) for r in await _query(prom, session, 'up{job="sales-api"}')] == [1.0]
            finally:
                await asyncio.to_thread(pg_server.start)

            async def cleared(session):
                return await _alert_state(prom, "PostgresUnavailable")(session) is None

            await prom.until(session, "PostgresUnavailable cleared after PostgreSQL returned", cleared, timeout=60)
        finally:
            prom.stop()
