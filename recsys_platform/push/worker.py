"""The push worker: lease messages, hand them to a pluggable sender, ack on success, retry on failure.

Delivery is at-least-once: a message is acked only after its sender returned, so a crash between
send and ack delivers it again. Receivers should deduplicate on the `Idempotency-Key` (the message's
dedup key) that the webhook sender puts on every request.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

from recsys_platform.push.queue import Delivery, PushMessage, PushQueue, QueueUnavailableError

logger = logging.getLogger(__name__)


class DeliveryError(Exception):
    """A sender could not deliver a message (the queue will retry it)."""


@runtime_checkable
class Sender(Protocol):
    """Delivers one message; returns on success and raises on failure."""

    def send(self, message: PushMessage) -> None:
        """Deliver `message` or raise."""


class FileSender:
    """Appends each message as one JSON line (with `sent_at`) to a file and fsyncs it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # O_APPEND makes each single write land whole at the end, even with several worker processes.
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def send(self, message: PushMessage) -> None:
        """Append the message and flush it to disk."""
        record = {**message.as_dict(), "sent_at": datetime.now(UTC).isoformat(timespec="milliseconds")}
        os.write(self._fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())
        os.fsync(self._fd)

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)


class WebhookSender:
    """POSTs each message as JSON to a URL; any non-2xx answer or transport error raises.

    Keep `timeout` well below the queue's visibility timeout, or a slow endpoint lets the lease expire
    and another worker sends the message again.
    """

    def __init__(self, url: str, timeout: float = 5.0, headers: dict[str, str] | None = None) -> None:
        import httpx

        self.url = url
        self._client = httpx.Client(timeout=timeout, headers=headers or {})

    def send(self, message: PushMessage) -> None:
        """POST the message with its dedup key as `Idempotency-Key`."""
        response = self._client.post(self.url, json=message.as_dict(), headers={"Idempotency-Key": message.dedup_key})
        if not response.is_success:
            raise DeliveryError(f"webhook {self.url} answered {response.status_code}: {response.text[:200]}")

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()


@dataclass
class WorkerStats:
    """What a worker did: messages received, sent (acked), failed (nacked), dead-lettered, leases lost."""

    received: int = 0
    sent: int = 0
    failed: int = 0
    dead_lettered: int = 0
    lost_leases: int = 0

    @property
    def handled(self) -> int:
        """Messages sent or failed."""
        return self.sent + self.failed


def retry_delay(attempt: int, base_s: float, cap_s: float) -> float:
    """Exponential backoff before the next attempt: base * 2^(attempt-1), capped."""
    return min(cap_s, base_s * 2 ** (attempt - 1))


def _deliver(queue: PushQueue, sender: Sender, delivery: Delivery, stats: WorkerStats, backoff_s: float) -> str:
    """Send one leased message and settle it; returns the outcome."""
    if time.time() > delivery.lease_expires_at:
        # Another consumer may own it by now; sending would risk a second copy within its lease.
        stats.lost_leases += 1
        return "lease_expired"
    try:
        sender.send(delivery.message)
    except Exception as exc:  # noqa: BLE001 - any sender failure is retried, never fatal to the worker
        stats.failed += 1
        error = f"{type(exc).__name__}: {exc}"
        delay = retry_delay(delivery.attempt, backoff_s, queue.visibility_timeout_s)
        logger.warning("sending message %s (attempt %d) failed: %s", delivery.message_id, delivery.attempt, error)
        if queue.nack(delivery, error, delay) and delivery.attempt >= queue.max_attempts:
            stats.dead_lettered += 1
            return "dead_lettered"
        return "failed"
    if queue.ack(delivery):
        stats.sent += 1
        return "sent"
    stats.sent += 1  # delivered, but the lease had been lost: the new owner will send it again
    stats.lost_leases += 1
    return "sent_lease_lost"


def run_worker(
    queue: PushQueue,
    sender: Sender,
    consumer_name: str,
    stop_after: int | None = None,
    poll_interval: float = 0.5,
    *,
    batch_size: int = 10,
    retry_backoff_s: float = 1.0,
    idle_timeout_s: float | None = None,
    stop_event: threading.Event | None = None,
    on_delivery: Callable[[Delivery, str], None] | None = None,
) -> WorkerStats:
    """Consume until `stop_after` messages were handled, `stop_event` is set, or `idle_timeout_s` passes idle."""
    stop_event = stop_event or threading.Event()
    stats = WorkerStats()
    last_activity = time.monotonic()
    logger.info("push worker %s consuming %s", consumer_name, queue.url)
    while not stop_event.is_set() and (stop_after is None or stats.handled < stop_after):
        want = batch_size if stop_after is None else min(batch_size, stop_after - stats.handled)
        try:
            deliveries = queue.receive(consumer_name, want)
        except QueueUnavailableError as exc:
            logger.warning("push queue unavailable, retrying in %.1fs: %s", poll_interval, exc)
            stop_event.wait(poll_interval)
            continue
        if not deliveries:
            if idle_timeout_s is not None and time.monotonic() - last_activity >= idle_timeout_s:
                break
            stop_event.wait(poll_interval)
            continue
        last_activity = time.monotonic()
        stats.received += len(deliveries)
        for delivery in deliveries:
            try:
                outcome = _deliver(queue, sender, delivery, stats, retry_backoff_s)
            except QueueUnavailableError as exc:
                # Not settled: the lease expires and the message is delivered again.
                logger.warning("could not settle message %s: %s", delivery.message_id, exc)
                outcome = "unsettled"
            if on_delivery is not None:
                on_delivery(delivery, outcome)
    logger.info("push worker %s stopped: %s", consumer_name, stats)
    return stats
