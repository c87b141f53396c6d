"""API keys and request throttling for the serving API.

Keys come from the app's settings (`ServeSettings`, read from the environment as comma-separated lists, so a
new key can be added before the old one is removed): `RECSYS_INGEST_API_KEY` (POST /v1/events),
`RECSYS_ADMIN_API_KEY` (deployment details and operations) and, optionally, `RECSYS_READ_API_KEY`
(recommendation reads). A request carries one as
`Authorization: Bearer <key>` or `X-API-Key: <key>`.

Without ingest or read keys those routes are open: the embedded default, which `recsys serve` binds to
loopback only; binding any other address without ingest and admin keys is refused (`require_keys_for`).
Without an admin key the admin routes are disabled (503), never open.

A failed attempt is logged (client address, route; never the key) and counted per client: after
`MAX_FAILURES` within `FAILURE_WINDOW_S` the client gets 429 with Retry-After, key or not, until the window
has passed. Event intake is also limited per key (per client address when open) by a token bucket.
"""

from __future__ import annotations

import hmac
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from fastapi import HTTPException, Request

from recsys_platform.config import API_KEY_ENVS as KEY_ENVS
from recsys_platform.config import ServeSettings
from recsys_platform.serve.observability import metrics_of

logger = logging.getLogger(__name__)

MAX_FAILURES = 10
FAILURE_WINDOW_S = 60.0
LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class ApiKeys:
    """The keys each scope accepts (empty: the scope has no key configured)."""

    ingest: tuple[str, ...] = ()
    admin: tuple[str, ...] = ()
    read: tuple[str, ...] = ()

    @classmethod
    def of(cls, serve: ServeSettings) -> ApiKeys:
        """The keys the serving settings configure."""
        return cls(ingest=serve.ingest_api_keys, admin=serve.admin_api_keys, read=serve.read_api_keys)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ApiKeys:
        """Keys from a mapping of the comma-separated KEY_ENVS variables, as `ServeSettings.from_env` reads them."""
        return cls.of(ServeSettings.from_env(env))

    def matches(self, scope: str, presented: str) -> str | None:
        """The configured key of `scope` equal to `presented` (compared in constant time per key), else None."""
        hit = None
        for key in getattr(self, scope):
            if hmac.compare_digest(key.encode(), presented.encode()):
                hit = key
        return hit


def require_keys_for(host: str, keys: ApiKeys) -> None:
    """ValueError (one line, with the fix) when `host` is not loopback and ingest or admin keys are missing."""
    if host in LOOPBACK:
        return
    missing = [KEY_ENVS[s] for s in ("ingest", "admin") if not getattr(keys, s)]
    if missing:
        raise ValueError(
            f"refusing to serve on {host} without {' and '.join(missing)}: anyone who reaches the port could "
            "write events or operate deployments. Set them (comma-separated to rotate), or bind 127.0.0.1"
        )


class FailureThrottle:
    """Failed key attempts per client in a sliding window; a client over the limit waits."""

    def __init__(
        self, max_failures: int = MAX_FAILURES, window_s: float = FAILURE_WINDOW_S, clock=time.monotonic
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.clock = clock
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> float | None:
        """Seconds `client` must wait before its next attempt, or None."""
        now = self.clock()
        with self._lock:
            recent = [t for t in self._failures.get(client, ()) if now - t < self.window_s]
            if recent:
                self._failures[client] = recent
            else:
                self._failures.pop(client, None)
            if len(recent) >= self.max_failures:
                return recent[0] + self.window_s - now
        return None

    def failed(self, client: str) -> None:
        """Count one failed attempt of `client`."""
        with self._lock:
            self._failures.setdefault(client, []).append(self.clock())


class TokenBuckets:
    """One token bucket per caller: `rate` requests per second, bursts up to `2 * rate`."""

    def __init__(self, rate: float, clock=time.monotonic) -> None:
        self.rate = rate
        self.capacity = 2.0 * rate
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, caller: str) -> float | None:
        """Take one token for `caller`; None when granted, else seconds until one is free."""
        if self.rate <= 0:
            return None
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.get(caller, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - at) * self.rate)
            if tokens >= 1.0:
                self._buckets[caller] = (tokens - 1.0, now)
                return None
            self._buckets[caller] = (tokens, now)
            return (1.0 - tokens) / self.rate


def app_state(state: object) -> tuple[ApiKeys, FailureThrottle, TokenBuckets]:
    """The app's keys, failure throttle and intake buckets, set up from the app's settings (`state.settings`) on
    first use (`api.create_app` sets them at start; an app that mounts the routers itself gets them here)."""
    if not hasattr(state, "keys"):
        state.keys = ApiKeys.of(state.settings.serve)  # type: ignore[attr-defined]
    if not hasattr(state, "auth_failures"):
        state.auth_failures = FailureThrottle()  # type: ignore[attr-defined]
    if not hasattr(state, "ingest_buckets"):
        state.ingest_buckets = TokenBuckets(state.settings.serve.ingest_rate)  # type: ignore[attr-defined]
    return state.keys, state.auth_failures, state.ingest_buckets  # type: ignore[attr-defined]


def presented_key(request: Request) -> str | None:
    """The key a request carries: `Authorization: Bearer <key>`, else `X-API-Key`."""
    return _key_of(request.headers.get("authorization", ""), request.headers.get("x-api-key"))


def _key_of(authorization: str, x_api_key: str | None) -> str | None:
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return x_api_key or None


def read_key_accepted(state: object, client: str, headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """True when `require("read")` lets the request through: no read key is configured, or the client (an address)
    is not throttled and its raw ASGI `headers` carry a read key. Checks only, records nothing: a fast path answers
    the requests this accepts and leaves every other one to `require`, so a refusal is logged, counted and
    throttled in one place."""
    keys = getattr(state, "keys", None)
    if keys is None:  # an app that create_app did not set up: set up as `require` would
        keys = app_state(state)[0]
    if not keys.read:
        return True
    if state.auth_failures.retry_after(client) is not None:  # type: ignore[attr-defined]
        return False
    found: dict[bytes, str] = {}
    for name, value in headers:  # the first of each, as Starlette's `request.headers.get` takes it
        if name in (b"authorization", b"x-api-key") and name not in found:
            found[name] = value.decode("latin-1")
    given = _key_of(found.get(b"authorization", ""), found.get(b"x-api-key"))
    return given is not None and keys.matches("read", given) is not None


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _too_many(seconds: float, what: str) -> HTTPException:
    wait = max(1, math.ceil(seconds))
    return HTTPException(429, f"{what}; retry after {wait} s", headers={"Retry-After": str(wait)})


def require(scope: str) -> Callable[[Request], Awaitable[None]]:
    """A dependency enforcing the keys of `scope` (KEY_ENVS) from `request.app.state.keys`: 401 for a missing
    or wrong key, 429 for a client over the failure limit, 503 for admin routes without an admin key. Event
    intake (`ingest`) also takes a token from its caller's bucket (429 with Retry-After when empty)."""

    async def check(request: Request) -> None:
        keys, throttle, buckets = app_state(request.app.state)
        client = _client(request)
        configured = getattr(keys, scope)
        caller = f"ip:{client}"
        if configured:
            wait = throttle.retry_after(client)
            if wait is not None:
                raise _too_many(wait, "too many failed key attempts from this address")
            given = presented_key(request)
            matched = keys.matches(scope, given) if given else None
            if matched is None:
                throttle.failed(client)
                if (metrics := metrics_of(request.app.state)) is not None:
                    metrics.auth_failures.labels(scope).inc()
                logger.warning(
                    "rejected %s key on %s %s from %s (%s)",
                    scope,
                    request.method,
                    request.url.path,
                    client,
                    "no key" if given is None else "wrong key",
                )
                raise HTTPException(
                    401, f"missing or invalid API key for {scope}", headers={"WWW-Authenticate": "Bearer"}
                )
            caller = f"key:{matched}"  # one bucket per key, in this process's memory only
        elif scope == "admin":
            raise HTTPException(503, f"admin endpoints are disabled: {KEY_ENVS['admin']} is not set on the server")
        if scope == "ingest":
            wait = buckets.take(caller)
            if wait is not None:
                raise _too_many(wait, "event intake rate limit exceeded for this key")

    return check
