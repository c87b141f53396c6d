"""The hot route, GET /v1/users/{user_id}/recommendations, answered without FastAPI's per-request machinery.

`answer_recommendations` is what the route does: the user's experiment arm, one consistent read of the active
slot (`read_path.recommend_async`), the served-lists metric, the served-log row and the JSON body, encoded by msgspec
straight from the decoded items (no pydantic model, no dict per item). The FastAPI route calls it and returns
the bytes as they are, so its OpenAPI entry (`response_model=RecommendationsOut`) documents this body.

`RecommendationsFastPath` is a pure ASGI middleware in front of FastAPI's router that answers the requests it can
prove valid itself (the path's user id matches ID_PATTERN, only known query parameters in their plain forms, a
read key when one is configured) and passes every other request on untouched: FastAPI then gives the 400, 401,
422 or 429 with its usual body, logging and throttling. CPU per request in-process (the benchmarks/serve.py mix,
8 concurrent requests, 2 shared cores): through the FastAPI route with this same encoder and no response
validation 223-231 us on SQLite and 262 us on Redis, on the fast path 79-81 us and 108-110 us; the code before
both (pydantic models per item, json) took 339-360 us and 568-758 us.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import msgspec

from recsys_platform.schemas import CONTENT_TYPES, ID_PATTERN
from recsys_platform.serve import read_path
from recsys_platform.serve.arms import API_SURFACE
from recsys_platform.serve.auth import read_key_accepted
from recsys_platform.serve.errors import store_unavailable
from recsys_platform.serve.observability import metrics_of
from recsys_platform.serve.online_store import OnlineStore, OnlineStoreError
from recsys_platform.serve.read_path import RecommendedItem

logger = logging.getLogger(__name__)

RECOMMENDATIONS_ROUTE = "/v1/users/{user_id}/recommendations"
DEFAULT_LIMIT = 10  # the route's query model reads these two as well
MAX_LIMIT = 100


class RecommendationsBody(msgspec.Struct):
    """The body of a recommendations answer: `api.RecommendationsOut`'s fields in its JSON order (a test holds
    the two to the same fields and bytes)."""

    items: list[RecommendedItem]
    model_version: str
    slot: str
    snapshot_id: str
    generated_at: str | None
    user_id: str
    source: str
    experiment: str | None
    arm: str | None


_encode = msgspec.json.Encoder().encode


async def answer_recommendations(
    state: object,
    store: OnlineStore,
    user_id: str,
    limit: int,
    content_type: str | None,
    exclude_kids: bool,
    request_id: str | None,
) -> bytes:
    """Read, count, log and encode one recommendations answer (the app's `state`: arms, metrics, served log)."""
    assigned = state.arms.assign(user_id)  # type: ignore[attr-defined]
    rec = await read_path.recommend_async(
        store, user_id, limit, content_type, exclude_kids, assigned.source, assigned.set_name
    )
    if (metrics := metrics_of(state)) is not None:
        metrics.count_served(rec.source)
    if (log := getattr(state, "served_log", None)) is not None:
        log.record(
            request_id=request_id,
            surface=API_SURFACE,
            user_id=user_id,
            experiment=assigned.experiment,
            arm=assigned.arm,
            source=rec.source,
            model_version=rec.model_version,
            slot=rec.slot,
            item_ids=[i.item_id for i in rec.items],
        )
    body = RecommendationsBody(
        rec.items,
        rec.model_version,
        rec.slot,
        rec.snapshot_id,
        rec.generated_at,
        user_id,
        rec.source,
        assigned.experiment,
        assigned.arm,
    )
    return _encode(body)


_PATH = re.compile("/v1/users/(" + ID_PATTERN.removeprefix("^").removesuffix("$") + ")/recommendations")
_LIMIT = re.compile(rb"[1-9][0-9]{0,2}")  # digits without a leading zero; the range is checked after
_CONTENT_TYPES = {ct.encode(): ct for ct in CONTENT_TYPES}
# pydantic's lax booleans (compared lower-cased), so e.g. `exclude_kids=1` stays on the fast path
_BOOLEANS = {b"1": True, b"on": True, b"t": True, b"true": True, b"y": True, b"yes": True}
_BOOLEANS |= {b"0": False, b"off": False, b"f": False, b"false": False, b"n": False, b"no": False}
_JSON_HEADERS = [(b"content-type", b"application/json")]


def parse_query(query_string: bytes) -> tuple[int, str | None, bool] | None:
    """(limit, content_type, exclude_kids) of a plain, valid query string; None for anything else (unknown,
    repeated, empty, percent-encoded or out-of-range parameters), which FastAPI then answers."""
    limit, content_type, exclude_kids = DEFAULT_LIMIT, None, False
    seen: set[bytes] = set()
    for part in query_string.split(b"&") if query_string else ():
        name, sep, value = part.partition(b"=")
        if not sep or name in seen:
            return None
        seen.add(name)
        if name == b"limit":
            if _LIMIT.fullmatch(value) is None or int(value) > MAX_LIMIT:
                return None
            limit = int(value)
        elif name == b"content_type":
            if (content_type := _CONTENT_TYPES.get(value)) is None:
                return None
        elif name == b"exclude_kids":
            if (flag := _BOOLEANS.get(value.lower())) is None:
                return None
            exclude_kids = flag
        else:
            return None
    return limit, content_type, exclude_kids


class RecommendationsFastPath:
    """Answers plain, valid GET /v1/users/{user_id}/recommendations requests (pure ASGI; see the module docstring)
    of the FastAPI application `api`; passes everything else to `app` (Starlette's middleware stack and router).
    Sits inside the observability middleware, which still counts and times every answer under the route's
    template."""

    def __init__(self, app: Callable, route: object, api: object) -> None:
        self.app = app
        self.route = route  # the FastAPI route it stands in for: the observability middleware labels by its path
        self.api = api

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "GET"
            or scope.get("root_path")
            or (match := _PATH.fullmatch(scope["path"])) is None
            or (query := parse_query(scope["query_string"])) is None
        ):
            await self.app(scope, receive, send)
            return
        app = self.api
        client = scope.get("client")
        host = client[0] if client else "unknown"
        if app.dependency_overrides or not read_key_accepted(app.state, host, scope["headers"]):
            await self.app(scope, receive, send)  # overridden dependencies, or a refusal for `require` to give
            return
        scope["route"] = self.route
        store = app.state.store
        request_id = scope.get("state", {}).get("request_id")
        try:
            body = await answer_recommendations(app.state, store, match[1], *query, request_id)
        except OnlineStoreError as exc:
            await store_unavailable(scope["path"], store, exc)(scope, receive, send)
            return
        except Exception:  # what Starlette's error middleware would do, which this path runs in front of
            logger.exception("unexpected error answering %s (request %s)", scope["path"], request_id)
            await send({"type": "http.response.start", "status": 500, "headers": [*_JSON_HEADERS]})
            await send({"type": "http.response.body", "body": b'{"detail":"internal server error"}'})
            return
        headers = [(b"content-length", str(len(body)).encode()), *_JSON_HEADERS]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
