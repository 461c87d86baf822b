"""What the server's answer to one batch means for each of its sales.

The batch endpoint accepts all of a batch (202, the stored sales in order) or none of it
(422, `errors: [{"index", "error"}]`); so after a 422 the sales it did not name are sent again
at once, and those it named are set aside for good, except a sale_time "in the future",
which is the till's clock running ahead: that sale waits and is tried again later.
"""

from __future__ import annotations

import dataclasses

from pos_client.backoff import parse_retry_after
from pos_client.spool import SpooledSale
from pos_client.transport import Answer

# The server's words for a sale_time ahead of its clock (api/validation.py): not the sale's fault.
CLOCK_AHEAD = "in the future"


@dataclasses.dataclass
class Verdict:
    sent: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (seq, server id)
    refused: list[tuple[int, str]] = dataclasses.field(default_factory=list)  # (seq, reason)
    send_again: list[list[SpooledSale]] = dataclasses.field(default_factory=list)  # now, in this order
    retry: bool = False  # nothing settled: the same sales later, after a backoff
    retry_after: float | None = None  # what the server asked for, seconds
    held: list[SpooledSale] = dataclasses.field(default_factory=list)  # wait for the clock, then retry
    stop: str | None = None  # stop sending: the key is not accepted
    error: str | None = None  # what went wrong, for status()


def judge(batch: list[SpooledSale], answer: Answer) -> Verdict:
    status = answer.status
    if 200 <= status < 300:
        return _accepted(batch, answer)
    if status in (401, 403):
        return Verdict(
            stop=f"the server refused this till's key ({status}: {answer.error()}); "
            "sending is stopped until the till gets a valid key",
            error=f"{status}: {answer.error()}",
        )
    if status == 422:
        return _refused(batch, answer)
    if status in (301, 302, 303, 307, 308):  # never followed: the key would go wherever it points
        location = answer.headers.get("location", "?")
        return Verdict(
            retry=True,
            error=f"{status}: the server redirects to {location}; give the client that URL (https://...)",
        )
    if status in (400, 413):  # the request as a whole was refused: find the sale that did it
        return _split(batch, f"{status}: {answer.error()}")
    return Verdict(
        retry=True,
        retry_after=parse_retry_after(answer.headers.get("retry-after")),
        error=f"{status}: {answer.error()}",
    )


def _accepted(batch: list[SpooledSale], answer: Answer) -> Verdict:
    stored = answer.json()
    if (
        not isinstance(stored, list)
        or len(stored) != len(batch)
        or not all(isinstance(s, dict) and isinstance(s.get("id"), int) for s in stored)
    ):
        # Accepted, but the answer is unreadable: sending again is safe (same keys, same sales).
        return Verdict(
            retry=True,
            error=f"{answer.status} with an answer that is not the list of "
            f"{len(batch)} stored sales: {answer.body[:200]!r}",
        )
    return Verdict(sent=[(sale.seq, s["id"]) for sale, s in zip(batch, stored)])


def _refused(batch: list[SpooledSale], answer: Answer) -> Verdict:
    payload = answer.json()
    errors = payload.get("errors") if isinstance(payload, dict) else None
    by_index: dict[int, str] = {}
    if isinstance(errors, list):
        for error in errors:
            if isinstance(error, dict) and isinstance(error.get("index"), int) and 0 <= error["index"] < len(batch):
                by_index[error["index"]] = str(error.get("error") or answer.error())
    if not by_index:  # the server did not say which: halve until the bad sale is alone
        return _split(batch, f"422: {answer.error()}")
    verdict = Verdict(error=f"422: {answer.error()}")
    rest = []
    for index, sale in enumerate(batch):
        reason = by_index.get(index)
        if reason is None:
            rest.append(sale)
        elif CLOCK_AHEAD in reason:
            verdict.held.append(sale)
        else:
            verdict.refused.append((sale.seq, reason))
    if rest:
        verdict.send_again.append(rest)
    return verdict


def _split(batch: list[SpooledSale], error: str) -> Verdict:
    if len(batch) == 1:
        if CLOCK_AHEAD in error:
            return Verdict(held=list(batch), error=error)
        return Verdict(refused=[(batch[0].seq, error)], error=error)
    middle = len(batch) // 2
    return Verdict(send_again=[batch[:middle], batch[middle:]], error=error)
