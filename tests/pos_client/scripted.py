"""A transport that answers from a script, for the client's pure unit tests (no HTTP at all:
these tests are about what the client does with an answer, which a real API cannot be made
to give on cue)."""

from __future__ import annotations

import json
import threading
import time

from pos_client.sender import RETURNS_BATCH_PATH
from pos_client.transport import Answer, TransportError


def answer(status: int, body=None, **headers) -> Answer:
    return Answer(
        status,
        {k.lower().replace("_", "-"): v for k, v in headers.items()},
        json.dumps(body).encode() if body is not None else b"",
    )


def accepted(batch: list[dict], first_id: int = 1) -> Answer:
    return answer(
        202,
        [
            {"id": first_id + i, "sale_time": s["sale_time"], "item_id": s["item_id"], "store_id": s["store_id"]}
            for i, s in enumerate(batch)
        ],
    )


def returns_accepted(batch: list[dict], first_id: int = 1) -> Answer:
    """The returns batch endpoint's 202 (api.returns.ReturnAnswer, refund left out)."""
    return answer(
        202,
        [
            {
                "id": first_id + i,
                "sale_id": r["sale_id"],
                "return_time": r["return_time"],
                "store_id": r["store_id"],
                "quantity": r["quantity"],
            }
            for i, r in enumerate(batch)
        ],
    )


class ScriptedTransport:
    """`respond(batch) -> Answer` (or raise TransportError) decides each answer to the sales
    batch endpoint, `returns(batch)` each to the returns one (by default, respond); every POST
    is kept: `requests` (when, body), `posts` (path, headers, body)."""

    def __init__(self, respond, returns=None):
        self.respond = respond
        self.returns = returns or respond
        self.requests: list[tuple[float, list[dict]]] = []
        self.posts: list[tuple[str, dict[str, str], list[dict]]] = []
        self.lock = threading.Lock()

    def request(self, method, path, body=None, headers=None):
        if method == "GET":  # the catalogue: none here (the client then lets the server price)
            return answer(404, {"error": "no catalogue in this script"})
        with self.lock:
            self.requests.append((time.monotonic(), body))
            self.posts.append((path, dict(headers or {}), body))
        return self.returns(body) if path == RETURNS_BATCH_PATH else self.respond(body)

    def close(self):
        pass

    def wait_requests(self, count: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.requests)} requests, wanted {count}")
            time.sleep(0.01)


def unreachable(batch):
    raise TransportError("ConnectionRefusedError: [Errno 111] Connection refused")
