"""The Redis plumbing the online store and the push queue share: our `?prefix=` on a redis:// URL and a
client with short timeouts, so an outage surfaces as an error within seconds instead of a hang."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis


def split_prefix(url: str, default: str) -> tuple[str, str]:
    """Strip the `prefix` query parameter (ours, not redis-py's) from a redis:// URL: (url, prefix)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((v for k, v in query if k == "prefix"), default)
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    return urlunsplit(parts._replace(query=rest)), prefix


@dataclass(frozen=True)
class RedisConnection:
    """A client, the key prefix from the URL, and host:port for error messages (no credentials)."""

    client: redis.Redis
    prefix: str
    where: str


def connect_redis(url: str, default_prefix: str, socket_timeout: float) -> RedisConnection:
    """A decoded-responses client for `url` (connects lazily), its key prefix and its location."""
    redis_url, prefix = split_prefix(url, default_prefix)
    client = redis.Redis.from_url(
        redis_url,
        decode_responses=True,
        socket_connect_timeout=min(socket_timeout, 1.0),
        socket_timeout=socket_timeout,
        health_check_interval=30,
    )
    return RedisConnection(client, prefix, urlsplit(redis_url).netloc.rsplit("@", 1)[-1] or "localhost:6379")
