"""REDIS_SENTINELS and the replica rule: what the environment gives the API and the worker."""

from __future__ import annotations

import dataclasses
import time

import pytest

from api.app import create_app
from api.sale_queue import ReplicasBehind, SaleQueue
from shared.queue import QueuedSale
from shared.redis_client import (
    PrimaryViaSentinels,
    SentinelHiredisConnection,
    connect_from_settings,
)
from shared.settings import Settings, parse_sentinels
from tests.queue_state import queued_entries, queued_sales
from worker.settings import arq_redis_settings


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("", ()),
        ("s1:26379", (("s1", 26379),)),
        (" s1:26379 , 10.0.0.2:26380,", (("s1", 26379), ("10.0.0.2", 26380))),
        ("[::1]:26379,redis-sentinel-2:26379", (("::1", 26379), ("redis-sentinel-2", 26379))),
    ],
)
def test_sentinels_are_parsed(raw, expected):
    assert parse_sentinels(raw) == expected


@pytest.mark.parametrize("raw", ["s1", "s1:", ":26379", "s1:port", "s1:0", "s1:65536", "s1:26379,s2", ",", "s1:-1"])
def test_a_malformed_sentinel_list_is_refused_naming_the_culprit(raw):
    with pytest.raises(ValueError, match="REDIS_SENTINELS"):
        Settings.from_env({"REDIS_SENTINELS": raw})


def test_redis_url_alone_changes_nothing():
    settings = Settings.from_env({"REDIS_URL": "redis://:pw@cache:6380/3"})
    assert settings.redis_sentinels == ()
    assert settings.replicas_to_confirm == 0  # no WAIT
    arq = arq_redis_settings(settings)
    assert (arq.host, arq.port, arq.database, arq.password, arq.sentinel) == ("cache", 6380, 3, "pw", False)


def test_sentinels_expect_one_replica_unless_told():
    env = {"REDIS_SENTINELS": "s1:26379,s2:26379,s3:26379"}
    settings = Settings.from_env(env)
    assert settings.redis_sentinel_master == "mymaster"
    assert settings.replicas_to_confirm == 1
    assert settings.redis_replica_wait_ms == 500
    assert Settings.from_env({**env, "REDIS_MIN_REPLICAS_ACKED": "0"}).replicas_to_confirm == 0
    assert Settings.from_env({**env, "REDIS_MIN_REPLICAS_ACKED": "2"}).replicas_to_confirm == 2
    # without Sentinel, a replica can still be required (a fixed primary with a replica)
    assert Settings.from_env({"REDIS_MIN_REPLICAS_ACKED": "1"}).replicas_to_confirm == 1


@pytest.mark.parametrize(
    "env, message",
    [
        ({"REDIS_MIN_REPLICAS_ACKED": "one"}, "REDIS_MIN_REPLICAS_ACKED must be an integer"),
        ({"REDIS_MIN_REPLICAS_ACKED": "-1"}, "REDIS_MIN_REPLICAS_ACKED must be 0 or more"),
        ({"REDIS_REPLICA_WAIT_MS": "0"}, "REDIS_REPLICA_WAIT_MS must be at least 1"),
        ({"REDIS_SENTINELS": "s1:26379", "REDIS_SENTINEL_MASTER": " "}, "REDIS_SENTINEL_MASTER"),
        ({"REDIS_SENTINELS": "s1:26379", "REDIS_URL": "unix:///run/redis.sock"}, "unix"),
    ],
)
def test_bad_replica_settings_are_refused(env, message):
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)


async def test_the_url_db_and_password_apply_to_the_primary_found_by_sentinel():
    settings = Settings.from_env(
        {
            "REDIS_URL": "redis://app:secret@ignored-host:1/4",
            "REDIS_SENTINELS": "s1:26379,s2:26380",
            "REDIS_SENTINEL_MASTER": "sales",
        }
    )
    client = connect_from_settings(settings, socket_timeout=0.8)
    pool = client.connection_pool
    assert isinstance(client, PrimaryViaSentinels)
    assert pool.service_name == "sales" and pool.is_master
    assert pool.connection_class is SentinelHiredisConnection
    kwargs = pool.connection_kwargs
    assert (kwargs["db"], kwargs["username"], kwargs["password"], kwargs["socket_timeout"]) == (4, "app", "secret", 0.8)
    assert "host" not in kwargs
    sentinels = [
        (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
        for s in pool.sentinel_manager.sentinels
    ]
    assert sentinels == [("s1", 26379), ("s2", 26380)]
    assert all(s.connection_pool.connection_kwargs["socket_timeout"] for s in pool.sentinel_manager.sentinels)
    await client.aclose()

    arq = arq_redis_settings(settings)
    assert (arq.host, arq.sentinel, arq.sentinel_master, arq.database, arq.password) == (
        [("s1", 26379), ("s2", 26380)],
        True,
        "sales",
        4,
        "secret",
    )


# The replica rule on the shared Redis, which has no replica: WAIT can never be satisfied, so
# every flush is refused after the wait (the failover itself: tests/fault/test_failover.py).


async def test_a_flush_no_replica_confirmed_is_refused_and_a_keyed_retry_adds_nothing(redis_client, queue_keys):
    assert (await redis_client.info("replication"))["connected_slaves"] == 0
    queue = SaleQueue(redis_client, queue_keys, max_depth=10_000, idempotency_ttl=60, replicas=1, replica_wait_ms=50)
    sale = QueuedSale(1, 1, 1, 1, 100, 1, "till-7-0001", 1)
    for _ in range(2):
        started = time.monotonic()
        with pytest.raises(ReplicasBehind):
            await queue.put([sale])
        assert 0.04 <= time.monotonic() - started < 1
    # queued once (it may still be written), and the retry found it instead of queueing it again
    assert await queued_sales(redis_client, queue_keys) == 1
    assert await queued_entries(redis_client, queue_keys) == 1
    await queue.close()


async def test_without_the_rule_the_same_redis_answers_as_before(redis_client, queue_keys):
    queue = SaleQueue(redis_client, queue_keys, max_depth=10_000, idempotency_ttl=60)
    [stored] = await queue.put([QueuedSale(2, 1, 1, 1, 100, 1, "k", 1)])
    assert stored.id == 2
    await queue.close()


async def test_post_unconfirmed_by_replicas_is_503_json_with_retry_after(aiohttp_client, settings, seed):
    await seed()
    app = create_app(dataclasses.replace(settings, redis_min_replicas_acked=1, redis_replica_wait_ms=50))
    client = await aiohttp_client(app)
    for path, body in (
        ("/sales/", {"item_id": 1, "store_id": 1, "idempotency_key": "r-1"}),
        ("/sales/batch/", [{"item_id": 1, "store_id": 1}, {"item_id": 2, "store_id": 1}]),
    ):
        started = time.monotonic()
        response = await client.post(path, json=body)
        assert time.monotonic() - started < 1.5
        assert response.status == 503
        assert response.headers["Retry-After"].isdigit()
        assert "idempotency key" in (await response.json())["error"]
