"""One simulated till, as its own process: `python -m pos_client.till PLAN.json`.

It sells through a SalesClient for the plan's trading day (compressed into `day_seconds`),
goes offline during the plan's windows (its transport then fails as a cut cable would), and
at the end flushes and prints `done {status}`. A `return_share` of the sales is taken back a
few baskets later (offline too: the return then waits in the spool with its sale), part or
all of it. With `echo`, it prints `rec <key> <item> <quantity>` for every sale once `record`
returned, and `ret <key> <sale key> <quantity>` for every return once `record_return` did: the
parent's own copy of what the till promised to keep, checked against the spool and the server.
Started again after a kill, it goes on from the same spool at the moment of the day it is (the
returns it had planned are forgotten with the process, as a customer who changed their mind).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import sys
import time

from pos_client.client import RecordedSale, SalesClient
from pos_client.transport import HttpTransport, TransportError

OPENING_HOUR, CLOSING_HOUR = 9.0, 21.0
# Relative selling intensity by hour of the day: a lunch peak and a bigger evening one.
PEAKS = ((12.0, 14.0, 2.5), (17.0, 19.5, 3.0))


@dataclasses.dataclass
class Plan:
    url: str
    store_id: int
    spool: str
    items: list[int]
    day_start: float  # Unix time at which the simulated day opens
    day_seconds: float  # real seconds the trading day lasts
    baskets_per_day: int
    key: str | None = None
    profile: str = "day"  # "day": opening hours and peaks; "flat": a steady rate
    offline: list[list[float]] = dataclasses.field(default_factory=list)  # [from, to] seconds after day_start
    unknown_item: int | None = None  # this item id is sold every `unknown_every`-th basket
    unknown_every: int = 0
    seed: int = 0
    echo: bool = False
    flush_timeout: float = 120.0
    flush_interval: float = 0.5
    batch_size: int = 1000
    ca_bundle: str | None = None  # a private CA's root certificate (PEM), for an https:// url
    allow_plain_http: bool = False  # send the key over an http:// url (tests on loopback)
    return_share: float = 0.0  # share of the sales taken back, 1 to 20 baskets later


def intensity(hour: float) -> float:
    """Selling rate at this simulated hour, relative to a quiet hour (0 when closed)."""
    if not OPENING_HOUR <= hour < CLOSING_HOUR:
        return 0.0
    for start, end, factor in PEAKS:
        if start <= hour < end:
            return factor
    return 1.0


def _mean_intensity(profile: str) -> float:
    if profile == "flat":
        return 1.0
    steps = 1200
    span = CLOSING_HOUR - OPENING_HOUR
    return sum(intensity(OPENING_HOUR + span * (i + 0.5) / steps) for i in range(steps)) / steps


def basket(rng: random.Random, items: list[int]) -> list[tuple[int, int]]:
    """1 to 8 lines, about 2.5 on average; mostly one of each item."""
    lines = 1
    while lines < 8 and rng.random() < 0.6:
        lines += 1
    return [(rng.choice(items), 1 if rng.random() < 0.8 else rng.randint(2, 4)) for _ in range(lines)]


class Returns:
    """The sales a customer will bring back, each due a few baskets after it was sold."""

    def __init__(self, client: SalesClient, rng: random.Random, share: float, echo: bool):
        self.client = client
        self.rng = rng
        self.share = share
        self.echo = echo
        self.due: list[tuple[int, RecordedSale]] = []  # (basket number, sale)

    def plan(self, sales: list[RecordedSale], basket_number: int) -> None:
        for sale in sales:
            if self.rng.random() < self.share:
                self.due.append((basket_number + self.rng.randint(1, 20), sale))

    def make_due(self, basket_number: int | None = None) -> None:
        """Record the returns due by then (None: all of them, at closing time)."""
        now = [s for when, s in self.due if basket_number is None or when <= basket_number]
        self.due = [(when, s) for when, s in self.due if basket_number is not None and when > basket_number]
        for sale in now:
            returned = self.client.record_return(sale, quantity=self.rng.randint(1, sale.quantity))
            if self.echo:
                sys.stdout.write(f"ret {returned.idempotency_key} {sale.idempotency_key} {returned.quantity}\n")
                sys.stdout.flush()


class OfflineWindows:
    """A transport that fails during the plan's offline windows, as if the network were cut."""

    def __init__(self, inner, day_start: float, windows: list[list[float]]):
        self.inner = inner
        self.windows = [(day_start + a, day_start + b) for a, b in windows]

    def request(self, *args, **kwargs):
        now = time.time()
        if any(a <= now < b for a, b in self.windows):
            raise TransportError("network down (simulated)")
        return self.inner.request(*args, **kwargs)

    def close(self) -> None:
        self.inner.close()


def run(plan: Plan) -> dict:
    rng = random.Random(plan.seed * 1_000_003 + int(time.time() * 1000) % 1_000_003)
    transport = OfflineWindows(
        HttpTransport(plan.url, ca_bundle=plan.ca_bundle, allow_plain_http=plan.allow_plain_http),
        plan.day_start,
        plan.offline,
    )
    client = SalesClient(
        plan.url,
        plan.key,
        allow_plain_http=plan.allow_plain_http,
        store_id=plan.store_id,
        spool=plan.spool,
        transport=transport,
        flush_interval=plan.flush_interval,
        batch_size=plan.batch_size,
    )
    mean = _mean_intensity(plan.profile)
    rate_per_second = plan.baskets_per_day / plan.day_seconds / mean  # at intensity 1
    baskets = 0
    returns = Returns(client, rng, plan.return_share, plan.echo)
    try:
        while True:
            now = time.time()
            elapsed = now - plan.day_start
            if elapsed >= plan.day_seconds:
                break
            hour = OPENING_HOUR + (CLOSING_HOUR - OPENING_HOUR) * max(elapsed, 0) / plan.day_seconds
            level = 1.0 if plan.profile == "flat" else intensity(hour)
            # Poisson arrivals at the current intensity (thinning would be exact; steps are small)
            gap = -math.log(1.0 - rng.random()) / (rate_per_second * level) if level else 0.05
            time.sleep(min(gap, 0.25) if level else gap)
            if level and gap > 0.25:
                continue
            lines = basket(rng, plan.items)
            baskets += 1
            if plan.unknown_item and plan.unknown_every and baskets % plan.unknown_every == 0:
                lines.append((plan.unknown_item, 1))
            recorded = client.record_many(lines)
            if plan.echo:
                sys.stdout.write("".join(f"rec {s.idempotency_key} {s.item_id} {s.quantity}\n" for s in recorded))
                sys.stdout.flush()
            returns.plan(recorded, baskets)
            returns.make_due(baskets)
        returns.make_due()
        flushed = client.flush(timeout=plan.flush_timeout)
        status = dataclasses.asdict(client.status())
        status["flushed"] = flushed
        return status
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m pos_client.till PLAN.json", file=sys.stderr)
        return 2
    with open(args[0]) as handle:
        plan = Plan(**json.load(handle))
    logging.basicConfig(level=logging.WARNING, format=f"till {plan.store_id}/{plan.seed} %(levelname)s %(message)s")
    status = run(plan)
    print("done " + json.dumps(status), flush=True)
    return 0 if status["flushed"] else 1


if __name__ == "__main__":
    sys.exit(main())
