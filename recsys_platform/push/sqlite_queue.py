"""SQLite (WAL) backend of the push queue: the embedded default.

One table holds every message with its state (`queued` -> `leased` -> `done` | `dead`), delivery
count, lease token and `visible_at` (epoch seconds). A receive runs in one `BEGIN IMMEDIATE`
transaction, so concurrent consumers (threads or processes) serialize on SQLite's write lock and
never lease the same message twice: it dead-letters messages whose last lease expired, then leases
the oldest visible messages with a single `UPDATE ... RETURNING`. Ack and nack only apply when the
lease token still matches, so a consumer whose lease expired cannot settle a message another
consumer owns. Acked rows are kept for the dedup window, so re-enqueueing a sent key is a no-op.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

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
from recsys_platform.sqlite_client import connect_sqlite, enable_wal

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS push_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dedup_key TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'leased', 'done', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    visible_at REAL NOT NULL,
    lease_token TEXT,
    leased_by TEXT,
    last_error TEXT,
    enqueued_at REAL NOT NULL,
    settled_at REAL
);
CREATE INDEX IF NOT EXISTS push_messages_visible ON push_messages (visible_at, id)
    WHERE status IN ('queued', 'leased');
"""
# A message whose last allowed lease expired goes to the dead letters instead of being leased again.
_DEAD_LETTER_EXPIRED = """
UPDATE push_messages
SET status = 'dead', settled_at = :now, lease_token = NULL,
    last_error = CASE WHEN status = 'leased' THEN :expired || COALESCE(' (previous error: ' || last_error || ')', '')
                      ELSE COALESCE(last_error, :expired) END
WHERE status IN ('queued', 'leased') AND visible_at <= :now AND attempts >= :max_attempts
"""
_LEASE = """
UPDATE push_messages
SET status = 'leased', attempts = attempts + 1, visible_at = :deadline, lease_token = :token || '-' || id,
    leased_by = :consumer
WHERE id IN (
    SELECT id FROM push_messages
    WHERE status IN ('queued', 'leased') AND visible_at <= :now
    ORDER BY id LIMIT :limit
)
RETURNING id, body, attempts, lease_token
"""


def _iso(epoch: float | None) -> str:
    return "" if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


class SQLitePushQueue(PushQueue):
    """Push queue in one SQLite file (WAL); safe for several consumer processes on one host."""

    def __init__(
        self,
        path: str | Path,
        *,
        visibility_timeout_s: float = DEFAULT_VISIBILITY_TIMEOUT_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        dedup_ttl_s: int = DEFAULT_DEDUP_TTL_S,
        busy_timeout_ms: int = 10_000,
    ) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self.visibility_timeout_s = visibility_timeout_s
        self.max_attempts = max_attempts
        self.dedup_ttl_s = dedup_ttl_s
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = connect_sqlite(self.path, busy_timeout_ms)
            enable_wal(self._conn)
            self._conn.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise QueueUnavailableError(f"cannot open push queue {self.path}: {exc}") from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction holding SQLite's write lock from its start."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                raise QueueUnavailableError(f"push queue {self.path} unavailable: {exc}") from exc

    def _query(self, sql: str, params: tuple | dict = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                raise QueueUnavailableError(f"push queue {self.path} unavailable: {exc}") from exc

    def enqueue(self, message: PushMessage) -> bool:
        """Add a message; False if one with the same dedup key was already enqueued."""
        return self.enqueue_many([message])[0]

    def enqueue_many(self, messages: Iterable[PushMessage]) -> list[bool]:
        """Enqueue several messages in one transaction; one flag per message (False for duplicates)."""
        now = time.time()
        flags = []
        with self._write() as conn:
            # Acked rows only serve deduplication; they expire with the dedup window.
            conn.execute(
                "DELETE FROM push_messages WHERE status = 'done' AND enqueued_at < ?", (now - self.dedup_ttl_s,)
            )
            for message in messages:
                cur = conn.execute(
                    "INSERT INTO push_messages (dedup_key, body, visible_at, enqueued_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (dedup_key) DO NOTHING",
                    (message.dedup_key, message.to_json(), now, now),
                )
                flags.append(cur.rowcount == 1)
        return flags

    def receive(
        self, consumer: str, max_messages: int = 10, visibility_timeout_s: float | None = None
    ) -> list[Delivery]:
        """Lease up to `max_messages` visible messages to `consumer` (oldest first)."""
        timeout = self.visibility_timeout_s if visibility_timeout_s is None else visibility_timeout_s
        now = time.time()
        deadline = now + timeout
        with self._write() as conn:
            cur = conn.execute(
                _DEAD_LETTER_EXPIRED, {"now": now, "expired": LEASE_EXPIRED_ERROR, "max_attempts": self.max_attempts}
            )
            if cur.rowcount:
                logger.warning("dead-lettered %d message(s) after %d attempts", cur.rowcount, self.max_attempts)
            params = {"deadline": deadline, "token": uuid.uuid4().hex, "consumer": consumer, "now": now}
            rows = conn.execute(_LEASE, {**params, "limit": max_messages}).fetchall()
        rows.sort()
        return [
            Delivery(str(mid), PushMessage.from_json(body), attempts, consumer, token, deadline)
            for mid, body, attempts, token in rows
        ]

    def ack(self, delivery: Delivery) -> bool:
        """Settle a delivered message; False if the lease was lost to another consumer."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE push_messages SET status = 'done', settled_at = ?, lease_token = NULL "
                "WHERE id = ? AND lease_token = ? AND status = 'leased'",
                (time.time(), int(delivery.message_id), delivery.receipt),
            )
        if cur.rowcount != 1:
            logger.warning("ack of message %s by %s refused: lease lost", delivery.message_id, delivery.consumer)
        return cur.rowcount == 1

    def nack(self, delivery: Delivery, error: str, retry_after_s: float = 0.0) -> bool:
        """Give a message back for a retry after `retry_after_s` (dead-letter it on its last attempt)."""
        now = time.time()
        dead = delivery.attempt >= self.max_attempts
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE push_messages SET status = ?, visible_at = ?, settled_at = ?, lease_token = NULL, "
                "last_error = ? WHERE id = ? AND lease_token = ? AND status = 'leased'",
                (
                    "dead" if dead else "queued",
                    now + max(0.0, retry_after_s),
                    now if dead else None,
                    error,
                    int(delivery.message_id),
                    delivery.receipt,
                ),
            )
        if cur.rowcount == 1 and dead:
            logger.warning(
                "dead-lettered message %s after %d attempts: %s", delivery.message_id, delivery.attempt, error
            )
        return cur.rowcount == 1

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Dead-lettered messages, oldest first."""
        rows = self._query(
            "SELECT id, body, attempts, last_error, settled_at FROM push_messages WHERE status = 'dead' "
            "ORDER BY settled_at, id LIMIT ?",
            (limit,),
        )
        return [
            DeadLetter(str(mid), PushMessage.from_json(body), attempts, error or "", _iso(at))
            for mid, body, attempts, error, at in rows
        ]

    def stats(self) -> QueueStats:
        """Current message counts."""
        counts = dict(self._query("SELECT status, count(*) FROM push_messages GROUP BY status"))
        return QueueStats(
            queued=counts.get("queued", 0),
            in_flight=counts.get("leased", 0),
            done=counts.get("done", 0),
            dead=counts.get("dead", 0),
        )

    def drop(self) -> None:
        """Delete every message, dedup key and dead letter of this queue."""
        with self._write() as conn:
            conn.execute("DELETE FROM push_messages")

    def forget_user(self, user_id: str) -> int:
        """DELETE the user's messages, whatever their status (their dedup keys go with the rows)."""
        with self._write() as conn:
            return conn.execute(
                "DELETE FROM push_messages WHERE json_extract(body, '$.user_id') = ?", (user_id,)
            ).rowcount

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()
