"""Prometheus metrics: the API's own, and at scrape time the queue's and the worker's.

With several API processes (`API_PROCESSES`), the launcher sets PROMETHEUS_MULTIPROC_DIR
before this module is imported, and a scrape of any process sums all of them.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import os
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from shared import worker_stats

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

HTTP_REQUESTS = Counter("http_requests_total", "HTTP requests answered", ["method", "route", "status"])
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds", "Time to answer a request", ["method", "route"], buckets=LATENCY_BUCKETS
)
SALES_ACCEPTED = Counter("sales_accepted_total", "Sales answered 202 (replays of an idempotency key included)")
SALES_REJECTED = Counter("sales_rejected_total", "Sales refused", ["reason"])
RETURNS_ACCEPTED = Counter("returns_accepted_total", "Returns answered 202 (replays of an idempotency key included)")
FLUSH_SIZE = Histogram(
    "queue_flush_sales",
    "Sales per Redis round trip (group commit)",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
)
STORE_DAYS = Counter(
    "report_store_days_total",
    "Stores' days of today read from PostgreSQL, or dropped by a change that came without deltas (api.stores_today)",
    ["event"],
)
CHAIN_DAYS = Counter(
    "report_chain_days_total",
    "The chain's today read from PostgreSQL, or dropped by a change that came without deltas (api.chain_today)",
    ["event"],
)
AUTH_FAILURES = Counter("auth_failures_total", "Requests refused for a missing or bad key", ["reason"])


class _RequestTally:
    """Answered requests counted in plain dicts, moved into the Prometheus metrics in bulk.

    With several processes, prometheus_client writes every inc/observe to an mmap'ed file
    under a lock: 9 µs per request, measured, about a tenth of what a sale costs the API.
    Here a request costs a dict update and a bisect; `flush` (every second, and before each
    scrape of this process) adds the totals, so a scrape lags other processes by at most 1 s.
    """

    def __init__(self):
        self._counts: dict[tuple[str, str, int], int] = {}
        self._latencies: dict[tuple[str, str], list] = {}  # [count per bucket..., sum of seconds]
        self._accepted = 0

    def sales_accepted(self, count: int) -> None:
        self._accepted += count

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        self._counts[key] = self._counts.get(key, 0) + 1
        tally = self._latencies.get((method, route))
        if tally is None:
            tally = self._latencies[(method, route)] = [0] * (len(LATENCY_BUCKETS) + 2)
        tally[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1  # le semantics, as Histogram
        tally[-1] += seconds

    def flush(self) -> None:
        counts, self._counts = self._counts, {}
        latencies, self._latencies = self._latencies, {}
        accepted, self._accepted = self._accepted, 0
        if accepted:
            SALES_ACCEPTED.inc(accepted)
        for (method, route, status), count in counts.items():
            HTTP_REQUESTS.labels(method, route, str(status)).inc(count)
        for (method, route), tally in latencies.items():
            histogram = HTTP_LATENCY.labels(method, route)
            # prometheus_client (pinned) keeps one value per bucket and the sum: adding to
            # them is what `observe` does for each value, done once per bucket.
            for bucket, count in zip(histogram._buckets, tally[:-1]):
                if count:
                    bucket.inc(count)
            histogram._sum.inc(tally[-1])


_tally = _RequestTally()
observe_request = _tally.observe
sales_accepted = _tally.sales_accepted
flush = _tally.flush


async def flush_every_second() -> None:
    while True:
        await asyncio.sleep(1.0)
        try:
            flush()
        except Exception:  # metrics must never stop; say why once per second at most
            log.exception("flushing request metrics failed")


class _Snapshot:
    """Gauges read from Redis and PostgreSQL just before the scrape."""

    def __init__(self, families):
        self._families = families

    def collect(self):
        return self._families


def _worker_families(stats: dict[str, int], depth: int, oldest_age_s: float | None, dead_pending: int | None):
    families: list[Metric] = [GaugeMetricFamily("queue_depth_sales", "Sales accepted and not yet written", value=depth)]
    families.append(
        GaugeMetricFamily(
            "queue_oldest_age_seconds", "Age of the oldest sale not yet written (worker lag)", value=oldest_age_s or 0.0
        )
    )
    for name, doc in worker_stats.COUNTERS.items():
        families.append(CounterMetricFamily(f"worker_{name}", doc, value=stats.get(name, 0)))
    buckets = [(str(b), stats.get(f"batch_size_le_{b}", 0)) for b in worker_stats.BATCH_SIZE_BUCKETS]
    buckets.append(("+Inf", stats.get("batches", 0)))
    families.append(
        HistogramMetricFamily(
            "worker_batch_size_sales",
            "Sales per batch written by the worker",
            buckets=buckets,
            sum_value=stats.get("batch_size_sum", 0),
        )
    )
    if dead_pending is not None:
        families.append(
            GaugeMetricFamily("dead_letters_pending", "Sales in dead_letter not yet replayed", value=dead_pending)
        )
    return families


def render(stats: dict[str, int], depth: int, oldest_age_s: float | None, dead_pending: int | None) -> bytes:
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
        registry.register(_Snapshot(_worker_families(stats, depth, oldest_age_s, dead_pending)))
        return generate_latest(registry)
    from prometheus_client import REGISTRY

    registry.register(_Snapshot(_worker_families(stats, depth, oldest_age_s, dead_pending)))
    return generate_latest(REGISTRY) + generate_latest(registry)


def now_ms() -> int:
    return int(time.time() * 1000)
