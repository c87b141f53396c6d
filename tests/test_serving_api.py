"""recommend()/similar_items() and the FastAPI serving API, with real stores behind them."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi import APIRouter, Request
from fastapi.testclient import TestClient

from recsys_platform.schemas import CONTENT_TYPES
from recsys_platform.serve import deployment
from recsys_platform.serve import read_path as serving
from recsys_platform.serve.api import create_app
from recsys_platform.serve.online_store import open_online_store

ADMIN_KEY = "s3cret-admin-key"


def ranked(version: str, entries: list[tuple[str, str, bool]]) -> str:
    """A stored list of (item_id, content_type, is_kids), scores descending."""
    items = [
        {"item_id": item, "score": float(len(entries) - n), "content_type": ct, "is_kids": kids}
        for n, (item, ct, kids) in enumerate(entries)
    ]
    return json.dumps({"items": items, "generated_at": f"2025-01-0{version[-1]}T00:00:00+00:00"})


def payload(version: str) -> dict[str, dict[str, str]]:
    """Alice is known; bob has features (segment en:beginner) but no recs; everyone else is cold."""
    alice = [
        ("med-1", "meditation", False),
        ("kid-1", "kids", True),
        ("sleep-1", "sleep_story", False),
        ("med-2", "meditation", False),
        ("sleep-2", "sleep_story", True),
    ]
    return {
        "recs": {"alice": ranked(version, [(f"{version}-{i}", ct, k) for i, ct, k in alice])},
        "user_features": {"alice": '{"segment": "de:advanced"}', "bob": '{"segment": "en:beginner"}'},
        "popular": {
            "en:beginner": ranked(version, [(f"{version}-pop-en-{i}", "music", False) for i in range(3)]),
            "__global__": ranked(version, [(f"{version}-pop-{i}", "focus", False) for i in range(30)]),
        },
        "similar": {"med-1": ranked(version, [(f"{version}-med-{i}", "meditation", False) for i in range(4)])},
    }


@pytest.fixture
def store_url(online_store_url: str) -> Iterator[str]:
    """A store of each backend with v1 deployed, then v2 deployed (so rollback is possible)."""
    url = online_store_url
    store = open_online_store(url)
    deployment.deploy(store, "v1", "snap-1", payload("v1"))
    deployment.deploy(store, "v2", "snap-2", payload("v2"))
    yield url
    if url.startswith("redis"):
        store.drop_all()
    store.close()


@pytest.fixture
def client(store_url: str, monkeypatch: pytest.MonkeyPatch, no_experiments) -> Iterator[TestClient]:
    monkeypatch.setenv("RECSYS_ADMIN_API_KEY", ADMIN_KEY)
    with TestClient(create_app(store_url)) as c:
        yield c


def test_recommend_core_function(store_url: str) -> None:
    store = open_online_store(store_url)
    rec = serving.recommend(store, "alice", k=2)
    assert [(i.item_id, i.score, i.rank) for i in rec.items] == [("v2-med-1", 5.0, 1), ("v2-kid-1", 4.0, 2)]
    assert (rec.source, rec.model_version, rec.slot, rec.snapshot_id) == (
        "personalized",
        "v2",
        "green",
        "snap-2",
    )
    assert rec.generated_at == "2025-01-02T00:00:00+00:00"
    filtered = serving.recommend(store, "alice", k=10, content_type="sleep_story", exclude_kids=True)
    assert [(i.item_id, i.rank) for i in filtered.items] == [("v2-sleep-1", 1)]
    bob = serving.recommend(store, "bob", k=5)
    assert (bob.source, [i.item_id for i in bob.items]) == (
        "popularity_fallback",
        [f"v2-pop-en-{i}" for i in range(3)],
    )
    cold = serving.recommend(store, "zed", k=2)
    assert (cold.source, [i.item_id for i in cold.items]) == ("popularity_fallback", ["v2-pop-0", "v2-pop-1"])
    assert [i.item_id for i in serving.similar_items(store, "med-1", 2).items] == ["v2-med-0", "v2-med-1"]
    with pytest.raises(serving.ItemNotFoundError, match="'nope' is unknown to model v2"):
        serving.similar_items(store, "nope", 2)
    store.close()


def test_recommendations_endpoint(client: TestClient) -> None:
    response = client.get("/v1/users/alice/recommendations", params={"limit": 3, "exclude_kids": "true"})
    assert response.status_code == 200
    body = response.json()
    assert [i["item_id"] for i in body["items"]] == ["v2-med-1", "v2-sleep-1", "v2-med-2"]
    assert [i["rank"] for i in body["items"]] == [1, 2, 3]
    assert body["items"][0] == {
        "item_id": "v2-med-1",
        "score": 5.0,
        "rank": 1,
        "content_type": "meditation",
        "is_kids": False,
    }
    assert {k: body[k] for k in ("user_id", "source", "model_version", "slot", "snapshot_id")} == {
        "user_id": "alice",
        "source": "personalized",
        "model_version": "v2",
        "slot": "green",
        "snapshot_id": "snap-2",
    }
    cold = client.get("/v1/users/new.user:42/recommendations").json()
    assert (cold["source"], len(cold["items"])) == ("popularity_fallback", 10)


@pytest.mark.parametrize(
    ("path", "status", "detail_part"),
    [
        ("/v1/users/alice/recommendations?limit=0", 422, "greater than or equal to 1"),
        ("/v1/users/alice/recommendations?limit=101", 422, "less than or equal to 100"),
        ("/v1/users/alice/recommendations?limit=ten", 422, "valid integer"),
        ("/v1/users/alice/recommendations?content_type=podcast", 422, "'meditation', 'sleep_story'"),
        ("/v1/users/alice/recommendations?exclude_kids=maybe", 422, "valid boolean"),
        ("/v1/users/bad$id/recommendations", 422, "should match pattern"),
        (f"/v1/users/{'x' * 65}/recommendations", 422, "should match pattern"),
        ("/v1/users/alice/recommendations?lmit=5&foo=1", 400, "unknown query parameter(s): foo, lmit"),
        ("/v1/items/med-1/similar?limit=500", 422, "less than or equal to 100"),
        ("/v1/items/unknown-item/similar", 404, "'unknown-item' is unknown to model v2"),
        ("/v1/deployment?verbose=1", 400, "unknown query parameter(s): verbose"),
    ],
)
def test_bad_requests_get_specific_errors(client: TestClient, path: str, status: int, detail_part: str) -> None:
    response = client.get(path)
    assert response.status_code == status, response.text
    assert detail_part in json.dumps(response.json()["detail"])


def test_content_type_error_lists_every_allowed_value(client: TestClient) -> None:
    detail = json.dumps(client.get("/v1/users/alice/recommendations?content_type=x").json()["detail"])
    assert all(f"'{ct}'" in detail for ct in CONTENT_TYPES)


def test_similar_items_and_deployment_status(client: TestClient) -> None:
    similar = client.get("/v1/items/med-1/similar", params={"limit": 2}).json()
    assert [i["item_id"] for i in similar["items"]] == ["v2-med-0", "v2-med-1"]
    assert client.get("/v1/deployment").status_code == 401  # snapshot ids and checksums are for operators
    status = client.get("/v1/deployment", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
    assert status["pointer"]["active_slot"] == "green"
    assert status["rollback_available"] is True
    assert status["slots"]["blue"]["model_version"] == "v1"
    assert status["slots"]["green"]["row_counts"] == {
        "popular": 2,
        "recs": 1,
        "similar": 1,
        "user_features": 2,
    }
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "active_slot": "green", "model_version": "v2"}
    assert client.get("/readyz", params={"model_version": "v2"}).status_code == 200
    stale = client.get("/readyz", params={"model_version": "v3"})
    assert (stale.status_code, stale.json()["reason"]) == (503, "serving model v2, expected v3")
    assert "/v1/users/{user_id}/recommendations" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200


def test_rollback_requires_the_admin_key_and_names_its_target(
    store_url: str, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert client.post("/v1/deployment/rollback?to_version=v1").status_code == 401
    wrong = client.post("/v1/deployment/rollback?to_version=v1", headers={"X-API-Key": "nope"})
    assert (wrong.status_code, wrong.json()["detail"]) == (401, "missing or invalid API key for admin")
    bearer = {"Authorization": f"Bearer {ADMIN_KEY}"}
    untargeted = client.post("/v1/deployment/rollback", headers=bearer)
    assert untargeted.status_code == 400 and "exactly one of to_version" in untargeted.json()["detail"]
    for _ in range(2):  # a retry is a no-op, not a flip back
        ok = client.post("/v1/deployment/rollback?to_version=v1", headers=bearer)
        assert ok.status_code == 200
        assert (ok.json()["active_slot"], ok.json()["model_version"]) == ("blue", "v1")
    conflict = client.post("/v1/deployment/rollback?from_version=v2", headers={"X-API-Key": ADMIN_KEY})
    assert conflict.status_code == 409 and "serves model v1, not v2" in conflict.json()["detail"]
    assert client.get("/v1/users/alice/recommendations?limit=1").json()["items"][0]["item_id"] == "v1-med-1"
    monkeypatch.delenv("RECSYS_ADMIN_API_KEY")
    with TestClient(create_app(store_url)) as unkeyed:
        disabled = unkeyed.post("/v1/deployment/rollback?to_version=v2", headers=bearer)
        assert disabled.status_code == 503
        assert "RECSYS_ADMIN_API_KEY is not set" in disabled.json()["detail"]
        assert unkeyed.get("/v1/deployment").status_code == 503


def test_rollback_with_nothing_to_roll_back_is_a_conflict(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_ADMIN_API_KEY", ADMIN_KEY)
    url = f"sqlite:///{tmp_path}/one.sqlite"
    deployment.deploy(open_online_store(url), "v1", "snap-1", payload("v1"))
    with TestClient(create_app(url)) as c:
        response = c.post("/v1/deployment/rollback?from_version=v1", headers={"X-API-Key": ADMIN_KEY})
    assert response.status_code == 409
    assert "slot 'green' is empty" in response.json()["detail"]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis://127.0.0.1:1/0", "redis at 127.0.0.1:1"),
        ("sqlite:////nonexistent-dir/store.sqlite", "no online store file at store.sqlite"),
    ],
)
def test_store_outage_is_a_503_with_the_reason_and_no_server_paths(url: str, reason: str, monkeypatch) -> None:
    monkeypatch.setenv("RECSYS_ADMIN_API_KEY", ADMIN_KEY)
    admin = {"X-API-Key": ADMIN_KEY}
    with TestClient(create_app(url), raise_server_exceptions=False) as c:
        for path in ("/v1/users/alice/recommendations", "/v1/items/i1/similar", "/v1/deployment"):
            response = c.get(path, headers=admin)
            assert response.status_code == 503, (path, response.text)
            detail = response.json()["detail"]
            assert detail.startswith("online store unavailable: ") and reason in detail
            assert "nonexistent-dir" not in detail
        assert c.get("/healthz").json() == {"status": "ok"}  # the process is up
        ready = c.get("/readyz")
        assert ready.status_code == 503 and reason in ready.json()["reason"]


def test_a_mistyped_store_path_is_an_error_not_a_new_empty_store(tmp_path) -> None:
    with TestClient(create_app(f"sqlite:///{tmp_path}/typo.sqlite")) as c:
        response = c.get("/v1/users/alice/recommendations")
        assert response.status_code == 503 and "no online store file at typo.sqlite" in response.json()["detail"]
        assert c.get("/readyz").status_code == 503
    assert not (tmp_path / "typo.sqlite").exists()


def test_nothing_deployed_is_a_503(tmp_path) -> None:
    open_online_store(f"sqlite:///{tmp_path}/empty.sqlite").describe()  # a writer creates the store
    with TestClient(create_app(f"sqlite:///{tmp_path}/empty.sqlite")) as c:
        response = c.get("/v1/users/alice/recommendations")
        assert response.status_code == 503
        assert response.json()["detail"] == "online store unavailable: no slot is active (nothing deployed yet)"
        ready = c.get("/readyz")
        assert (ready.status_code, ready.json()["reason"]) == (503, "no slot is active (nothing deployed yet)")


def test_oversized_bodies_are_rejected_and_extra_routers_mount(tmp_path) -> None:
    extra = APIRouter()

    @extra.post("/v1/echo")
    async def echo(request: Request) -> dict:
        return {"bytes": len(await request.body())}

    with TestClient(create_app(f"sqlite:///{tmp_path}/s.sqlite", extra_routers=[extra])) as c:  # routes need no store
        assert c.post("/v1/echo", content=b"x" * 1000).json() == {"bytes": 1000}
        too_big = c.post("/v1/echo", content=b"x" * (1024 * 1024 + 1))
        assert too_big.status_code == 413
        assert "limit is 1048576 bytes" in too_big.json()["detail"]
        chunks = (b"y" * 65536 for _ in range(20))  # streamed without Content-Length
        assert c.post("/v1/echo", content=chunks).status_code == 413
        small_chunks = (b"y" * 1000 for _ in range(3))
        assert c.post("/v1/echo", content=small_chunks).json() == {"bytes": 3000}
