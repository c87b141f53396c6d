"""The push delivery queue as a Dagster resource (sqlite:///path or redis://host:port/db)."""

import dagster as dg

from recsys_platform.push import DEFAULT_MAX_ATTEMPTS, DEFAULT_VISIBILITY_TIMEOUT_S, PushQueue, open_push_queue


class PushQueueResource(dg.ConfigurableResource):
    """At-least-once push queue: SQLite table (embedded default) or Redis Streams (production)."""

    url: str
    visibility_timeout_s: float = DEFAULT_VISIBILITY_TIMEOUT_S
    max_attempts: int = DEFAULT_MAX_ATTEMPTS

    def open(self) -> PushQueue:
        """Open a connection to the queue."""
        return open_push_queue(self.url, visibility_timeout_s=self.visibility_timeout_s, max_attempts=self.max_attempts)
