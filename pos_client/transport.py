"""HTTP to the sales API with the standard library: one keep-alive connection, JSON in and out.

https is always verified (the system's CAs, or only those of `ca_bundle` for a private CA);
a key goes over plain http only with `allow_plain_http=True`.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import urllib.parse
from typing import Any, NamedTuple

from pos_client import __version__

USER_AGENT = f"pos-client/{__version__}"


class TransportError(Exception):
    """No answer from the server (refused, reset, timed out, name not found): try again later."""


class CertificateError(TransportError):
    """The server's TLS certificate was not trusted (unknown CA, expired, another host name):
    the handshake failed, so nothing was sent. A configuration problem rather than the
    network's, but it is fixed on the server or by giving `ca_bundle`, so it is tried again."""


def check_key_over_http(base_url: str, key: str | None, allow_plain_http: bool) -> None:
    """Refuse a key for a plain http:// URL (anyone on the way could read and reuse it) unless
    the caller said explicitly that this network is trusted."""
    if key and urllib.parse.urlsplit(base_url).scheme == "http" and not allow_plain_http:
        raise ValueError(
            f"refusing to send a key over plain HTTP to {base_url}: anyone on the way could read it. "
            "Use the server's https:// URL (with ca_bundle= for a private CA), or pass "
            "allow_plain_http=True (--allow-plain-http) on a network you trust, such as loopback"
        )


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
    """Requests to one base URL (http or https, optionally with a path prefix).

    https: the certificate and host name are always verified, against the system's CAs, or
    against only the certificates in `ca_bundle` (a PEM file: a private CA's root, such as
    Caddy's internal one). http: an Authorization header is refused unless `allow_plain_http`."""

    def __init__(
        self,
        base_url: str,
        timeout: float = 10.0,
        *,
        ca_bundle: str | os.PathLike[str] | None = None,
        allow_plain_http: bool = False,
    ):
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
        self._allow_plain_http = allow_plain_http
        self._ca_bundle = None if ca_bundle is None else os.fspath(ca_bundle)
        self._context: ssl.SSLContext | None = None
        if self._https:
            try:
                # verify_mode CERT_REQUIRED and check_hostname on, whatever the bundle
                self._context = ssl.create_default_context(cafile=self._ca_bundle)
            except OSError as exc:  # missing file, or no PEM certificate in it (ssl.SSLError)
                raise ValueError(f"ca_bundle {self._ca_bundle!r} cannot be loaded as PEM certificates: {exc}") from exc

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
        if not self._https and not self._allow_plain_http and any(h.lower() == "authorization" for h in headers or {}):
            # the clients refuse this when they are made; this is the last line, for any other caller
            check_key_over_http(self.base_url, "a key", False)
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
            except ssl.SSLCertVerificationError as exc:
                self.close()
                raise CertificateError(self._untrusted(exc)) from exc
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

    def _untrusted(self, exc: ssl.SSLCertVerificationError) -> str:
        where = f"{self._host}:{self._port or 443}"
        reason = exc.verify_message or exc.reason or str(exc)
        if self._ca_bundle:
            advice = f"is its certificate signed by the CA in ca_bundle={self._ca_bundle!r}, for this host name?"
        else:
            advice = (
                "if it is signed by a private CA (Caddy's internal one, for localhost), give ca_bundle= "
                "that CA's root certificate (PEM); else check its certificate and the URL's host name"
            )
        return f"certificate verify failed for {where} ({reason}); nothing was sent: {advice}"

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
