"""Settings read once from the environment and passed explicitly to the app and worker."""
from __future__ import annotations

import dataclasses
import os
import zoneinfo


def _env_bool(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


@dataclasses.dataclass(frozen=True)
class Settings:
    database_url: str = "postgresql://postgres@localhost:5432/postgres"
    redis_url: str = "redis://localhost:6379/0"
    host: str = "0.0.0.0"
    port: int = 8080
    admin_token: str | None = None
    report_timezone: str = "UTC"
    auth_required: bool = False
    # Queue: above this many sales waiting for the worker, POST /sales/ answers 503.
    queue_max_depth: int = 2_000_000
    # How long Redis remembers an idempotency key (a retry after that is still never
    # stored twice, thanks to the unique index, but may get a fresh id in its answer).
    idempotency_ttl_seconds: int = 7 * 24 * 3600
    redis_key_prefix: str = "sales:"
    api_processes: int = 0  # 0: one per core
    db_pool_size: int = 10
    # Worker
    worker_batch_entries: int = 200
    worker_reclaim_idle_ms: int = 15_000
    # After a read that did not fill a batch, wait this long for more before writing: a
    # transaction has a fixed cost, and sales written 30 at a time spent 5x more CPU each.
    worker_linger_ms: int = 100

    def __post_init__(self) -> None:
        try:
            zoneinfo.ZoneInfo(self.report_timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"REPORT_TIMEZONE={self.report_timezone!r} is not an IANA time zone") from exc

    @property
    def timezone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.report_timezone)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Settings":
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
            host=get("HOST", defaults.host),
            port=get("PORT", defaults.port),
            admin_token=env.get("ADMIN_TOKEN") or None,
            report_timezone=get("REPORT_TIMEZONE", defaults.report_timezone),
            auth_required=get("AUTH_REQUIRED", defaults.auth_required),
            queue_max_depth=get("QUEUE_MAX_DEPTH", defaults.queue_max_depth),
            idempotency_ttl_seconds=get("IDEMPOTENCY_TTL_SECONDS", defaults.idempotency_ttl_seconds),
            redis_key_prefix=get("REDIS_KEY_PREFIX", defaults.redis_key_prefix),
            api_processes=get("API_PROCESSES", defaults.api_processes),
            db_pool_size=get("DB_POOL_SIZE", defaults.db_pool_size),
            worker_batch_entries=get("WORKER_BATCH_ENTRIES", defaults.worker_batch_entries),
            worker_reclaim_idle_ms=get("WORKER_RECLAIM_IDLE_MS", defaults.worker_reclaim_idle_ms),
            worker_linger_ms=get("WORKER_LINGER_MS", defaults.worker_linger_ms),
        )
