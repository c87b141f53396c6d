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


def test_edge_times_bad_ids_and_non_objects_are_rejected_per_record_never_a_5xx(client: TestClient, home: Path) -> None:
    good = {"event_id": "ok1", "user_id": "u1", "event_type": "content_start", "event_time": _now(), "item_id": "i1"}
    records = [
        good,
        {"user_id": "u1", "event_type": "app_open", "event_time": "9999-12-31T23:59:59-14:00"},
        {"user_id": "u1", "event_type": "app_open", "event_time": "0001-01-01T00:00:00+14:00"},
        *({"user_id": bad, "event_type": "app_open", "event_time": _now()} for bad in BAD_IDS),
        {"user_id": "u1", "event_type": "content_start", "event_time": _now(), "item_id": "i 1"},
        ["not", "an", "object"],
        "text",
        None,
    ]
    response = client.post("/v1/events", json={"records": records})
    assert response.status_code == 200, response.text
    out = response.json()["Records"]
    assert len(out) == len(records) and response.json()["FailedRecordCount"] == len(records) - 1
    assert out[0] == {"EventId": "ok1", "LandingKey": out[0]["LandingKey"]}
    assert out[1]["ErrorCode"] == "wrong_type" and "years 1-9999" in out[1]["ErrorMessage"]
    assert out[2]["ErrorCode"] in ("wrong_type", "timestamp_before_app_launch")
    ids = out[3 : 3 + len(BAD_IDS) + 1]
    assert [r["ErrorCode"] for r in ids] == ["invalid_identifier"] * (len(BAD_IDS) + 1)
    assert "user_id" in ids[0]["ErrorMessage"] and "item_id" in ids[-1]["ErrorMessage"]
    assert [r["ErrorCode"] for r in out[-3:]] == ["wrong_type"] * 3
    assert "expected a JSON object, got list" in out[-3]["ErrorMessage"]
    [landed] = LocalLandingZone(home / "landing").list_files("events/")
    result = ingest_files(
        LocalLandingZone(home / "landing"), [landed], partition_key_of(landed.key), datetime.now(UTC), {"i1", "i2"}
    )
    assert result.events["event_id"].to_list() == ["ok1"]


BAD_IDS = ["../../etc/passwd", "' OR 1=1 --", "\U0001f600", "a b", "nul\x00", "x" * 200, "x" * 65]


def test_the_schema_still_documents_a_record_as_an_event(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    name = body["$ref"].rsplit("/", 1)[-1]
    records = schema["components"]["schemas"][name]["properties"]["records"]
    assert set(records["items"]["properties"]) >= {"user_id", "event_type", "event_time", "item_id"}


def test_concurrent_requests_share_landing_files(home: Path) -> None:
    import asyncio

    import httpx

    async def post_many() -> list[dict]:
        app = create_app()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            answers = await asyncio.gather(
                *[
                    c.post(
                        "/v1/events",
                        json={"records": [{"user_id": f"u{i}", "event_type": "app_open", "event_time": _now()}]},
                    )
                    for i in range(40)
                ]
            )
        return [a.json() for a in answers]

    answers = asyncio.run(post_many())
    assert all(a["FailedRecordCount"] == 0 for a in answers)
    files = LocalLandingZone(home / "landing").list_files("events/")
    assert 1 <= len(files) <= 4  # 40 requests within one 50 ms linger or a few, not 40 files
    assert sum(pl.read_parquet(LocalLandingZone(home / "landing").read_bytes(f.key)).height for f in files) == 40
