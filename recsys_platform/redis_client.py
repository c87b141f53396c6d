"""The Redis plumbing the online store and the push queue share: our `?prefix=` on a redis:// URL and a
client with short timeouts, so an outage surfaces as an error within seconds instead of a hang."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio


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


def _client_options(socket_timeout: float) -> dict:
    return {
        "decode_responses": True,
        "socket_connect_timeout": min(socket_timeout, 1.0),
        "socket_timeout": socket_timeout,
        "health_check_interval": 30,
    }


def connect_redis(url: str, default_prefix: str, socket_timeout: float) -> RedisConnection:
    """A decoded-responses client for `url` (connects lazily), its key prefix and its location."""
    redis_url, prefix = split_prefix(url, default_prefix)
    client = redis.Redis.from_url(redis_url, **_client_options(socket_timeout))
    return RedisConnection(client, prefix, urlsplit(redis_url).netloc.rsplit("@", 1)[-1] or "localhost:6379")


def connect_redis_async(url: str, default_prefix: str, socket_timeout: float) -> redis.asyncio.Redis:
    """An asyncio client with the same options as `connect_redis` (bound to the event loop that first uses it)."""
    return redis.asyncio.Redis.from_url(split_prefix(url, default_prefix)[0], **_client_options(socket_timeout))
