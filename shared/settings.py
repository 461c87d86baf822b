"""Settings read once from the environment and passed explicitly to the app and worker."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import zoneinfo

from shared import admin_token as admin_tokens
from shared.chain_fold import FOLD_INTERVAL_MS
from shared.queue import QueueKeys


def _env_bool(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def parse_sentinels(raw: str) -> tuple[tuple[str, int], ...]:
    """`host:port,host:port,...` (an IPv6 host in brackets: `[::1]:26379`) -> ((host, port), ...)."""
    sentinels = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        host, sep, port = part.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f"REDIS_SENTINELS: {part!r} is not host:port "
                f"(expected e.g. sentinel-1:26379,sentinel-2:26379,sentinel-3:26379)"
            )
        sentinels.append((host, int(port)))
    if raw.strip() and not sentinels:
        raise ValueError(f"REDIS_SENTINELS: {raw!r} names no sentinel")
    return tuple(sentinels)


def parse_networks(raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """`10.0.0.0/8,192.168.1.7,::1` -> networks (a bare address is a network of one)."""
    networks = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError as exc:
            raise ValueError(f"TRUSTED_PROXIES: {part!r} is not an address or network ({exc})") from exc
    return tuple(networks)


@dataclasses.dataclass(frozen=True)
class Settings:
    database_url: str = "postgresql://postgres@localhost:5432/postgres"
    redis_url: str = "redis://localhost:6379/0"
    # Redis through Sentinel: the primary of `redis_sentinel_master` as the sentinels name it;
    # REDIS_URL then gives only the DB number, user and password (its host and port are unused).
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_sentinel_master: str = "mymaster"
    # A 202 waits until this many replicas have the flush (WAIT); None: 1 with Sentinel, else 0.
    redis_min_replicas_acked: int | None = None
    # How long a flush waits for that; past it, its sales are answered 503 (retry with the key).
    redis_replica_wait_ms: int = 500
    host: str = "0.0.0.0"
    port: int = 8080
    admin_token: str | None = None
    # Without ADMIN_TOKEN, the API keeps a generated one in this file (shared.admin_token).
    admin_token_file: str | None = None
    # Reverse proxies (addresses, networks) whose X-Forwarded-For names the client (api.forwarded).
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    report_timezone: str = "UTC"
    auth_required: bool = False
    # Queue: above this many sales waiting for the worker, POST /sales/ answers 503 (spread
    # evenly over the partitions: QueueKeys.max_depth_per_partition).
    queue_max_depth: int = 2_000_000
    # Streams the queue is split into, by store (shared.queue.QueueKeys); each is written to
    # PostgreSQL by one worker at a time, so this is the most workers that add up. Fixed for a
    # deployment: changing it moves stores between partitions (docs/scaling.md).
    queue_partitions: int = 16
    # How long Redis remembers an idempotency key (a retry after that is still never
    # stored twice, thanks to the unique index, but may get a fresh id in its answer).
    idempotency_ttl_seconds: int = 7 * 24 * 3600
    redis_key_prefix: str = "sales:"
    # A return whose sale is not written yet waits this long for it, then answers 409 (api.returns).
    return_wait_ms: int = 1000
    # A sale_time (or return_time) further back than this is refused with 422 (api.sale_times):
    # a year of reports and a month of slack for a till that was offline that long.
    max_sale_age_days: int = 400
    api_processes: int = 0  # 0: one per core
    db_pool_size: int = 10
    # Worker
    worker_batch_entries: int = 200
    worker_reclaim_idle_ms: int = 15_000
    # After a read that did not fill a batch, wait this long for more before writing: a
    # transaction has a fixed cost, and sales written 30 at a time spent 5x more CPU each.
    worker_linger_ms: int = 100
    # After a committed batch, fold chain_deltas at most this often (shared.chain_fold).
    worker_fold_interval_ms: int = FOLD_INTERVAL_MS

    def __post_init__(self) -> None:
        if self.admin_token is not None:
            admin_tokens.check(self.admin_token)
        try:
            zoneinfo.ZoneInfo(self.report_timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"REPORT_TIMEZONE={self.report_timezone!r} is not an IANA time zone") from exc
        if self.redis_sentinels and not self.redis_sentinel_master:
            raise ValueError("REDIS_SENTINEL_MASTER must name the monitored master (default mymaster)")
        if self.redis_sentinels and self.redis_url.startswith("unix:"):
            raise ValueError("REDIS_URL is a unix:// socket, which cannot be combined with REDIS_SENTINELS")
        if self.redis_min_replicas_acked is not None and self.redis_min_replicas_acked < 0:
            raise ValueError(f"REDIS_MIN_REPLICAS_ACKED must be 0 or more, got {self.redis_min_replicas_acked}")
        if not 1 <= self.queue_partitions <= 1024:
            raise ValueError(f"QUEUE_PARTITIONS must be between 1 and 1024, got {self.queue_partitions}")
        if self.max_sale_age_days < 1:
            raise ValueError(f"MAX_SALE_AGE_DAYS must be at least 1, got {self.max_sale_age_days}")
        if self.redis_replica_wait_ms < 1:  # WAIT with timeout 0 would block forever
            raise ValueError(f"REDIS_REPLICA_WAIT_MS must be at least 1, got {self.redis_replica_wait_ms}")

    @property
    def replicas_to_confirm(self) -> int:
        """Replicas that must hold a flush before its sales are answered 202 (0: no WAIT)."""
        if self.redis_min_replicas_acked is not None:
            return self.redis_min_replicas_acked
        return 1 if self.redis_sentinels else 0

    @property
    def queue_keys(self) -> QueueKeys:
        return QueueKeys(self.redis_key_prefix, self.queue_partitions)

    @property
    def timezone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.report_timezone)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        defaults = cls()

        def get(name: str, default):
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            if isinstance(default, bool):
                return _env_bool(raw)
            if isinstance(default, int):
                try:
                    return int(raw)
                except ValueError as exc:
                    raise ValueError(f"{name} must be an integer, got {raw!r}") from exc
            return raw

        return cls(
            database_url=get("DATABASE_URL", defaults.database_url),
            redis_url=get("REDIS_URL", defaults.redis_url),
            redis_sentinels=parse_sentinels(env.get("REDIS_SENTINELS", "")),
            redis_sentinel_master=get("REDIS_SENTINEL_MASTER", defaults.redis_sentinel_master).strip(),
            redis_min_replicas_acked=(
                get("REDIS_MIN_REPLICAS_ACKED", 0) if env.get("REDIS_MIN_REPLICAS_ACKED") else None
            ),  # unset: by topology
            redis_replica_wait_ms=get("REDIS_REPLICA_WAIT_MS", defaults.redis_replica_wait_ms),
            host=get("HOST", defaults.host),
            port=get("PORT", defaults.port),
            admin_token=env.get("ADMIN_TOKEN") or None,
            admin_token_file=env.get("ADMIN_TOKEN_FILE") or None,
            trusted_proxies=parse_networks(env.get("TRUSTED_PROXIES", "")),
            report_timezone=get("REPORT_TIMEZONE", defaults.report_timezone),
            auth_required=get("AUTH_REQUIRED", defaults.auth_required),
            queue_max_depth=get("QUEUE_MAX_DEPTH", defaults.queue_max_depth),
            queue_partitions=get("QUEUE_PARTITIONS", defaults.queue_partitions),
            idempotency_ttl_seconds=get("IDEMPOTENCY_TTL_SECONDS", defaults.idempotency_ttl_seconds),
            redis_key_prefix=get("REDIS_KEY_PREFIX", defaults.redis_key_prefix),
            return_wait_ms=get("RETURN_WAIT_MS", defaults.return_wait_ms),
            max_sale_age_days=get("MAX_SALE_AGE_DAYS", defaults.max_sale_age_days),
            api_processes=get("API_PROCESSES", defaults.api_processes),
            db_pool_size=get("DB_POOL_SIZE", defaults.db_pool_size),
            worker_batch_entries=get("WORKER_BATCH_ENTRIES", defaults.worker_batch_entries),
            worker_reclaim_idle_ms=get("WORKER_RECLAIM_IDLE_MS", defaults.worker_reclaim_idle_ms),
            worker_linger_ms=get("WORKER_LINGER_MS", defaults.worker_linger_ms),
            worker_fold_interval_ms=get("WORKER_FOLD_INTERVAL_MS", defaults.worker_fold_interval_ms),
        )
