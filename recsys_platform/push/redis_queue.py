"""Redis Streams backend of the push queue: the production profile.

Key layout (prefix defaults to `recsys:push`, set with `?prefix=` on the URL):

- `{prefix}:stream`: the messages (field `m` = message JSON), read by the consumer group `push-workers`
- `{prefix}:dedup:{dedup_key}`: the message id, expiring after the dedup window (SET NX EX)
- `{prefix}:errors`: hash message id -> last error of a failed attempt
- `{prefix}:dead`: the dead-letter stream (fields `id`, `m`, `attempts`, `error`, `dead_at`)
- `{prefix}:done`: counter of acked messages

New messages are leased with XREADGROUP; a message stays in the group's pending entries list (PEL)
until acked, and one idle for the visibility timeout is re-leased with XAUTOCLAIM (min-idle-time =
visibility timeout), which increments its delivery count (read back with XPENDING). A retry after a
nack is an XCLAIM that backdates the idle time. Ack, nack and dead-lettering run as one Lua script that
first checks, in the PEL, that the entry is still owned by the consumer at the same delivery count, so a
consumer whose lease expired cannot settle a message another consumer now owns. Acked entries are
deleted from the stream. The visibility timeout is enforced by the reclaiming consumer, so all
consumers of one queue should use the same timeout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from recsys_platform.push.queue import (
    DEFAULT_DEDUP_TTL_S,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_VISIBILITY_TIMEOUT_S,
    LEASE_EXPIRED_ERROR,
    DeadLetter,
    Delivery,
    PushMessage,
    PushQueue,
    QueueStats,
    QueueUnavailableError,
)
from recsys_platform.redis_client import connect_redis

logger = logging.getLogger(__name__)

GROUP = "push-workers"
_MAX_AUTOCLAIM_SCANS = 10

# KEYS: dedup key, stream. ARGV: ttl seconds, message JSON. Returns the new id, or false for a duplicate.
_ENQUEUE_SCRIPT = """
if redis.call('SET', KEYS[1], '', 'NX', 'EX', ARGV[1]) then
  local id = redis.call('XADD', KEYS[2], '*', 'm', ARGV[2])
  redis.call('SET', KEYS[1], id, 'KEEPTTL')
  return id
end
return false
"""
# KEYS: stream, errors, dead, done. ARGV: group, id, consumer, attempt, mode (ack|retry|dead), error,
# idle ms (retry), dead_at and attempts made (dead). Returns 1 if settled, 0 if the lease was lost.
_SETTLE_SCRIPT = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 or p[1][2] ~= ARGV[3] or tonumber(p[1][4]) ~= tonumber(ARGV[4]) then return 0 end
local mode = ARGV[5]
if mode == 'retry' then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[6])
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'IDLE', ARGV[7], 'JUSTID')
  return 1
end
if mode == 'dead' then
  local body = ''
  local entry = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
  if #entry > 0 then
    local fields = entry[1][2]
    for i = 1, #fields, 2 do if fields[i] == 'm' then body = fields[i + 1] end end
  end
  redis.call('XADD', KEYS[3], '*', 'id', ARGV[2], 'm', body, 'attempts', ARGV[9], 'error', ARGV[6],
             'dead_at', ARGV[8])
else
  redis.call('INCR', KEYS[4])
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[2])
return 1
"""


class RedisPushQueue(PushQueue):
    """Push queue on a Redis stream with one consumer group and a dead-letter stream."""

    def __init__(
        self,
        url: str,
        *,
        visibility_timeout_s: float = DEFAULT_VISIBILITY_TIMEOUT_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        dedup_ttl_s: int = DEFAULT_DEDUP_TTL_S,
        socket_timeout: float = 5.0,
    ) -> None:
        self.url = url
        self.visibility_timeout_s = visibility_timeout_s
        self.max_attempts = max_attempts
        self.dedup_ttl_s = dedup_ttl_s
        connection = connect_redis(url, "recsys:push", socket_timeout)
        self.client, self.prefix, self._where = connection.client, connection.prefix, connection.where
        self.stream = f"{self.prefix}:stream"
        self.dead_stream = f"{self.prefix}:dead"
        self.errors_key = f"{self.prefix}:errors"
        self.done_key = f"{self.prefix}:done"
        self._enqueue_script = self.client.register_script(_ENQUEUE_SCRIPT)
        self._settle_script = self.client.register_script(_SETTLE_SCRIPT)
        self._ensure_group()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise QueueUnavailableError(f"redis at {self._where}: {exc}") from exc
        except ResponseError as exc:
            if any(code in str(exc) for code in ("LOADING", "MISCONF", "READONLY")):
                raise QueueUnavailableError(f"redis at {self._where}: {exc}") from exc
            raise

    def _ensure_group(self) -> None:
        with self._errors():
            try:
                self.client.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def _dedup_key(self, key: str) -> str:
        return f"{self.prefix}:dedup:{key}"

    def enqueue(self, message: PushMessage) -> bool:
        """Add a message; False if one with the same dedup key was already enqueued."""
        return self.enqueue_many([message])[0]

    def enqueue_many(self, messages: Iterable[PushMessage]) -> list[bool]:
        """Enqueue several messages in one round trip; one flag per message (False for duplicates)."""
        messages = list(messages)
        if not messages:
            return []
        with self._errors():
            pipe = self.client.pipeline(transaction=False)
            for m in messages:
                self._enqueue_script(
                    keys=[self._dedup_key(m.dedup_key), self.stream], args=[self.dedup_ttl_s, m.to_json()], client=pipe
                )
            return [bool(mid) for mid in pipe.execute()]

    def _settle(self, delivery: Delivery, mode: str, error: str = "", idle_ms: int = 0, attempts: int = 0) -> bool:
        dead_at = datetime.now(UTC).isoformat(timespec="seconds")
        args = [GROUP, delivery.message_id, delivery.consumer, delivery.attempt, mode, error, idle_ms, dead_at]
        args.append(attempts or delivery.attempt)
        keys = [self.stream, self.errors_key, self.dead_stream, self.done_key]
        with self._errors():
            return bool(self._settle_script(keys=keys, args=args))

    def _claim_expired(self, consumer: str, limit: int, timeout_ms: int) -> list[tuple[str, dict]]:
        """XAUTOCLAIM entries idle for at least the visibility timeout, scanning the PEL from its start."""
        claimed: list[tuple[str, dict]] = []
        cursor = "0-0"
        for _ in range(_MAX_AUTOCLAIM_SCANS):
            cursor, entries, *_ = self.client.xautoclaim(
                self.stream, GROUP, consumer, min_idle_time=timeout_ms, start_id=cursor, count=limit - len(claimed)
            )
            claimed.extend((mid, fields) for mid, fields in entries if fields is not None)
            if cursor == "0-0" or len(claimed) >= limit:
                break
        return claimed

    def receive(
        self, consumer: str, max_messages: int = 10, visibility_timeout_s: float | None = None
    ) -> list[Delivery]:
        """Lease up to `max_messages` messages: expired leases first (XAUTOCLAIM), then new ones."""
        timeout = self.visibility_timeout_s if visibility_timeout_s is None else visibility_timeout_s
        timeout_ms = max(1, int(timeout * 1000))
        deliveries: list[Delivery] = []
        with self._errors():
            try:
                claimed = self._claim_expired(consumer, max_messages, timeout_ms)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._ensure_group()  # the stream was dropped; recreate it with its group
                claimed = []
            deadline = time.time() + timeout
            if claimed:
                pipe = self.client.pipeline(transaction=False)
                for mid, _ in claimed:
                    pipe.xpending_range(self.stream, GROUP, min=mid, max=mid, count=1)
                pending = pipe.execute()
                errors = self.client.hmget(self.errors_key, [mid for mid, _ in claimed])
            for i, (mid, fields) in enumerate(claimed):
                attempt = int(pending[i][0]["times_delivered"]) if pending[i] else self.max_attempts + 1
                delivery = Delivery(mid, PushMessage.from_json(fields["m"]), attempt, consumer, mid, deadline)
                if attempt > self.max_attempts:
                    error = LEASE_EXPIRED_ERROR + (f" (previous error: {errors[i]})" if errors[i] else "")
                    # This claim counted as one more delivery; the message was really delivered max_attempts times.
                    if self._settle(delivery, "dead", error, attempts=attempt - 1):
                        logger.warning("dead-lettered message %s after %d attempts", mid, self.max_attempts)
                    continue
                deliveries.append(delivery)
            remaining = max_messages - len(deliveries)
            if remaining > 0:
                for _, entries in self.client.xreadgroup(GROUP, consumer, {self.stream: ">"}, count=remaining) or []:
                    for mid, fields in entries:
                        deliveries.append(Delivery(mid, PushMessage.from_json(fields["m"]), 1, consumer, mid, deadline))
        return deliveries

    def ack(self, delivery: Delivery) -> bool:
        """Settle a delivered message; False if the lease was lost to another consumer."""
        settled = self._settle(delivery, "ack")
        if not settled:
            logger.warning("ack of message %s by %s refused: lease lost", delivery.message_id, delivery.consumer)
        return settled

    def nack(self, delivery: Delivery, error: str, retry_after_s: float = 0.0) -> bool:
        """Give a message back for a retry after `retry_after_s` (dead-letter it on its last attempt)."""
        if delivery.attempt >= self.max_attempts:
            settled = self._settle(delivery, "dead", error)
            if settled:
                logger.warning(
                    "dead-lettered message %s after %d attempts: %s", delivery.message_id, delivery.attempt, error
                )
            return settled
        # Backdate the idle time so XAUTOCLAIM picks the entry up once `retry_after_s` has passed.
        idle_ms = max(0, int((self.visibility_timeout_s - max(0.0, retry_after_s)) * 1000))
        return self._settle(delivery, "retry", error, idle_ms)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Dead-lettered messages, oldest first."""
        with self._errors():
            entries = self.client.xrange(self.dead_stream, count=limit)
        return [
            DeadLetter(f["id"], PushMessage.from_json(f["m"]), int(f["attempts"]), f["error"], f["dead_at"])
            for _, f in entries
        ]

    def stats(self) -> QueueStats:
        """Current message counts (acked entries are deleted, so the stream holds queued + in flight)."""
        with self._errors():
            pipe = self.client.pipeline(transaction=False)
            pipe.xlen(self.stream)
            pipe.xpending(self.stream, GROUP)
            pipe.get(self.done_key)
            pipe.xlen(self.dead_stream)
            try:
                length, pending, done, dead = pipe.execute()
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                return QueueStats(0, 0, 0, 0)
        in_flight = int(pending["pending"])
        return QueueStats(queued=length - in_flight, in_flight=in_flight, done=int(done or 0), dead=dead)

    def drop(self) -> None:
        """Delete every key of this queue's prefix (messages, group, dedup keys, dead letters)."""
        with self._errors():
            keys = list(self.client.scan_iter(match=f"{self.prefix}:dedup:*", count=1000))
            keys += [self.stream, self.dead_stream, self.errors_key, self.done_key]
            for i in range(0, len(keys), 1000):
                self.client.delete(*keys[i : i + 1000])

    def forget_user(self, user_id: str) -> int:
        """XDEL the user's entries from the stream (acking any lease) and the dead letters; drop their dedup
        keys and errors. Scans both streams in pages."""
        removed = 0
        with self._errors():
            for stream in (self.stream, self.dead_stream):
                start = "-"
                while True:
                    page = self.client.xrange(stream, min=start, max="+", count=500)
                    for entry_id, fields in page:
                        body = fields.get("m")
                        try:
                            message = PushMessage.from_json(body) if body else None
                        except (ValueError, TypeError):
                            message = None
                        if message is None or message.user_id != user_id:
                            continue
                        pipe = self.client.pipeline(transaction=True)
                        if stream == self.stream:
                            pipe.xack(stream, GROUP, entry_id)
                            pipe.hdel(self.errors_key, entry_id)
                        pipe.xdel(stream, entry_id)
                        pipe.delete(self._dedup_key(message.dedup_key))
                        pipe.execute()
                        removed += 1
                    if len(page) < 500:
                        break
                    start = "(" + page[-1][0]
        return removed

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()
