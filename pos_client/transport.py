"""HTTP to the sales API with the standard library: one keep-alive connection, JSON in and out."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import urllib.parse
from typing import Any, NamedTuple

from pos_client import __version__

USER_AGENT = f"pos-client/{__version__}"


class TransportError(Exception):
    """No answer from the server (refused, reset, timed out, name not found): try again later."""


class Answer(NamedTuple):
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        """The decoded body, or None when it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def error(self) -> str:
        """The server's `{"error": ...}` message, or a short description of the answer."""
        payload = self.json()
        if isinstance(payload, dict) and isinstance(payload.get("error"), str):
            return payload["error"]
        return f"HTTP {self.status}: {self.body[:200].decode('utf-8', 'replace')}"


class HttpTransport:
    """Requests to one base URL (http or https, optionally with a path prefix)."""

    def __init__(self, base_url: str, timeout: float = 10.0):
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be http(s)://host[:port][/prefix], got {base_url!r}")
        self.base_url = base_url
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self._context = ssl.create_default_context() if self._https else None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout, context=self._context
                )
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        return self._conn

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Answer:
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        all_headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **(headers or {})}
        if data is not None:
            all_headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            reused = self._conn is not None
            try:
                conn = self._connection()
                conn.request(method, self._prefix + path, body=data, headers=all_headers)
                response = conn.getresponse()
                payload = response.read()
                answer = Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, payload)
                if response.will_close:
                    self.close()
                return answer
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                self.close()
                # a kept-alive connection the server had closed meanwhile: once more on a new one
                # (safe for sales: they carry idempotency keys)
                if reused and attempt == 1:
                    continue
                raise TransportError(f"{type(exc).__name__}: {exc or 'connection closed'}") from exc
            except (OSError, http.client.HTTPException, socket.timeout) as exc:
                self.close()
                raise TransportError(f"{type(exc).__name__}: {exc}") from exc
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
