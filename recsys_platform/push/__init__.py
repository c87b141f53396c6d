"""Push delivery: choose users to notify, queue their top recommendation, deliver it at least once."""

from __future__ import annotations

from recsys_platform.push.queue import (
    DEFAULT_DEDUP_TTL_S,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_VISIBILITY_TIMEOUT_S,
    DeadLetter,
    Delivery,
    PushMessage,
    PushQueue,
    QueueError,
    QueueStats,
    QueueUnavailableError,
)
from recsys_platform.sqlite_client import SQLITE_SCHEME, sqlite_path

__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_VISIBILITY_TIMEOUT_S",
    "DeadLetter",
    "Delivery",
    "PushMessage",
    "PushQueue",
    "QueueError",
    "QueueStats",
    "QueueUnavailableError",
    "open_push_queue",
]


def open_push_queue(
    url: str,
    *,
    visibility_timeout_s: float = DEFAULT_VISIBILITY_TIMEOUT_S,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    dedup_ttl_s: int = DEFAULT_DEDUP_TTL_S,
) -> PushQueue:
    """Open the queue at `sqlite:///abs/path.sqlite` or `redis://host:port/db[?prefix=name]`."""
    if visibility_timeout_s <= 0 or max_attempts < 1:
        raise ValueError("visibility_timeout_s must be > 0 and max_attempts >= 1")
    options = {"visibility_timeout_s": visibility_timeout_s, "max_attempts": max_attempts, "dedup_ttl_s": dedup_ttl_s}
    if url.startswith(SQLITE_SCHEME):
        from recsys_platform.push.sqlite_queue import SQLitePushQueue

        return SQLitePushQueue(sqlite_path(url), **options)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from recsys_platform.push.redis_queue import RedisPushQueue

        return RedisPushQueue(url, **options)
    raise ValueError(f"unsupported push queue URL {url!r}: expected sqlite:///<abs path> or redis://host:port/db")
