"""POST /v1/events: per-record answers like Kinesis PutRecords, durable landing files, clear 4xx/5xx."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from fastapi.testclient import TestClient

from recsys_platform.ingest.ingestion import ingest_files
from recsys_platform.ingest.landing import LocalLandingZone, landing_zone_from_url, partition_key_of
from recsys_platform.serve import deployment
from recsys_platform.serve.api import create_app
from recsys_platform.serve.online_store import open_online_store


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A RECSYS_HOME with a catalog of two items in the lake and a deployed store."""
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    for name in ("RECSYS_LANDING_URL", "RECSYS_LAKE_URL", "RECSYS_ONLINE_STORE_URL"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "lake").mkdir()
    pl.DataFrame({"item_id": ["i1", "i2"]}).write_parquet(tmp_path / "lake" / "items.parquet")
    with open_online_store(f"sqlite:///{tmp_path / 'online_store.sqlite'}") as store:
        deployment.deploy(store, "1", "s1", {"recs": {"u1": '{"items": []}'}})
    return tmp_path


@pytest.fixture
def client(home: Path):
    with TestClient(create_app()) as c:
        yield c


def _now(delta: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta)).isoformat()


def test_batch_is_answered_per_record_and_only_accepted_records_land(client: TestClient, home: Path) -> None:
    records = [
        {"event_id": "e1", "user_id": "u1", "event_type": "content_start", "event_time": _now(), "item_id": "i1"},
        {"user_id": "u1", "event_type": "search", "event_time": _now(), "query": "sleep"},
        {"event_id": "e3", "user_id": "u1", "event_type": "content_start", "event_time": _now(), "item_id": "zzz"},
        {"event_id": "e4", "user_id": "u1", "event_type": "app_open", "event_time": "yesterday"},
        {"event_id": "e5", "user_id": "u1", "event_type": "app_open", "event_time": _now(), "colour": "red"},
        {"event_id": "e6", "user_id": "u1", "event_type": "app_open", "event_time": "2018-01-01T00:00:00Z"},
    ]
    response = client.post("/v1/events", json={"records": records})
    assert response.status_code == 200
    doc = response.json()
    assert doc["FailedRecordCount"] == 4
    out = doc["Records"]
    assert out[0] == {"EventId": "e1", "LandingKey": out[0]["LandingKey"]}
    assert len(out[1]["EventId"]) == 36 and out[1]["LandingKey"] == out[0]["LandingKey"]
    assert [r.get("ErrorCode") for r in out] == [
        None,
        None,
        "unknown_item_id",
        "wrong_type",
        "wrong_type",
        "timestamp_before_app_launch",
    ]
    assert "event_time" in out[3]["ErrorMessage"] and "colour" in out[4]["ErrorMessage"]
    zone = LocalLandingZone(home / "landing")
    [landed] = zone.list_files("events/")
    assert landed.key == out[0]["LandingKey"]
    assert datetime.fromisoformat(doc["AcceptedAt"]) <= datetime.now(UTC)
    result = ingest_files(zone, [landed], partition_key_of(landed.key), datetime.now(UTC), {"i1", "i2"})
    assert sorted(result.events["event_id"].to_list()) == sorted(["e1", out[1]["EventId"]])
    assert result.events.filter(pl.col("event_type") == "search")["query"].to_list() == ["sleep"]


def test_each_request_lands_in_its_own_hour_partition_file(client: TestClient, home: Path) -> None:
    for i in range(3):
        record = {"event_id": f"x{i}", "user_id": "u2", "event_type": "app_open", "event_time": _now()}
        assert client.post("/v1/events", json={"records": [record]}).json()["FailedRecordCount"] == 0
    keys = [f.key for f in LocalLandingZone(home / "landing").list_files("events/")]
    assert len(keys) == 3 and keys == sorted(keys)
    assert {partition_key_of(k) for k in keys} == {f"{datetime.now(UTC):%Y-%m-%d-%H}:00"}


def test_rejected_only_batch_writes_nothing(client: TestClient, home: Path) -> None:
    doc = client.post("/v1/events", json={"records": [{"user_id": "u", "event_type": "x", "event_time": _now()}]})
    assert doc.json()["FailedRecordCount"] == 1 and doc.json()["Records"][0]["ErrorCode"] == "unknown_event_type"
    assert not (home / "landing" / "events").exists() or LocalLandingZone(home / "landing").list_files("events/") == []


@pytest.mark.parametrize(
    "body",
    [{"records": []}, {}, {"records": [{}] * 501}, {"records": [], "extra": 1}, {"records": "nope"}],
)
def test_malformed_requests_are_422(client: TestClient, body: dict) -> None:
    response = client.post("/v1/events", json=body)
    assert response.status_code == 422


def test_oversized_body_is_413(client: TestClient) -> None:
    record = {"user_id": "u", "event_type": "search", "event_time": _now(), "query": "q" * 400}
    response = client.post("/v1/events", json={"records": [record] * 3000})
    assert response.status_code == 413


def test_unwritable_landing_zone_is_503_and_nothing_is_acknowledged(home: Path, monkeypatch) -> None:
    blocker = home / "blocked"
    blocker.write_text("a file where the landing directory should be")
    monkeypatch.setenv("RECSYS_LANDING_URL", str(blocker))
    with TestClient(create_app()) as c:
        record = {"user_id": "u", "event_type": "app_open", "event_time": _now()}
        response = c.post("/v1/events", json={"records": [record]})
    assert response.status_code == 503 and "nothing was accepted" in response.json()["detail"]
    assert blocker.read_text() == "a file where the landing directory should be"


def test_events_land_in_an_s3_landing_zone(home: Path, s3_bucket: tuple[str, str], monkeypatch) -> None:
    endpoint, bucket = s3_bucket
    monkeypatch.setenv("RECSYS_LANDING_URL", f"s3://{bucket}/landing")
    monkeypatch.setenv("RECSYS_S3_ENDPOINT_URL", endpoint)
    with TestClient(create_app()) as c:
        record = {"event_id": "s3-1", "user_id": "u", "event_type": "app_open", "event_time": _now()}
        doc = c.post("/v1/events", json={"records": [record]}).json()
    zone = landing_zone_from_url(f"s3://{bucket}/landing")
    [landed] = zone.list_files("events/")
    assert landed.key == doc["Records"][0]["LandingKey"]
    assert pl.read_parquet(zone.read_bytes(landed.key))["event_id"].to_list() == ["s3-1"]
