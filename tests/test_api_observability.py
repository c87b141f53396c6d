"""The serving API's /metrics (Prometheus text format, parsed back) and its request ids and JSON access log."""

from __future__ import annotations

import gc
import io
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from recsys_platform.serve import deployment
from recsys_platform.serve.api import create_app
from recsys_platform.serve.observability import BufferedLineHandler
from recsys_platform.serve.online_store import open_online_store


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_experiments):
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    for name in ("RECSYS_LANDING_URL", "RECSYS_LAKE_URL", "RECSYS_ONLINE_STORE_URL", "RECSYS_READ_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RECSYS_ADMIN_API_KEY", "admin")
    monkeypatch.delenv("RECSYS_INGEST_API_KEY", raising=False)
    (tmp_path / "lake").mkdir()
    pl.DataFrame({"item_id": ["i1"]}).write_parquet(tmp_path / "lake" / "items.parquet")
    popular = json.dumps({"items": [{"item_id": "i1", "score": 1.0}]})
    with open_online_store(f"sqlite:///{tmp_path / 'online_store.sqlite'}") as store:
        deployment.deploy(store, "7", "s7", {"recs": {"u1": popular}, "popular": {"__global__": popular}})
    with TestClient(create_app()) as c:
        yield c


def samples(client: TestClient) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_count_requests_served_lists_events_and_key_failures(client: TestClient) -> None:
    for user in ("u1", "u1", "stranger"):
        assert client.get(f"/v1/users/{user}/recommendations").status_code == 200
    assert client.get("/v1/users/bad id/recommendations").status_code == 422
    now = datetime.now(UTC).isoformat()
    records = [
        {"user_id": "u1", "event_type": "app_open", "event_time": now},
        {"user_id": "u1", "event_type": "teleport", "event_time": now},
        {"user_id": "u 1", "event_type": "app_open", "event_time": now},
    ]
    assert client.post("/v1/events", json={"records": records}).json()["FailedRecordCount"] == 2
    assert client.get("/v1/deployment", headers={"X-API-Key": "wrong"}).status_code == 401
    m = samples(client)
    route = "/v1/users/{user_id}/recommendations"
    ok = (("method", "GET"), ("route", route), ("status", "200"))
    assert m[("recsys_http_requests_total", ok)] == 3
    assert m[("recsys_http_requests_total", (("method", "GET"), ("route", route), ("status", "422")))] == 1
    assert m[("recsys_http_request_duration_seconds_count", (("route", route),))] == 4
    assert m[("recsys_recommendations_served_total", (("source", "personalized"),))] == 2
    assert m[("recsys_recommendations_served_total", (("source", "popularity_fallback"),))] == 1
    assert m[("recsys_events_total", (("outcome", "accepted"), ("reason", "")))] == 1
    assert m[("recsys_events_total", (("outcome", "rejected"), ("reason", "unknown_event_type")))] == 1
    assert m[("recsys_events_total", (("outcome", "rejected"), ("reason", "invalid_identifier")))] == 1
    assert m[("recsys_auth_failures_total", (("scope", "admin"),))] == 1
    assert m[("recsys_serving_info", (("model_version", "7"), ("slot", "blue")))] == 1
    assert m[("recsys_store_up", ())] == 1


def test_requests_carry_an_id_and_log_one_json_line(client: TestClient, caplog) -> None:
    with caplog.at_level(logging.INFO, "recsys.access"):
        given = client.get("/v1/users/u1/recommendations", headers={"X-Request-ID": "trace-123"})
        fresh = client.get("/v1/users/u1/recommendations", headers={"X-Request-ID": "bad id <script>"})
    assert given.headers["x-request-id"] == "trace-123"
    assert len(fresh.headers["x-request-id"]) == 32  # a malformed id is replaced, not echoed
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "recsys.access"]
    assert [(line["request_id"], line["route"], line["status"]) for line in lines] == [
        ("trace-123", "/v1/users/{user_id}/recommendations", 200),
        (fresh.headers["x-request-id"], "/v1/users/{user_id}/recommendations", 200),
    ]
    assert lines[0]["method"] == "GET" and lines[0]["ms"] >= 0 and "ts" in lines[0]


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("recsys.access", logging.INFO, __file__, 0, message, None, None)


def test_access_lines_are_written_in_batches_and_none_is_lost() -> None:
    stream = io.StringIO()
    handler = BufferedLineHandler(stream, max_lines=3, max_seconds=60)
    for n in range(2):
        handler.handle(_record(f'{{"n": {n}}}'))
    assert stream.getvalue() == ""  # waiting for a batch
    handler.handle(_record('{"n": 2}'))
    assert stream.getvalue() == '{"n": 0}\n{"n": 1}\n{"n": 2}\n'
    handler.handle(_record('{"n": 3}'))
    handler.close()  # what logging.shutdown does at exit
    assert [json.loads(x)["n"] for x in stream.getvalue().splitlines()] == [0, 1, 2, 3]


def test_a_quiet_api_still_writes_its_access_lines_within_the_interval() -> None:
    stream = io.StringIO()
    handler = BufferedLineHandler(stream, max_lines=1000, max_seconds=0.05)
    handler.handle(_record('{"n": 0}'))
    deadline = time.monotonic() + 5
    while not stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stream.getvalue() == '{"n": 0}\n'  # written by the flusher thread, no second request needed
    handler.close()


def test_the_configured_access_log_gets_the_same_lines_without_log_records(client: TestClient, monkeypatch) -> None:
    """`recsys serve`'s access log (configure_access_log: one BufferedLineHandler) takes each line as it is; any
    other setup (another handler, a filter) gets LogRecords as before."""
    from recsys_platform.serve.observability import access_logger, direct_handler

    stream = io.StringIO()
    handler = BufferedLineHandler(stream, max_lines=1000, max_seconds=60)
    monkeypatch.setattr(access_logger, "handlers", [handler])
    monkeypatch.setattr(access_logger, "level", logging.INFO)
    assert direct_handler() is handler
    built = []
    monkeypatch.setattr(access_logger, "makeRecord", lambda *a: built.append(a) or _record(a[4]))
    client.get("/v1/users/u1/recommendations", headers={"X-Request-ID": "direct-1"})
    client.get("/v1/users/u1/recommendations?limit=0", headers={"X-Request-ID": "direct-2"})  # FastAPI's 422
    handler.flush()
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert [(x["request_id"], x["status"]) for x in lines] == [("direct-1", 200), ("direct-2", 422)]
    assert built == []
    handler.addFilter(lambda record: True)  # a filter needs the record: back to makeRecord + handle
    assert direct_handler() is None
    client.get("/v1/users/u1/recommendations", headers={"X-Request-ID": "direct-3"})
    handler.flush()
    assert json.loads(stream.getvalue().splitlines()[-1])["request_id"] == "direct-3" and len(built) == 1


def test_the_started_app_freezes_its_heap_so_full_collections_stay_short(client: TestClient) -> None:
    # Inside the lifespan the startup objects are frozen: a full collection no longer walks them (under load it
    # stopped each worker's event loop for ~150 ms, see api.freeze_startup_heap), yet requests still answer.
    assert gc.get_freeze_count() > 100_000
    assert client.get("/v1/users/u1/recommendations").json()["items"][0]["item_id"] == "i1"


def test_leaving_the_app_unfreezes_the_heap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_experiments) -> None:
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    monkeypatch.delenv("RECSYS_ONLINE_STORE_URL", raising=False)
    open_online_store(f"sqlite:///{tmp_path / 'online_store.sqlite'}").close()
    with TestClient(create_app()):
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
