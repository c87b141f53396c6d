"""API keys on the serving API: ingest, admin and optional read keys, rotation, logged and throttled failures,
per-key intake rate limits, and the refusal to serve beyond loopback without keys."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from fastapi.testclient import TestClient

from recsys_platform.serve import deployment
from recsys_platform.serve.api import create_app
from recsys_platform.serve.auth import ApiKeys, FailureThrottle, TokenBuckets, require_keys_for
from recsys_platform.serve.online_store import open_online_store

OLD, NEW, ADMIN = "ingest-old-key", "ingest-new-key", "admin-key"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    for name in ("RECSYS_LANDING_URL", "RECSYS_LAKE_URL", "RECSYS_ONLINE_STORE_URL", "RECSYS_READ_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RECSYS_INGEST_API_KEY", f"{OLD}, {NEW}")  # rotation: both are accepted
    monkeypatch.setenv("RECSYS_ADMIN_API_KEY", ADMIN)
    (tmp_path / "lake").mkdir()
    pl.DataFrame({"item_id": ["i1"]}).write_parquet(tmp_path / "lake" / "items.parquet")
    with open_online_store(f"sqlite:///{tmp_path / 'online_store.sqlite'}") as store:
        deployment.deploy(store, "1", "s1", {"recs": {"u1": '{"items": []}'}})
    return tmp_path


def _event() -> dict:
    return {"records": [{"user_id": "u1", "event_type": "app_open", "event_time": datetime.now(UTC).isoformat()}]}


def test_event_writes_need_an_ingest_key_and_any_active_key_works(home: Path, caplog) -> None:
    with TestClient(create_app()) as c, caplog.at_level(logging.WARNING, "recsys_platform.serve.auth"):
        missing = c.post("/v1/events", json=_event())
        assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
        assert c.post("/v1/events", json=_event(), headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.post("/v1/events", json=_event(), headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 401
        for key in (OLD, NEW):
            ok = c.post("/v1/events", json=_event(), headers={"Authorization": f"Bearer {key}"})
            assert ok.status_code == 200 and ok.json()["FailedRecordCount"] == 0
        assert c.post("/v1/events", json=_event(), headers={"X-API-Key": NEW}).status_code == 200
        assert c.get("/v1/users/u1/recommendations").status_code == 200  # reads stay open without a read key
    rejected = [r.getMessage() for r in caplog.records if "rejected ingest key" in r.getMessage()]
    assert len(rejected) == 3 and "no key" in rejected[0] and "wrong key" in rejected[1]
    assert not any(k in m for m in rejected for k in ("nope", ADMIN))  # keys are never logged
    assert len(list((home / "landing" / "events").rglob("*.parquet"))) == 3


def test_failed_attempts_are_throttled_per_client(home: Path) -> None:
    with TestClient(create_app()) as c:
        codes = [c.post("/v1/deployment/rollback?to_version=1", headers={"X-API-Key": f"guess{i}"}).status_code
                 for i in range(12)]  # fmt: skip
        assert codes == [401] * 10 + [429] * 2
        blocked = c.get("/v1/deployment", headers={"X-API-Key": ADMIN})  # even the right key waits
        assert blocked.status_code == 429 and 50 <= int(blocked.headers["Retry-After"]) <= 60


def test_reads_can_require_a_key(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_READ_API_KEY", "reader")
    with TestClient(create_app()) as c:
        assert c.get("/v1/users/u1/recommendations").status_code == 401
        assert c.get("/v1/users/u1/recommendations", headers={"Authorization": "Bearer reader"}).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200


def test_event_intake_is_rate_limited_per_key_with_retry_after(home: Path, monkeypatch) -> None:
    monkeypatch.setenv("RECSYS_INGEST_RATE", "2")  # 2 requests/s, bursts of 4
    with TestClient(create_app()) as c:
        codes = [c.post("/v1/events", json=_event(), headers={"X-API-Key": OLD}).status_code for _ in range(6)]
        assert codes[:4] == [200] * 4 and 429 in codes[4:]
        limited = c.post("/v1/events", json=_event(), headers={"X-API-Key": OLD})
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
        assert c.post("/v1/events", json=_event(), headers={"X-API-Key": NEW}).status_code == 200  # its own bucket


def test_throttle_and_buckets_recover_with_time() -> None:
    now = [0.0]
    throttle = FailureThrottle(max_failures=2, window_s=10.0, clock=lambda: now[0])
    throttle.failed("a")
    throttle.failed("a")
    assert throttle.retry_after("a") == pytest.approx(10.0) and throttle.retry_after("b") is None
    now[0] = 10.5
    assert throttle.retry_after("a") is None
    buckets = TokenBuckets(1.0, clock=lambda: now[0])
    assert [buckets.take("k") for _ in range(2)] == [None, None] and buckets.take("k") == pytest.approx(1.0)
    now[0] += 1.0
    assert buckets.take("k") is None
    assert TokenBuckets(0.0).take("k") is None  # 0: no limit


def test_serving_beyond_loopback_needs_ingest_and_admin_keys() -> None:
    require_keys_for("127.0.0.1", ApiKeys())
    with pytest.raises(ValueError, match="without RECSYS_INGEST_API_KEY and RECSYS_ADMIN_API_KEY"):
        require_keys_for("0.0.0.0", ApiKeys())
    with pytest.raises(ValueError, match="without RECSYS_ADMIN_API_KEY"):
        require_keys_for("0.0.0.0", ApiKeys(ingest=("k",)))
    require_keys_for("0.0.0.0", ApiKeys.from_env({"RECSYS_INGEST_API_KEY": "a,b", "RECSYS_ADMIN_API_KEY": "c"}))
    assert ApiKeys.from_env({"RECSYS_INGEST_API_KEY": " a , ,b "}).ingest == ("a", "b")
