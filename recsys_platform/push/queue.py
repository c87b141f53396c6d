"""The push delivery queue: one narrow interface, SQLite and Redis Streams backends.

Contract every backend implements (see `PushQueue`):

- `enqueue(message)` is idempotent on `message.dedup_key` within the dedup window (default 7 days):
  a second message with the same key is dropped and `enqueue` returns False.
- `receive(consumer, max_messages, visibility_timeout_s)` leases up to `max_messages` messages to
  `consumer`. A leased message is invisible to other consumers until its lease expires; then it is
  delivered again (at-least-once). `Delivery.attempt` counts deliveries, starting at 1.
- `ack(delivery)` settles a message for good. It returns False (and changes nothing) when the lease
  was lost: the message was meanwhile leased to another consumer, who now owns it.
- `nack(delivery, error, retry_after_s)` gives a message back for another attempt after a delay and
  records the error. A message is delivered at most `max_attempts` times (default 5): a nack of the
  last attempt, or a lease of the last attempt that expires, moves it to the dead-letter store with
  its last error, where `dead_letters()` lists it.
- Backend outages raise `QueueUnavailableError` with a readable reason.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

DEFAULT_VISIBILITY_TIMEOUT_S = 15.0
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_DEDUP_TTL_S = 7 * 24 * 3600
LEASE_EXPIRED_ERROR = "lease expired without ack"


class QueueError(Exception):
    """Base class of every push-queue error."""


class QueueUnavailableError(QueueError):
    """The backend cannot be reached (Redis down, SQLite file locked or unreadable, ...)."""


def _utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class PushMessage:
    """One notification: which item to push to which user, why, and its deduplication key."""

    user_id: str
    item_id: str
    reason: str
    dedup_key: str
    title: str | None = None
    model_version: str | None = None
    created_at: str = field(default_factory=_utc_now_iso)
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly representation."""
        return asdict(self)

    def to_json(self) -> str:
        """Compact JSON text."""
        return json.dumps(self.as_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> PushMessage:
        """Parse what `to_json` wrote."""
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Delivery:
    """A message leased to one consumer; `receipt` identifies this lease for ack/nack."""

    message_id: str
    message: PushMessage
    attempt: int
    consumer: str
    receipt: str
    lease_expires_at: float


@dataclass(frozen=True)
class DeadLetter:
    """A message that exhausted its attempts, with the last error."""

    message_id: str
    message: PushMessage
    attempts: int
    error: str
    dead_at: str


@dataclass(frozen=True)
class QueueStats:
    """Message counts: waiting, leased (incl. waiting for a retry on Redis), acked, dead-lettered."""

    queued: int
    in_flight: int
    done: int
    dead: int

    def as_dict(self) -> dict[str, int]:
        """JSON-friendly representation."""
        return asdict(self)


class PushQueue(ABC):
    """At-least-once delivery queue with visibility timeout, retries and dead letters (see module doc)."""

    url: str
    visibility_timeout_s: float
    max_attempts: int

    @abstractmethod
    def enqueue(self, message: PushMessage) -> bool:
        """Add a message; False if one with the same dedup key was already enqueued."""

    def enqueue_many(self, messages: Iterable[PushMessage]) -> list[bool]:
        """Enqueue several messages; one flag per message (False for duplicates)."""
        return [self.enqueue(m) for m in messages]

    @abstractmethod
    def receive(
        self, consumer: str, max_messages: int = 10, visibility_timeout_s: float | None = None
    ) -> list[Delivery]:
        """Lease up to `max_messages` visible messages to `consumer` (oldest first)."""

    @abstractmethod
    def ack(self, delivery: Delivery) -> bool:
        """Settle a delivered message; False if the lease was lost to another consumer."""

    @abstractmethod
    def nack(self, delivery: Delivery, error: str, retry_after_s: float = 0.0) -> bool:
        """Give a message back for a retry after `retry_after_s` (dead-letter it on its last attempt)."""

    @abstractmethod
    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Dead-lettered messages, oldest first."""

    @abstractmethod
    def stats(self) -> QueueStats:
        """Current message counts."""

    @abstractmethod
    def drop(self) -> None:
        """Delete every message, dedup key and dead letter of this queue."""

    @abstractmethod
    def forget_user(self, user_id: str) -> int:
        """Delete every message to `user_id` (queued, leased, dead) and its deduplication keys; return how many
        messages were deleted."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""

    def __enter__(self) -> PushQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
