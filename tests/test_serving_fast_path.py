"""The recommendations fast path (serve/fast_path.py): the same bytes as the FastAPI route, for every filter,
limit and fallback, with every request it cannot prove valid left to FastAPI's answers."""

from __future__ import annotations

import json
from collections.abc import Iterator

import msgspec
import pytest
from fastapi.testclient import TestClient

from recsys_platform.serve import api, deployment
from recsys_platform.serve.api import RecommendationsOut, RecommendedItemOut, create_app
from recsys_platform.serve.fast_path import RecommendationsBody, parse_query
from recsys_platform.serve.online_store import open_online_store
from recsys_platform.serve.read_path import RecommendedItem

GENERATED_AT = "2025-01-02T00:00:00+00:00"


def ranked(entries: list[tuple[str, str, bool]]) -> str:
    """A stored list of (item_id, content_type, is_kids), scores n, n-1, ... 1."""
    items = [
        {"item_id": item, "score": float(len(entries) - n), "content_type": ct, "is_kids": kids}
        for n, (item, ct, kids) in enumerate(entries)
    ]
    return json.dumps({"items": items, "generated_at": GENERATED_AT})


ALICE = [
    ("med-1", "meditation", False),
    ("kid-1", "kids", True),
    ("sleep-1", "sleep_story", False),
    ("med-2", "meditation", False),
    ("sleep-2", "sleep_story", True),
]
PAYLOAD = {
    "recs": {
        "alice": ranked(ALICE),
        # written by an older job: a number for an id, a null flag, no score, no content type
        "legacy": json.dumps({"items": [{"item_id": 7, "is_kids": None}, {"item_id": "x", "score": 2}]}),
    },
    "user_features": {"alice": '{"segment": "de:advanced"}', "bob": '{"segment": "en:beginner"}'},
    "popular": {
        "en:beginner": ranked([(f"pop-en-{i}", "music", i == 1) for i in range(3)]),
        "__global__": ranked([(f"pop-{i}", ("focus", "sleep_story")[i % 2], i % 3 == 0) for i in range(30)]),
    },
}


@pytest.fixture
def store_url(online_store_url: str) -> Iterator[str]:
    store = open_online_store(online_store_url)
    deployment.deploy(store, "v1", "snap-1", PAYLOAD)
    yield online_store_url
    if online_store_url.startswith("redis"):
        store.drop_all()
    store.close()


@pytest.fixture
def clients(store_url: str, no_experiments, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, TestClient]]:
    """(fast, route): the app with the fast path, and the same app answering everything through FastAPI."""
    monkeypatch.setenv("RECSYS_SERVED_LOG", "0")
    with TestClient(create_app(store_url)) as fast, TestClient(create_app(store_url, fast_path=False)) as route:
        yield fast, route


@pytest.fixture
def route_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any request that reaches the FastAPI route: the fast path must have answered it."""

    async def reached(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("the FastAPI route answered a request the fast path should have")

    monkeypatch.setattr(api, "answer_recommendations", reached)


def test_the_answer_body_is_the_documented_model_field_for_field() -> None:
    assert list(RecommendationsBody.__struct_fields__) == list(RecommendationsOut.model_fields)
    assert list(RecommendedItem.__struct_fields__) == list(RecommendedItemOut.model_fields)


QUERIES = [
    "",
    "limit=1",
    "limit=2",
    "limit=5",
    "limit=100",
    "content_type=sleep_story",
    "content_type=kids",
    "exclude_kids=true",
    "exclude_kids=false",
    "exclude_kids=1",
    "content_type=sleep_story&exclude_kids=true",
    "limit=1&content_type=meditation",
    "limit=3&exclude_kids=true&content_type=focus",
    "content_type=podcast_x",
]


@pytest.mark.parametrize("user", ["alice", "bob", "zed", "legacy"])
def test_fast_answers_are_the_routes_bytes(clients, route_unreachable, user: str) -> None:
    fast, _ = clients
    for query in QUERIES:
        if query == "content_type=podcast_x":
            continue  # an invalid value: FastAPI's 422, compared in the next test
        got = fast.get(f"/v1/users/{user}/recommendations?{query}")
        assert got.status_code == 200, (query, got.text)
        assert got.headers["content-type"] == "application/json"
        # the bytes pydantic gives for the documented model: same fields, order, float and null forms
        assert got.content == RecommendationsOut.model_validate_json(got.content).model_dump_json().encode()


@pytest.mark.parametrize("user", ["alice", "bob", "zed", "legacy"])
def test_fast_path_and_fastapi_route_answer_byte_for_byte_alike(clients, user: str) -> None:
    fast, route = clients
    odd = ["limit=010", "limit=5&limit=6", "exclude_kids=TRUE", "exclude_kids=maybe", "content_type=sleep%5Fstory"]
    odd += ["lim%69t=3", "limit=", "limit", "&&", "limit=0", "limit=101", "limit=%2B5", "foo=1", "limit=1e1"]
    for query in QUERIES + odd:
        path = f"/v1/users/{user}/recommendations?{query}"
        a, b = fast.get(path), route.get(path)
        assert (a.status_code, a.content) == (b.status_code, b.content), query


def test_filters_limits_and_fallbacks_by_hand(clients, route_unreachable) -> None:
    fast, _ = clients

    def get(user: str, query: str = "") -> dict:
        response = fast.get(f"/v1/users/{user}/recommendations?{query}")
        assert response.status_code == 200, response.text
        return response.json()

    alice = get("alice", "limit=3&exclude_kids=true")
    assert alice["items"] == [
        {"item_id": "med-1", "score": 5.0, "rank": 1, "content_type": "meditation", "is_kids": False},
        {"item_id": "sleep-1", "score": 3.0, "rank": 2, "content_type": "sleep_story", "is_kids": False},
        {"item_id": "med-2", "score": 2.0, "rank": 3, "content_type": "meditation", "is_kids": False},
    ]
    assert {k: v for k, v in alice.items() if k != "items"} == {
        "model_version": "v1",
        "slot": "blue",
        "snapshot_id": "snap-1",
        "generated_at": GENERATED_AT,
        "user_id": "alice",
        "source": "personalized",
        "experiment": None,
        "arm": None,
    }
    # ranks are positions in the filtered list, not in the stored one
    sleep = get("alice", "content_type=sleep_story")["items"]
    assert [(i["item_id"], i["rank"]) for i in sleep] == [("sleep-1", 1), ("sleep-2", 2)]
    assert get("alice", "content_type=sleep_story&exclude_kids=true")["items"][0]["item_id"] == "sleep-1"
    assert get("alice", "content_type=focus")["items"] == []
    assert [i["item_id"] for i in get("alice", "limit=1")["items"]] == ["med-1"]
    assert len(get("alice", "limit=100")["items"]) == 5  # fewer than asked: all there are
    # bob has a segment but no list: his segment's popularity list
    bob = get("bob", "exclude_kids=yes")
    assert (bob["source"], [i["item_id"] for i in bob["items"]]) == ("popularity_fallback", ["pop-en-0", "pop-en-2"])
    # an unknown user: the global list; defaults to 10 items
    zed = get("zed")
    assert (zed["source"], [i["item_id"] for i in zed["items"]]) == (
        "popularity_fallback",
        [f"pop-{i}" for i in range(10)],
    )
    assert len(get("zed", "limit=100")["items"]) == 30
    kid_free = get("zed", "limit=4&content_type=sleep_story&exclude_kids=true")["items"]
    assert [i["item_id"] for i in kid_free] == ["pop-1", "pop-5", "pop-7", "pop-11"]
    # looser stored types keep their old conversions
    legacy = get("legacy")["items"]
    assert legacy == [
        {"item_id": "7", "score": 0.0, "rank": 1, "content_type": None, "is_kids": False},
        {"item_id": "x", "score": 2.0, "rank": 2, "content_type": None, "is_kids": False},
    ]


def test_refusals_are_fastapis(clients) -> None:
    fast, _ = clients
    assert fast.get("/v1/users/alice/recommendations?limit=0").status_code == 422
    assert fast.get("/v1/users/bad$id/recommendations").status_code == 422
    unknown = fast.get("/v1/users/alice/recommendations?limit=3&verbose=1")
    assert (unknown.status_code, unknown.json()["detail"]) == (
        400,
        "unknown query parameter(s): verbose; allowed: content_type, exclude_kids, limit",
    )
    assert fast.post("/v1/users/alice/recommendations").status_code == 405
    assert fast.get("/v1/users/alice/recommendations/", follow_redirects=False).status_code == 307


def test_a_read_key_is_checked_and_failures_throttled(store_url, no_experiments, monkeypatch) -> None:
    monkeypatch.setenv("RECSYS_READ_API_KEY", "old-reader, reader")
    monkeypatch.setenv("RECSYS_SERVED_LOG", "0")
    with TestClient(create_app(store_url)) as c:
        path = "/v1/users/alice/recommendations"
        assert c.get(path, headers={"Authorization": "Bearer reader"}).status_code == 200
        assert c.get(path, headers={"X-API-Key": "old-reader"}).status_code == 200
        assert c.get(path, headers={"Authorization": "Basic reader", "X-API-Key": "reader"}).status_code == 200
        for _ in range(10):
            assert c.get(path, headers={"X-API-Key": "guess"}).status_code == 401
        blocked = c.get(path, headers={"Authorization": "Bearer reader"})  # the right key waits too
        assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) >= 1
        metrics = c.get("/metrics").text
        assert 'recsys_auth_failures_total{scope="read"} 10.0' in metrics


def test_parse_query_accepts_only_plain_valid_parameters() -> None:
    assert parse_query(b"") == (10, None, False)
    assert parse_query(b"limit=100&content_type=sleep_story&exclude_kids=Yes") == (100, "sleep_story", True)
    for odd in (b"limit=0", b"limit=101", b"limit=07", b"limit=", b"limit", b"limit=1&limit=1", b"x=1", b"&"):
        assert parse_query(odd) is None, odd
    assert parse_query(b"content_type=sleep%5Fstory") is None  # percent-encoded: FastAPI decodes it


class Recorder:
    """Stands in for the served log: keeps what the request path records."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def record(self, **row: object) -> None:
        self.rows.append(row)

    async def aclose(self) -> None:
        pass


def test_the_served_log_and_metrics_see_fast_answers(clients, route_unreachable) -> None:
    fast, _ = clients
    fast.app.state.served_log = log = Recorder()
    served = fast.get("/v1/users/alice/recommendations?limit=2", headers={"X-Request-ID": "req-1"})
    assert served.headers["x-request-id"] == "req-1"
    assert log.rows == [
        {
            "request_id": "req-1",
            "surface": "recommended_for_you",
            "user_id": "alice",
            "experiment": None,
            "arm": None,
            "source": "personalized",
            "model_version": "v1",
            "slot": "blue",
            "item_ids": ["med-1", "kid-1"],
        }
    ]
    metrics = fast.get("/metrics").text
    route = 'route="/v1/users/{user_id}/recommendations"'
    assert f'recsys_http_requests_total{{method="GET",{route},status="200"}} 1.0' in metrics
    assert 'recsys_recommendations_served_total{source="personalized"} 1.0' in metrics


def test_an_unexpected_error_is_a_logged_500_with_the_request_id(clients, monkeypatch, caplog) -> None:
    fast, _ = clients

    async def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("a bug in the read path")

    monkeypatch.setattr(fast.app.state.store, "aread", broken)
    with caplog.at_level("ERROR", "recsys_platform.serve.fast_path"):
        got = fast.get("/v1/users/alice/recommendations", headers={"X-Request-ID": "req-500"})
    assert (got.status_code, got.json(), got.headers["x-request-id"]) == (
        500,
        {"detail": "internal server error"},
        "req-500",
    )
    assert "req-500" in caplog.text and "a bug in the read path" in caplog.text
    metrics = fast.get("/metrics").text
    assert (
        'recsys_http_requests_total{method="GET",route="/v1/users/{user_id}/recommendations",status="500"} 1.0'
        in metrics
    )


def test_msgspec_encodes_items_as_pydantic_does() -> None:
    item = RecommendedItem('a\u00e9"b', 0.1 + 0.2, 1, None, True)
    assert msgspec.json.encode(item) == RecommendedItemOut(**msgspec.structs.asdict(item)).model_dump_json().encode()


def test_aread_answers_what_read_answers(store_url: str) -> None:
    import asyncio

    from recsys_platform.serve import read_path
    from recsys_platform.serve.online_store import NothingDeployedError

    store = open_online_store(store_url)

    async def both() -> None:
        reads = [(["alice"], {"user_features": ["alice"]}), (["nobody", "alice"], {}), ([], {})]
        reads += [(["alice", "alice"], {"popular": ["__global__", "x"]}), ([f"u{i}" for i in range(20)], {})]
        for keys, extra in reads:
            assert await store.aread("recs", keys, extra=extra) == store.read("recs", keys, extra=extra)
        for user, query in (("alice", (3, "sleep_story", True)), ("bob", (2, None, False)), ("zed", (5, None, True))):
            assert await read_path.recommend_async(store, user, *query) == read_path.recommend(store, user, *query)
        await store.aclose()

    asyncio.run(both())
    empty = open_online_store(store_url.replace("store.sqlite", "empty.sqlite").replace("prefix=", "prefix=empty-"))
    empty.describe()  # a writer creates the store; nothing is deployed

    async def nothing() -> None:
        with pytest.raises(NothingDeployedError):
            await empty.aread("recs", ["alice"])
        await empty.aclose()

    asyncio.run(nothing())


def test_redis_reads_are_pipelined_and_survive_lost_scripts_and_outages(redis_url: str) -> None:
    import asyncio
    import uuid

    import redis

    from recsys_platform.serve.online_store import StoreUnavailableError

    url = f"{redis_url}{'&' if '?' in redis_url else '?'}prefix=pipe-{uuid.uuid4().hex[:8]}"
    store = open_online_store(url)
    users = {f"u{i}": ranked([(f"i{i}", "music", False)]) for i in range(50)}
    deployment.deploy(store, "v1", "snap-1", {"recs": users})

    async def reads() -> None:
        got = await asyncio.gather(*(store.aread("recs", [f"u{i}"]) for i in range(50)))  # one or a few batches
        assert [r.values[f"u{i}"] for i, r in enumerate(got)] == [users[f"u{i}"] for i in range(50)]
        redis.Redis.from_url(redis_url).script_flush()  # a restarted server has no scripts
        again = await asyncio.gather(store.aread("recs", ["u1"]), store.aread("recs", ["u2"]))
        assert [r.values for r in again] == [{"u1": users["u1"]}, {"u2": users["u2"]}]
        cancelled = asyncio.ensure_future(store.aread("recs", ["u3"]))
        await asyncio.sleep(0)
        cancelled.cancel()
        assert (await store.aread("recs", ["u4"])).values == {"u4": users["u4"]}  # the batch carries on
        await store.aclose()

    asyncio.run(reads())
    store.drop_all()
    store.close()
    down = open_online_store("redis://127.0.0.1:1/0")

    async def outage() -> None:
        results = await asyncio.gather(*(down.aread("recs", ["u1"]) for _ in range(3)), return_exceptions=True)
        assert all(isinstance(r, StoreUnavailableError) and "redis at 127.0.0.1:1" in str(r) for r in results)
        await down.aclose()

    asyncio.run(outage())
