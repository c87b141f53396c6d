"""Push delivery: choose users to notify, queue their top recommendation, deliver it at least once."""

from __future__ import annotations

from recsys_platform.push.queue import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_VISIBILITY_TIMEOUT_S,
    DeadLetter,
    Delivery,
    PushMessage,
    PushQueue,
    QueueError,
    QueueStats,
    QueueUnavailableError,
    open_push_queue,
)

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
