"""Throwaway servers for the tests that must own theirs: fault scenarios and the Citus suite.

Each lives in a temporary directory on a free loopback port and is stopped, killed or
restarted at will; the shared PostgreSQL and Redis of the machine are never touched.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def as_postgres_user(args: list[str]) -> list[str]:
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        return ["runuser", "-u", "postgres", "--", *args]
    return args


def tail(path: pathlib.Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def pg_bin(name: str) -> str:
    """initdb and pg_ctl are not on PATH on Debian: they live beside the server's binaries."""
    found = shutil.which(name)
    if found:
        return found
    bindir = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip()
    return str(pathlib.Path(bindir) / name)


class PgServer:
    """A PostgreSQL cluster of its own: initdb'd in a temporary directory, trust auth."""

    def __init__(self, *, settings: dict[str, str] | None = None, prefix: str = "fault-pg-") -> None:
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix=prefix))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.port = free_port()
        self.settings = {
            "max_connections": "200",
            "fsync": "off",
            "full_page_writes": "off",
            "shared_buffers": "64MB",
            **(settings or {}),
        }
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        subprocess.run(
            as_postgres_user(
                [
                    pg_bin("initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ]
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )

    def _ctl(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
        return subprocess.run(
            as_postgres_user([pg_bin("pg_ctl"), "-D", str(self.data), *args]),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} " + " ".join(
            f"-c {name}={value}" for name, value in self.settings.items()
        )
        result = self._ctl("-l", str(self.log), "-w", "-t", "60", "-o", options, "start")
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {result.stderr}\n{tail(self.log)}")

    def stop(self, mode: str = "fast") -> None:
        """`fast` disconnects clients and shuts down cleanly; `immediate` is a crash."""
        self._ctl("-m", mode, "-w", "-t", "60", "stop")

    def kill(self) -> None:
        self.stop("immediate")

    def running(self) -> bool:
        return self._ctl("status", timeout=30).returncode == 0

    def ensure_running(self) -> None:
        if not self.running():
            self.start()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)
