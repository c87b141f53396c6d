"""FastAPI serving API: recommendations, similar items, deployment status and rollback."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import partial
from typing import Annotated, Literal, TypeVar

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from recsys_platform.config import Settings
from recsys_platform.ingest.landing import landing_zone_from_url
from recsys_platform.schemas import CONTENT_TYPES, ID_PATTERN, ID_RULE
from recsys_platform.serve import deployment
from recsys_platform.serve import read_path as serving
from recsys_platform.serve.arms import ArmRouter
from recsys_platform.serve.auth import app_state, require
from recsys_platform.serve.errors import errors, public_reason, store_unavailable
from recsys_platform.serve.events_api import events_router
from recsys_platform.serve.fast_path import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    RECOMMENDATIONS_ROUTE,
    RecommendationsFastPath,
    answer_recommendations,
)
from recsys_platform.serve.observability import Metrics, ObservabilityMiddleware
from recsys_platform.serve.online_store import (
    OnlineStore,
    OnlineStoreError,
    SlotStateError,
    StoreUnavailableError,
    open_online_store,
)
from recsys_platform.serve.served_log import ServedLog

logger = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BODY_BYTES = 1 << 20
ContentType = Literal[CONTENT_TYPES]  # type: ignore[valid-type]


class RecommendationsQuery(BaseModel):
    """Query parameters of the recommendations endpoint."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description=f"number of items (1-{MAX_LIMIT})")
    content_type: ContentType | None = Field(None, description="only items of this content type")
    exclude_kids: bool = Field(False, description="drop items flagged as kids content")


# --- response models -------------------------------------------------------------------


class RecommendedItemOut(BaseModel):
    """One item of a ranked list."""

    item_id: str
    score: float
    rank: int
    content_type: str | None = None
    is_kids: bool = False


class ServedListOut(BaseModel):
    """A ranked list and the deployment that holds it (what every list route answers with)."""

    items: list[RecommendedItemOut]
    model_version: str
    slot: str
    snapshot_id: str
    generated_at: str | None


class RecommendationsOut(ServedListOut):
    """Recommendations for a user, the deployment that produced them, and the user's experiment arm."""

    user_id: str
    source: Literal["personalized", "popularity_fallback", "popularity", "recommendation_set"]
    experiment: str | None = Field(None, description="the live experiment on this surface, if any")
    arm: str | None = Field(None, description="the user's arm in it (what it serves: config serves:)")


class SimilarItemsOut(ServedListOut):
    """Nearest neighbours of an item, and the deployment that produced them."""

    item_id: str


class SetOut(ServedListOut):
    """One of a user's named recommendation sets (rules applied), and the deployment that holds it."""

    user_id: str
    set_name: str


class PointerOut(BaseModel):
    """The active slot and what it serves."""

    active_slot: str
    model_version: str
    snapshot_id: str
    deployed_at: str


class SlotOut(BaseModel):
    """One slot's binding."""

    slot: str
    model_version: str | None
    snapshot_id: str | None
    state: Literal["empty", "writing", "ready"]
    written_at: str | None
    row_counts: dict[str, int]
    checksums: dict[str, str]
    checksum: str | None


class DeploymentOut(BaseModel):
    """Pointer plus both slots."""

    backend: str
    pointer: PointerOut | None
    slots: dict[str, SlotOut]
    rollback_available: bool


class HealthOut(BaseModel):
    """Liveness: the process answers."""

    status: Literal["ok"]


class ReadyOut(BaseModel):
    """Readiness: a sealed active slot (and the expected model version, when asked) on a reachable store."""

    status: Literal["ready", "not_ready"]
    reason: str | None = None
    active_slot: str | None = None
    model_version: str | None = None


# --- dependencies ----------------------------------------------------------------------


async def get_store(request: Request) -> OnlineStore:
    """The app's online store (override in tests with `app.dependency_overrides`)."""
    return request.app.state.store


StoreDep = Annotated[OnlineStore, Depends(get_store)]


def only_query_params(*allowed: str) -> Callable[[Request], Awaitable[None]]:
    """Dependency rejecting query parameters other than `allowed` with 400."""
    allowed_set = frozenset(allowed)

    async def check(request: Request) -> None:
        unknown = sorted(set(request.query_params) - allowed_set)
        if unknown:
            listed = ", ".join(sorted(allowed_set)) or "none"
            raise HTTPException(400, f"unknown query parameter(s): {', '.join(unknown)}; allowed: {listed}")

    return check


# --- routes ----------------------------------------------------------------------------


def _served_list(rec: serving.Recommendations) -> dict:
    """The ServedListOut fields of a list read from the store."""
    items = [
        {"item_id": i.item_id, "score": i.score, "rank": i.rank, "content_type": i.content_type, "is_kids": i.is_kids}
        for i in rec.items
    ]
    return {
        "items": items,
        "model_version": rec.model_version,
        "slot": rec.slot,
        "snapshot_id": rec.snapshot_id,
        "generated_at": rec.generated_at,
    }


async def _read(store: OnlineStore, fn: Callable[..., T], *args: object) -> T:
    """Run a read inline when the backend's reads are local and sub-millisecond, else in the threadpool.

    A threadpool hop costs more CPU than a memory-mapped SQLite lookup, so SQLite reads run on the
    event loop; network-bound backends go to the threadpool so one slow call cannot stall the loop.
    """
    if store.inline_reads:
        return fn(*args)
    return await run_in_threadpool(fn, *args)


router = APIRouter()


@router.get(
    RECOMMENDATIONS_ROUTE,
    response_model=RecommendationsOut,
    responses=errors(400, 401, 429, 503),
    dependencies=[Depends(only_query_params("limit", "content_type", "exclude_kids")), Depends(require("read"))],
    tags=["recommendations"],
)
async def get_recommendations(
    request: Request,
    store: StoreDep,
    user_id: Annotated[str, Path(pattern=ID_PATTERN, description=ID_RULE)],
    query: Annotated[RecommendationsQuery, Query()],
) -> Response:
    """Top recommendations for a user (popularity fallback for unknown users): in a live experiment on the home
    surface, what the user's arm is served (the rules-processed set, the popularity list or the model's list)."""
    # Plain valid requests never get here: RecommendationsFastPath answers them with the same function. The body
    # is returned encoded, so FastAPI documents RecommendationsOut without validating each answer against it.
    request_id = request.scope.get("state", {}).get("request_id")
    body = await answer_recommendations(
        request.app.state, store, user_id, query.limit, query.content_type, query.exclude_kids, request_id
    )
    return Response(body, media_type="application/json")


@router.get(
    "/v1/users/{user_id}/sets/{set_name}",
    response_model=SetOut,
    responses=errors(400, 401, 404, 429, 503),
    dependencies=[Depends(only_query_params("limit")), Depends(require("read"))],
    tags=["recommendations"],
)
async def get_user_set(
    store: StoreDep,
    user_id: Annotated[str, Path(pattern=ID_PATTERN, description=ID_RULE)],
    set_name: Annotated[str, Path(pattern=r"^[a-z][a-z0-9_]{0,63}$", description="a set of the set file")],
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict:
    """A user's named set as the batch sets job built it (config/recommendation_sets.yaml); 404 when the active
    slot holds no such set for the user (not eligible, or the sets job has not run for this model version)."""
    try:
        rec = await _read(store, serving.user_set, store, user_id, set_name, limit)
    except serving.SetNotFoundError as exc:
        raise HTTPException(404, str(exc)) from exc
    return {"user_id": user_id, "set_name": set_name, **_served_list(rec)}


@router.get(
    "/v1/items/{item_id}/similar",
    response_model=SimilarItemsOut,
    responses=errors(400, 401, 404, 429, 503),
    dependencies=[Depends(only_query_params("limit")), Depends(require("read"))],
    tags=["recommendations"],
)
async def get_similar_items(
    store: StoreDep,
    item_id: Annotated[str, Path(pattern=ID_PATTERN, description=ID_RULE)],
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> dict:
    """Items similar to an item; 404 if the active model does not know it."""
    try:
        rec = await _read(store, serving.similar_items, store, item_id, limit)
    except serving.ItemNotFoundError as exc:
        raise HTTPException(404, str(exc)) from exc
    return {"item_id": item_id, **_served_list(rec)}


@router.get(
    "/v1/deployment",
    response_model=DeploymentOut,
    responses=errors(400, 401, 429, 503),
    dependencies=[Depends(only_query_params()), Depends(require("admin"))],
    tags=["deployment"],
)
def get_deployment(store: StoreDep) -> dict:
    """The pointer and both slots, with snapshot ids and checksums (needs the admin key)."""
    return deployment.status(store)


@router.post(
    "/v1/deployment/rollback",
    response_model=PointerOut,
    responses=errors(400, 401, 409, 429, 503),
    dependencies=[Depends(only_query_params("to_version", "from_version")), Depends(require("admin"))],
    tags=["deployment"],
)
def post_rollback(
    store: StoreDep,
    to_version: Annotated[str | None, Query(description="serve this version (a no-op if it is served)")] = None,
    from_version: Annotated[str | None, Query(description="leave this version, which must be served now")] = None,
) -> dict:
    """Point reads at the other slot, named by its target so retries are safe (needs the admin key): 400
    without exactly one of `to_version` and `from_version`, 409 if the store is not in the named state."""
    if (to_version is None) == (from_version is None):
        raise HTTPException(400, "name the target: exactly one of to_version (serve it) or from_version (leave it)")
    try:
        pointer = deployment.rollback(store, to_version=to_version, from_version=from_version)
    except (deployment.NothingToRollBackError, deployment.RollbackConflictError, SlotStateError) as exc:
        raise HTTPException(409, str(exc)) from exc
    return pointer.__dict__.copy()


class ForgetOut(BaseModel):
    """What forgetting a user removed (the audit trail names the user by `user_sha256` only)."""

    user_sha256: str
    at: str
    removed: dict[str, int]


@router.delete(
    "/v1/users/{user_id}",
    response_model=ForgetOut,
    responses=errors(400, 401, 429, 503),
    dependencies=[Depends(only_query_params()), Depends(require("admin"))],
    tags=["deployment"],
)
async def delete_user(
    request: Request,
    store: StoreDep,
    user_id: Annotated[str, Path(pattern=ID_PATTERN, description=ID_RULE)],
) -> dict:
    """Forget a user everywhere (landing zone, lake, exports, online store, push queue; needs the admin key).
    Idempotent: forgetting a user again removes nothing and records that too."""
    from recsys_platform.lifecycle import forget_user

    settings = replace(request.app.state.settings, online_store_url=store.url)
    if (log := request.app.state.served_log) is not None:
        log.forget(user_id)
    report = await run_in_threadpool(forget_user, user_id, settings)
    return {"user_sha256": report.user_sha256, "at": report.at, "removed": report.removed}


@router.get("/metrics", response_class=Response, tags=["ops"])
async def get_metrics(request: Request) -> Response:
    """Prometheus metrics: requests and latency by route, served lists by source, events by outcome and
    reason, failed key attempts, and the active slot's model version (`recsys_platform.serve.observability`)."""
    body, content_type = request.app.state.metrics.exposition()
    return Response(body, media_type=content_type)


@router.get("/healthz", response_model=HealthOut, tags=["ops"])
async def healthz() -> dict:
    """200 while the process answers (liveness; it reads nothing)."""
    return {"status": "ok"}


@router.get("/readyz", response_model=ReadyOut, responses={503: {"model": ReadyOut}}, tags=["ops"])
async def readyz(
    store: StoreDep,
    model_version: Annotated[str | None, Query(description="also require this model version to be served")] = None,
) -> JSONResponse:
    """200 when the store is reachable and its active slot is sealed (ready), serving `model_version` if given;
    503 with the reason otherwise."""
    try:
        pointer = await _read(store, store.pointer)
        info = None if pointer is None else await _read(store, store.slot_info, pointer.active_slot)
    except OnlineStoreError as exc:
        return _not_ready(f"online store unavailable: {public_reason(exc, store)}")
    if pointer is None or info is None:
        return _not_ready("no slot is active (nothing deployed yet)")
    served = {"active_slot": pointer.active_slot, "model_version": pointer.model_version}
    if info.state != "ready":
        return _not_ready(f"the active slot is {info.state}, not sealed", **served)
    if model_version is not None and pointer.model_version != model_version:
        return _not_ready(f"serving model {pointer.model_version}, expected {model_version}", **served)
    return JSONResponse({"status": "ready", **served})


def _not_ready(reason: str, **served: str) -> JSONResponse:
    return JSONResponse({"status": "not_ready", "reason": reason, **served}, status_code=503)


# --- middleware, errors, factory -------------------------------------------------------


class BodySizeLimitMiddleware:
    """Reject request bodies larger than `max_bytes` with 413, declared or streamed."""

    def __init__(self, app: Callable, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        # Streamed (chunked) bodies: buffer up to the limit before the app sees anything.
        messages: list[dict] = []
        received = 0
        if declared is None and scope.get("method") in ("POST", "PUT", "PATCH"):
            while True:
                message = await receive()
                messages.append(message)
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    await self._reject(scope, receive, send)
                    return
                if message["type"] != "http.request" or not message.get("more_body", False):
                    break

        async def replay() -> dict:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: dict, receive: Callable, send: Callable) -> None:
        response = JSONResponse(
            {"detail": f"request body too large: the limit is {self.max_bytes} bytes"}, status_code=413
        )
        await response(scope, receive, send)


class ServingAPI(FastAPI):
    """The API's FastAPI application, with a front for HTTP requests (`front`, set by `create_app`): request ids,
    metrics and the access log (`ObservabilityMiddleware`), then the hot route's fast path, then FastAPI itself.
    Starlette's middleware stack (its error and exception layers, FastAPI's body limit, ours) and the router only
    see what the fast path passes on, which spares the hot route a call and a `send` wrapper per layer:
    benchmarks/serve.py (SQLite, 2 workers, 16 connections, 2 cores, runs interleaved with the code before) 115 and
    130 us of server CPU per request against 134 and 170 us with the observability middleware and the fast path
    inside the stack."""

    front: Callable[..., Awaitable[None]] | None = None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and self.front is not None:
            await self.front(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def freeze_startup_heap() -> None:
    """Move every object alive once the app has started (modules, FastAPI's routes and models, polars, the
    store client: about a million objects) out of the collector's reach, so that a full collection under load
    scans only what requests made since. Without it, each worker ran a full collection every few seconds under
    benchmarks/serve.py (the served log's buffer promotes objects to the oldest generation), each stopping the
    event loop 134-158 ms: p99 8-69 ms and max ~150 ms on SQLite. Frozen, those collections take under 1 ms
    (p99 4.0-4.9 ms, max 13-39 ms; the README has the runs, interleaved with the code before). Only the young
    generations are collected first: a full collection here costs ~0.3 s per start, while freezing is a list
    splice and startup's older garbage is a few objects."""
    gc.collect(1)
    gc.freeze()


async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    return store_unavailable(request.url.path, request.app.state.store, exc)


def create_app(
    store_url: str | None = None,
    extra_routers: Iterable[APIRouter] = (),
    fast_path: bool = True,
    *,
    settings: Settings | None = None,
) -> FastAPI:
    """Build the API from `settings` on the store at `store_url` (default: the settings' store); add
    `extra_routers` as-is. `fast_path=False` leaves every recommendations request to the FastAPI route (the tests
    compare the two answers). The routes and their dependencies read the settings from `app.state.settings`.

    Without `settings` the app reads `Settings.from_env()`: the server (`recsys serve`) calls this factory with no
    arguments in each worker, so this is the serving process's one read of the environment."""
    settings = settings or Settings.from_env()
    url = store_url or settings.online_store_url
    settings = replace(settings, online_store_url=url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if app.state.served_log is not None:
            app.state.served_log.start()
        freeze_startup_heap()
        yield
        gc.unfreeze()
        if app.state.served_log is not None:
            await app.state.served_log.aclose()
        await app.state.store.aclose()

    app = ServingAPI(
        title="recsys-platform serving API",
        version="1",
        description="Recommendations served from the active slot of the two-slot online store.",
        lifespan=lifespan,
        # The API's own metrics are Prometheus (observability.py). FastAPI's native OpenTelemetry hook, even with
        # no provider configured, costs ~12 us per request to find that out: a tenth of the hot route's CPU.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.store = open_online_store(url, create=False)
    app_state(app.state)  # API keys, failure throttle and intake rate limits, from the settings
    app.state.arms = ArmRouter(settings.recommendation_sets_path)
    app.state.served_log = (
        ServedLog(lambda: landing_zone_from_url(settings.landing_url)) if settings.serve.served_log else None
    )
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=MAX_BODY_BYTES)
    app.state.metrics = Metrics(store_reader=lambda: app.state.store.pointer())
    stack = partial(FastAPI.__call__, app)  # FastAPI's own handling: Starlette's middleware stack, then the router
    if fast_path:
        hot = next(r for r in router.routes if getattr(r, "path", None) == RECOMMENDATIONS_ROUTE)
        stack = RecommendationsFastPath(stack, route=hot, api=app)
    app.front = ObservabilityMiddleware(stack, metrics=app.state.metrics, access_log=settings.serve.access_log)
    app.add_exception_handler(StoreUnavailableError, _store_unavailable)
    app.add_exception_handler(OnlineStoreError, _store_unavailable)
    app.include_router(router)
    app.include_router(events_router())  # POST /v1/events (recsys_platform.serve.events_api)
    for extra in extra_routers:
        app.include_router(extra)
    logger.info("serving API on online store %s", url)
    return app
