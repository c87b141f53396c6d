"""`recsys forget-user` / DELETE /v1/users/{id}: the user is removed from every store the platform writes (landing
zone, lake, exports, push outbox, online store slots, push queue), others are kept, and a scan of every store
finds nothing of the user afterwards. Run on the embedded stores and on Redis."""

from __future__ import annotations

import io
import json
import sqlite3
import uuid
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest
import redis
from fastapi.testclient import TestClient

from recsys_platform import schemas
from recsys_platform.config import Settings
from recsys_platform.ingest.landing import LocalLandingZone
from recsys_platform.lifecycle import AUDIT_KEY, forget_user, user_digest
from recsys_platform.push import open_push_queue
from recsys_platform.push.queue import PushMessage
from recsys_platform.serve import deployment
from recsys_platform.serve.api import create_app
from recsys_platform.serve.online_store import open_online_store

GONE, KEPT = "forget-me-42", "keep-me-7"


def _event(user: str, n: int) -> dict:
    return {"event_id": f"{user}-{n}", "user_id": user, "event_type": "content_start", "item_id": "i1",
            "event_time": "2026-03-02T13:50:00+00:00", "session_id": "s1"}  # fmt: skip


def _parquet(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_parquet(buf)
    return buf.getvalue()


def build_home(settings: Settings) -> None:
    """A home holding both users in every kind of place the platform writes."""
    zone = LocalLandingZone(settings.landing_url)
    both = [_event(GONE, 1), _event(KEPT, 2), _event(GONE, 3)]
    zone.write_bytes("events/dt=2026-03-02/hr=13/a.jsonl", b"".join(json.dumps(e).encode() + b"\n" for e in both))
    zone.write_bytes("events/dt=2026-03-02/hr=13/b.parquet", _parquet(pl.DataFrame([_event(GONE, 4)])))
    zone.write_bytes("events/dt=2026-03-02/hr=14/c.parquet", _parquet(pl.DataFrame([_event(KEPT, 5)])))
    refused = pl.DataFrame(
        {"reason": ["missing_item_id"] * 2, "raw": [json.dumps({"uid": GONE}), json.dumps({"uid": KEPT})]}
    )
    zone.write_bytes("imports/imp1/refused.parquet", _parquet(refused))
    times = {"earliest_event_time": "2026-03-01T00:00:00+00:00", "latest_event_time": "2026-03-02T00:00:00+00:00"}
    manifest = {
        **times,
        **{"import_id": "imp1", "dataset": "x", "source": "x", "status": "landed"},
        **{"imported_at": "2026-03-02T13:00:00+00:00", "partition_key": "2026-03-02-13:00"},
        **{"rows": {}, "refused_by_reason": {}, "events": 0, "items": 0, "users": 0},
        **{"event_files": [], "table_files": [], "user_column": "uid"},
    }
    zone.write_bytes("imports/imp1/manifest.json", json.dumps(manifest).encode())
    lake = Path(settings.lake_url)
    (lake / "raw_events").mkdir(parents=True)
    pl.DataFrame([_event(GONE, 1), _event(KEPT, 2)]).write_parquet(lake / "raw_events" / "2026-03-02-13:00.parquet")
    pl.DataFrame([_event(GONE, 4)]).write_parquet(lake / "raw_events" / "2026-03-02-14:00.parquet")
    pl.DataFrame({"user_id": [GONE, KEPT], "score": [1.0, 2.0]}).write_parquet(lake / "recommendations.parquet")
    quarantined = pl.DataFrame(
        {"reason": ["invalid_duration"] * 2, "raw": [json.dumps(_event(GONE, 9)), json.dumps(_event(KEPT, 9))]}
    )
    quarantined.write_parquet(lake / "quarantined_events.parquet")  # fmt: skip
    pl.DataFrame({"item_id": ["i1"], "title": ["Sleep"]}).write_parquet(lake / "items.parquet")
    settings.exports_dir.mkdir(parents=True, exist_ok=True)
    lines = [{"user_id": GONE, "items": ["i1"]}, {"user_id": KEPT, "items": ["i1"]}]
    (settings.exports_dir / "sets.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (settings.home / "push_outbox.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    recs = json.dumps({"items": [{"item_id": "i1", "score": 1.0}]})
    payload = {
        "recs": {GONE: recs, KEPT: recs},
        "user_features": {GONE: "{}", KEPT: "{}"},
        "popular": {"__global__": recs},
    }
    with open_online_store(settings.online_store_url) as store:
        deployment.deploy(store, "v1", "s1", payload)
        deployment.deploy(store, "v2", "s2", payload)  # both slots hold the user
    with open_push_queue(settings.push_queue_url) as queue:
        for user in (GONE, KEPT):
            for day in ("2026-03-01", "2026-03-02", "2026-03-03"):
                queue.enqueue(PushMessage(user, "i1", "evening", f"push:{user}:{day}"))
        leased = [d for d in queue.receive("w1", 10) if d.message.user_id == GONE]
        queue.nack(leased[0], "boom")  # one leased, one retried, one still queued


def leftovers(settings: Settings, user: str) -> list[str]:
    """Every place under the home, in the online store and in the push queue that still names `user`."""
    found = []
    for path in sorted(settings.home.rglob("*")):
        if not path.is_file():
            continue
        if path.suffix == ".parquet":
            frame = pl.read_parquet(path)
            text = [c for c, t in frame.schema.items() if t == pl.String]
            if (
                frame.select(pl.any_horizontal([pl.col(c).str.contains(user, literal=True) for c in text]).any()).item()
                if text
                else False
            ):
                found.append(str(path))
        elif path.suffix == ".sqlite":
            con = sqlite3.connect(path)
            for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
                if any(user in str(row) for row in con.execute(f'SELECT * FROM "{table}"')):
                    found.append(f"{path}:{table}")
            con.close()
        elif user.encode() in path.read_bytes():
            found.append(str(path))
    for url in (settings.online_store_url, settings.push_queue_url):
        if url.startswith("redis://"):
            prefix = url.split("prefix=")[1]
            client = redis.Redis.from_url(url.split("?")[0], decode_responses=True)
            for key in client.scan_iter(f"{prefix}*"):
                kind = client.type(key)
                content = {
                    "hash": client.hgetall,
                    "stream": client.xrange,
                    "string": client.get,
                    "set": client.smembers,
                }[kind](key)
                if user in key or user in str(content):
                    found.append(f"redis:{key}")  # fmt: skip
    return found


@pytest.fixture(params=["embedded", "redis"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    base = replace(
        Settings.from_env(),
        home=tmp_path,
        landing_url=str(tmp_path / "landing"),
        lake_url=str(tmp_path / "lake"),
        online_store_url=f"sqlite:///{tmp_path}/online_store.sqlite",
        push_queue_url=f"sqlite:///{tmp_path}/push_queue.sqlite",
    )
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        base = replace(
            base,
            online_store_url=f"{url}?prefix=forget-{uuid.uuid4().hex[:8]}",
            push_queue_url=f"{url}?prefix=forgetq-{uuid.uuid4().hex[:8]}",
        )
    return base


def test_forget_user_leaves_nothing_of_the_user_anywhere_and_keeps_everyone_else(settings: Settings) -> None:
    build_home(settings)
    assert len(leftovers(settings, GONE)) >= 10  # the scan sees the user everywhere first
    before_kept = leftovers(settings, KEPT)
    report = forget_user(GONE, settings)
    assert leftovers(settings, GONE) == []
    assert leftovers(settings, KEPT) == before_kept
    assert report.removed["landing:events/dt=2026-03-02/hr=13/a.jsonl"] == 2
    assert report.removed["landing:events/dt=2026-03-02/hr=13/b.parquet"] == 1
    assert report.removed["landing:imports/imp1/refused.parquet"] == 1  # by the import's own user column
    assert report.removed["lake:quarantined_events.parquet"] == 1
    assert report.removed["online_store"] == 4 and report.removed["push_queue"] == 3
    assert not (Path(settings.landing_url) / "events/dt=2026-03-02/hr=13/b.parquet").exists()  # emptied: deleted
    emptied = pl.read_parquet(Path(settings.lake_url) / "raw_events" / "2026-03-02-14:00.parquet")
    assert emptied.height == 0 and "user_id" in emptied.columns  # an emptied table keeps its columns
    with open_online_store(settings.online_store_url) as store:
        assert store.read("recs", [GONE, KEPT]).values == {GONE: None, KEPT: store.read("recs", [KEPT]).values[KEPT]}
    with open_push_queue(settings.push_queue_url) as queue:
        assert queue.enqueue(PushMessage(GONE, "i1", "evening", f"push:{GONE}:2026-03-01"))  # dedup keys are gone
    [audit] = (Path(settings.lake_url) / AUDIT_KEY).read_text().splitlines()
    assert json.loads(audit)["user_sha256"] == user_digest(GONE) and GONE not in audit
    again = forget_user(GONE, settings)  # idempotent, and audited again
    assert again.removed == {"push_queue": 1}  # only the message enqueued above
    assert len((Path(settings.lake_url) / AUDIT_KEY).read_text().splitlines()) == 2
    if settings.online_store_url.startswith("redis"):
        with open_online_store(settings.online_store_url) as store:
            store.drop_all()
        with open_push_queue(settings.push_queue_url) as queue:
            queue.drop()


def test_the_admin_endpoint_forgets_and_refuses_without_the_key(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    for name in ("RECSYS_LANDING_URL", "RECSYS_LAKE_URL", "RECSYS_ONLINE_STORE_URL", "RECSYS_PUSH_QUEUE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RECSYS_ADMIN_API_KEY", "admin")
    settings = Settings.from_env()
    build_home(settings)
    with TestClient(create_app()) as c:
        assert c.get(f"/v1/users/{GONE}/recommendations").status_code == 200  # a served-log row, still buffered
        assert c.delete(f"/v1/users/{GONE}").status_code == 401
        assert c.delete("/v1/users/bad id", headers={"Authorization": "Bearer admin"}).status_code == 422
        response = c.delete(f"/v1/users/{GONE}", headers={"Authorization": "Bearer admin"})
        assert response.status_code == 200 and response.json()["user_sha256"] == user_digest(GONE)
        assert response.json()["removed"]["online_store"] == 4
    assert leftovers(settings, GONE) == []  # the buffered served-log row was dropped, not flushed after
    with TestClient(create_app()) as c:
        assert c.get(f"/v1/users/{GONE}/recommendations").json()["source"] == "popularity_fallback"


def test_ids_no_path_accepts_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=schemas.ID_RULE.split(" ")[0]):
        forget_user("../../etc", replace(Settings.from_env(), home=tmp_path))
