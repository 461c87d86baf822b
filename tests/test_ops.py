"""/health, /metrics, /openapi.json, and JSON errors for unknown paths and methods."""

from __future__ import annotations

import dataclasses
import re
import time

from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.openapi import spec
from api.routes import ROUTES


async def test_health_ok(client, redis_client, queue_keys, seed):
    await seed()
    response = await client.get("/health")
    assert response.status == 200
    body = await response.json()
    assert {k: body[k] for k in ("status", "postgres", "redis")} == {"status": "ok", "postgres": "ok", "redis": "ok"}
    assert "error" not in body
    assert body["queue_depth"] == 0
    assert (await client.post("/sales/", json={"item_id": 1, "store_id": 1})).status == 202
    assert (await (await client.get("/health/")).json())["queue_depth"] == 1


async def test_health_503_when_redis_is_unreachable(aiohttp_client, settings):
    client = await aiohttp_client(create_app(dataclasses.replace(settings, redis_url="redis://127.0.0.1:1/0")))
    started = time.monotonic()
    response = await client.get("/health")
    assert time.monotonic() - started < 2.5
    assert response.status == 503
    body = await response.json()
    assert body["status"] != "ok" and body["postgres"] == "ok" and body["redis"] != "ok"
    assert "redis" in body["error"]


def _families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(families: dict, name: str, sample: str | None = None, **labels) -> float:
    family = families[name]
    values = [
        s.value
        for s in family.samples
        if (sample is None or s.name == sample) and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(values) == 1, (name, labels, family.samples)
    return values[0]


async def test_metrics_are_prometheus_text(client, seed, drain, db):
    await seed()
    assert (await client.get("/items/")).status == 200
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    text = await response.text()
    families = _families(text)  # parses, or raises
    for name in (
        "http_requests",
        "http_request_duration_seconds",
        "queue_depth_sales",
        "queue_oldest_age_seconds",
        "worker_batch_size_sales",
        "worker_dead_letters",
        "dead_letters_pending",
    ):
        assert name in families, name
    for sample in (
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "worker_dead_letters_total",
        "worker_batch_size_sales_bucket",
        "worker_batch_size_sales_count",
    ):
        assert f"\n{sample}" in text, sample
    assert _value(families, "http_requests", "http_requests_total", method="GET", route="/items/", status="200") >= 1
    assert _value(families, "queue_depth_sales") == 0
    assert _value(families, "queue_oldest_age_seconds") == 0
    assert _value(families, "dead_letters_pending") == 0
    assert _value(families, "worker_batch_size_sales", "worker_batch_size_sales_count") == 0


def test_request_tally_gives_what_direct_observation_gives():
    from prometheus_client import CollectorRegistry, Histogram

    from api import metrics

    seconds = [0.0001, 0.0005, 0.0005001, 0.003, 0.02, 9.99, 10, 42.0]
    reference = Histogram(
        "reference_seconds", "", ["method", "route"], buckets=metrics.LATENCY_BUCKETS, registry=CollectorRegistry()
    )
    accepted_before = metrics.SALES_ACCEPTED._value.get()
    for value in seconds:
        reference.labels("PUT", "/tally-test").observe(value)
        metrics.observe_request("PUT", "/tally-test", 204, value)
        metrics.sales_accepted(2)
    metrics.flush()
    assert metrics.SALES_ACCEPTED._value.get() - accepted_before == 2 * len(seconds)

    def samples(histogram, prefix):
        return {
            (s.name.removeprefix(prefix), s.labels.get("le")): s.value
            for s in histogram.collect()[0].samples
            if s.labels.get("route") == "/tally-test" and not s.name.endswith("_created")
        }

    assert samples(metrics.HTTP_LATENCY, "http_request_duration_seconds") == samples(reference, "reference_seconds")
    counted = [
        s.value
        for s in metrics.HTTP_REQUESTS.collect()[0].samples
        if s.name == "http_requests_total" and s.labels == {"method": "PUT", "route": "/tally-test", "status": "204"}
    ]
    assert counted == [len(seconds)]


async def test_metrics_follow_the_queue_and_the_worker(client, seed, drain, db):
    await seed()
    response = await client.post("/sales/batch/", json=[{"item_id": 1, "store_id": 1}] * 3)
    assert response.status == 202
    families = _families(await (await client.get("/metrics")).text())
    assert _value(families, "queue_depth_sales") == 3
    assert 0 <= _value(families, "queue_oldest_age_seconds") < 60

    await drain()
    await db.execute("INSERT INTO dead_letter (sale_id, sale, reason) VALUES (1, '{}', 'test')")
    families = _families(await (await client.get("/metrics")).text())
    assert _value(families, "queue_depth_sales") == 0
    assert _value(families, "queue_oldest_age_seconds") == 0
    assert _value(families, "worker_batch_size_sales", "worker_batch_size_sales_count") == 1
    assert _value(families, "worker_batch_size_sales", "worker_batch_size_sales_sum") == 3
    assert _value(families, "worker_batch_size_sales", "worker_batch_size_sales_bucket", le="1") == 0
    assert _value(families, "worker_batch_size_sales", "worker_batch_size_sales_bucket", le="10") == 1
    assert _value(families, "worker_sales_written", "worker_sales_written_total") == 3
    assert _value(families, "dead_letters_pending") == 1


def _spec_operations() -> set[tuple[str, str]]:
    methods = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
    return {(method.upper(), path) for path, item in spec()["paths"].items() for method in item if method in methods}


def test_openapi_describes_every_route_and_nothing_else():
    routes = {(r.method, r.path) for r in ROUTES}
    missing = routes - _spec_operations()
    extra = _spec_operations() - routes
    assert not missing, f"routes missing from the OpenAPI spec: {sorted(missing)}"
    assert not extra, f"operations in the OpenAPI spec with no route: {sorted(extra)}"


def test_openapi_references_resolve():
    document = spec()

    def refs(node):
        if isinstance(node, dict):
            if "$ref" in node:
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    for ref in refs(document):
        target = document
        assert ref.startswith("#/"), ref
        for part in ref[2:].split("/"):
            assert part in target, f"unresolved {ref}"
            target = target[part]


async def test_openapi_json_is_served(client):
    response = await client.get("/openapi.json")
    assert response.status == 200
    assert response.content_type == "application/json"
    document = await response.json()
    assert document == spec()
    assert document["openapi"].startswith("3.")


async def test_every_documented_operation_is_routed(client):
    """The router resolves every documented (method, path): no 404, no 405."""
    from aiohttp.test_utils import make_mocked_request

    app = client.server.app
    for method, path in sorted(_spec_operations()):
        concrete = re.sub(r"\{[^}]+\}", "x", path)
        for candidate in {concrete, concrete.rstrip("/") or "/"}:
            match = await app.router.resolve(make_mocked_request(method, candidate, app=app))
            assert match.http_exception is None, (method, candidate, match.http_exception)


UNROUTED = [
    ("GET", "/nope", 404),
    ("GET", "/items/top/extra", 404),
    ("GET", "/sales//", 404),
    ("GET", "/%ff%fe", 404),
    ("GET", "/" + "a" * 2000, 404),
    ("POST", "/items/top/", 405),
    ("DELETE", "/items/", 405),
    ("GET", "/sales/", 405),
    ("PUT", "/sales/batch/", 405),
    ("PATCH", "/clear/", 405),
    ("POST", "/health", 405),
]


async def test_unknown_paths_and_methods_answer_json(client):
    for method, path, status in UNROUTED:
        response = await client.request(method, path, headers={"Accept": "text/html"})
        assert response.status == status, (method, path)
        assert response.content_type == "application/json", (method, path)
        body = await response.json()
        assert list(body) == ["error"] and body["error"], (method, path)
        if status == 405:
            assert response.headers.get("Allow"), (method, path)
