"""What the server's answer to one batch means for each of its sales.

The batch endpoint accepts all of a batch (202, the stored sales in order) or none of it
(422, `errors: [{"index", "error"}]`); so after a 422 the sales it did not name are sent again
at once, and those it named are set aside for good, except a sale_time "in the future",
which is the till's clock running ahead: that sale waits and is tried again later.

Returns (`judge_returns`) are answered the same way by the returns batch endpoint (202 with
the stored returns in order, or none of them and `errors` by index), with one more answer:
409 with Retry-After when a sale is not written yet (still queued on the server), which is
not the return's fault: the returns it names wait and are tried again.
"""

from __future__ import annotations

import dataclasses

from pos_client.backoff import parse_retry_after
from pos_client.spool import SpooledReturn, SpooledSale
from pos_client.transport import Answer

# The server's words for a sale_time ahead of its clock (api/validation.py): not the sale's fault.
CLOCK_AHEAD = "in the future"
# ... and for a till's number it holds for another sale (api/sales.py): not this till's number.
TAKEN = "is another sale"
# The statuses with which the returns endpoint names, by index, the returns it cannot take.
RETURN_REFUSALS = (400, 403, 404, 422)


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
    stored_without_id: list[int] = dataclasses.field(default_factory=list)  # seqs the server holds, id unknown


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
    if status == 409:
        return _stored_already(batch, answer)
    if status in (301, 302, 303, 307, 308):  # never followed: the key would go wherever it points
        location = answer.headers.get("location", "?")
        return Verdict(
            retry=True,
            error=f"{status}: the server redirects to {location}; give the client that URL (https://...)",
        )
    if status == 400 and "seq" in answer.error():  # about the numbers, not a sale: an upgrade under way
        return Verdict(retry=True, error=f"400: {answer.error()}")
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
    by_index = _errors_by_index(answer, len(batch))
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


def _stored_already(batch: list[SpooledSale], answer: Answer) -> Verdict:
    """409: the server holds the sales it names under their till numbers already, and no longer
    knows their ids (out of its window: a sale sent again long after); they count, as sent with
    no id, and the others go again. Only a spool that went on without the server's word can
    see this (docs/guarantees.md, "Tills"), so it is logged loudly."""
    named = _errors_by_index(answer, len(batch))
    if not named:
        return Verdict(retry=True, error=f"409: {answer.error()}")
    if taken := [reason for reason in named.values() if TAKEN in reason]:
        return Verdict(stop=f"409: {taken[0]}; sending is stopped", error=f"409: {answer.error()}")
    verdict = Verdict(error=f"409: {answer.error()}", stored_without_id=[batch[i].seq for i in named])
    rest = [sale for index, sale in enumerate(batch) if index not in named]
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


@dataclasses.dataclass
class ReturnsVerdict:
    sent: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (return id, server id)
    refused: list[tuple[int, str]] = dataclasses.field(default_factory=list)  # (return id, reason)
    send_again: list[list[SpooledReturn]] = dataclasses.field(default_factory=list)  # now, in this order
    early: list[SpooledReturn] = dataclasses.field(default_factory=list)  # their sale not written yet (409)
    held: list[SpooledReturn] = dataclasses.field(default_factory=list)  # return_time ahead of the server
    retry: bool = False  # nothing settled: the same returns later, after a backoff
    retry_after: float | None = None  # what the server asked for, seconds
    stop: str | None = None  # stop sending: the key is not accepted
    error: str | None = None  # what went wrong, for status()


def judge_returns(batch: list[SpooledReturn], answer: Answer) -> ReturnsVerdict:
    status = answer.status
    if 200 <= status < 300:
        return _returns_accepted(batch, answer)
    errors = _errors_by_index(answer, len(batch))
    error = f"{status}: {answer.error()}"
    retry_after = parse_retry_after(answer.headers.get("retry-after"))
    if status == 409:  # some sale is still queued: the returns named wait, the others go again now
        named = [r for i, r in enumerate(batch) if i in errors] or list(batch)
        rest = [r for i, r in enumerate(batch) if i not in errors]
        return ReturnsVerdict(early=named, send_again=[rest] if rest else [], retry_after=retry_after, error=error)
    if status in RETURN_REFUSALS and errors:
        return _returns_refused(batch, errors, error)
    if status == 401 or status == 403:  # a 403 naming no return: the key's, not a return's
        return ReturnsVerdict(
            stop=f"the server refused this till's key ({error}); sending is stopped until the till gets a valid key",
            error=error,
        )
    if status in (400, 413, 422):  # the request as a whole was refused: find the return that did it
        return _split_returns(batch, error)
    if status in (301, 302, 303, 307, 308):  # never followed, as for sales
        location = answer.headers.get("location", "?")
        return ReturnsVerdict(
            retry=True,
            error=f"{status}: the server redirects to {location}; give the client that URL (https://...)",
        )
    # 5xx, 429; and a 404 naming no return: a server without the returns endpoint (yet)
    return ReturnsVerdict(retry=True, retry_after=retry_after, error=error)


def _errors_by_index(answer: Answer, size: int) -> dict[int, str]:
    """The answer's `errors: [{"index", "error"}]`, those that name one of the batch."""
    payload = answer.json()
    errors = payload.get("errors") if isinstance(payload, dict) else None
    by_index: dict[int, str] = {}
    for error in errors if isinstance(errors, list) else []:
        if isinstance(error, dict) and isinstance(error.get("index"), int) and 0 <= error["index"] < size:
            by_index[error["index"]] = str(error.get("error") or answer.error())
    return by_index


def _returns_accepted(batch: list[SpooledReturn], answer: Answer) -> ReturnsVerdict:
    stored = answer.json()
    if (
        not isinstance(stored, list)
        or len(stored) != len(batch)
        or not all(isinstance(s, dict) and isinstance(s.get("id"), int) for s in stored)
    ):
        # Accepted, but unreadable: sending again is safe (same keys, the same returns answered).
        return ReturnsVerdict(
            retry=True,
            error=f"{answer.status} with an answer that is not the list of "
            f"{len(batch)} stored returns: {answer.body[:200]!r}",
        )
    return ReturnsVerdict(sent=[(ret.id, s["id"]) for ret, s in zip(batch, stored)])


def _returns_refused(batch: list[SpooledReturn], errors: dict[int, str], error: str) -> ReturnsVerdict:
    verdict = ReturnsVerdict(error=error)
    rest = []
    for index, ret in enumerate(batch):
        reason = errors.get(index)
        if reason is None:
            rest.append(ret)
        elif CLOCK_AHEAD in reason:
            verdict.held.append(ret)
        else:
            verdict.refused.append((ret.id, reason))
    if rest:
        verdict.send_again.append(rest)
    return verdict


def _split_returns(batch: list[SpooledReturn], error: str) -> ReturnsVerdict:
    if len(batch) == 1:
        if CLOCK_AHEAD in error:
            return ReturnsVerdict(held=list(batch), error=error)
        return ReturnsVerdict(refused=[(batch[0].id, error)], error=error)
    middle = len(batch) // 2
    return ReturnsVerdict(send_again=[batch[:middle], batch[middle:]], error=error)
