"""Tills as separate processes against the product as separate processes, on throwaway
PostgreSQL and Redis servers: the fault suite's fixtures, imported (tests/fault/conftest.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import pytest

from pos_client.spool import Spool
from pos_client.till import Plan
from tests.fault.conftest import (  # noqa: F401 - fixtures and the report hook, used by name
    ITEMS,
    ROOT,
    database_url,
    make_stack,
    pg_server,
    pytest_runtest_makereport,
    record,
    redis_client,
    redis_server,
)


class TillProcess:
    """`python -m pos_client.till` with its plan; keeps the keys it said it recorded."""

    def __init__(self, plan: Plan, directory: pathlib.Path, name: str):
        self.plan = plan
        self.name = name
        self.plan_path = directory / f"{name}.json"
        self.log_path = directory / f"{name}.log"
        self.promised: dict[str, tuple[int, int]] = {}  # key -> (item, quantity), echoed after record returned
        # return key -> (its sale's key, quantity), echoed after record_return returned
        self.promised_returns: dict[str, tuple[str, int]] = {}
        self.done: dict | None = None
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, **changes) -> None:
        self.plan = dataclasses.replace(self.plan, **changes)
        self.plan_path.write_text(json.dumps(dataclasses.asdict(self.plan)))
        self.starts += 1
        self.done = None
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pos_client.till", str(self.plan_path)],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self._reader.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            if line.startswith("rec "):
                _, key, item, quantity = line.split()
                self.promised[key] = (int(item), int(quantity))
            elif line.startswith("ret "):
                _, key, sale_key, quantity = line.split()
                self.promised_returns[key] = (sale_key, int(quantity))
            elif line.startswith("done "):
                self.done = json.loads(line[5:])

    def sigkill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._reader.join(timeout=10)

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def spool(self) -> Spool:
        return Spool(self.plan.spool)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


@pytest.fixture
def tills(tmp_path):
    """tills(plan_kwargs...) -> TillProcess (not started); all killed at the end."""
    made: list[TillProcess] = []

    def make(name: str, **plan) -> TillProcess:
        plan.setdefault("spool", str(tmp_path / f"{name}.db"))
        plan.setdefault("day_start", time.time())
        plan.setdefault("items", list(range(1, ITEMS + 1)))
        plan.setdefault("profile", "flat")
        plan.setdefault("echo", True)
        plan.setdefault("allow_plain_http", True)  # the stack is on loopback: keys over http
        plan.setdefault("return_share", 0.03)  # returns made at the tills, offline ones too
        till = TillProcess(Plan(**plan), tmp_path, name)
        made.append(till)
        return till

    yield make
    for till in made:
        if till.proc and till.proc.poll() is None:
            till.sigkill()
