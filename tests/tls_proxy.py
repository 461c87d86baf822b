"""A real Caddy with deploy/caddy/Caddyfile in front of an API, for tests with a real TLS
handshake: free ports, no admin endpoint, its own data and config directories, and so its own
internal CA (the root certificate the tills are given as their CA bundle).

    proxy = CaddyProxy("127.0.0.1:8080", tmp_path)   # skips the test when caddy is not installed
    proxy.start()
    ... proxy.https_url, proxy.http_url, proxy.root_ca ...
    proxy.stop()
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import socket
import ssl
import subprocess
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CADDYFILE = ROOT / "deploy" / "caddy" / "Caddyfile"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class CaddyProxy:
    """`caddy run` with the compose stack's Caddyfile, SITE_ADDRESS=localhost (the internal CA).

    `data_dir` may be shared by the proxies of a session, so that the CA is made once (Caddy
    locks its storage); everything else is per proxy."""

    def __init__(self, upstream: str, directory: pathlib.Path, data_dir: pathlib.Path | None = None):
        caddy = shutil.which("caddy")
        if caddy is None:
            pytest.skip("caddy is not installed (Debian package `caddy`, 2.6 or later): no TLS proxy to test with")
        self.caddy = caddy
        self.upstream = upstream
        self.directory = pathlib.Path(directory)
        self.data_dir = pathlib.Path(data_dir) if data_dir else self.directory / "data"
        self.http_port = free_port()
        self.https_port = free_port()
        self.https_url = f"https://localhost:{self.https_port}"
        self.http_url = f"http://localhost:{self.http_port}"
        self.root_ca = self.data_dir / "caddy" / "pki" / "authorities" / "local" / "root.crt"
        self.log_path = self.directory / f"caddy-{self.https_port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> None:
        env = {
            **os.environ,
            "SITE_ADDRESS": "localhost",
            "HTTP_PORT": str(self.http_port),
            "HTTPS_PORT": str(self.https_port),
            "API_UPSTREAM": self.upstream,
            "CADDY_ADMIN": "off",
            "XDG_DATA_HOME": str(self.data_dir),
            "XDG_CONFIG_HOME": str(self.directory / "config"),
        }
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.caddy, "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.directory,
            )
        deadline = time.monotonic() + timeout
        while not self._serves_tls():
            if self.proc.poll() is not None:
                raise AssertionError(f"caddy exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"caddy served no trusted certificate within {timeout} s:\n{self.log()}")
            time.sleep(0.1)

    def _serves_tls(self) -> bool:
        """A handshake verified against its root succeeds (the CA and the leaf are both made)."""
        if not self.root_ca.exists():
            return False
        try:
            context = ssl.create_default_context(cafile=str(self.root_ca))
            with (
                socket.create_connection(("localhost", self.https_port), timeout=2) as sock,
                context.wrap_socket(sock, server_hostname="localhost"),
            ):
                return True
        except (OSError, ssl.SSLError):
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-4000:]
        return ""
