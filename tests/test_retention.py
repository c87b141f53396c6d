"""Retention per table (config/retention.yaml), applied by the data_retention asset: what is past its days is
deleted (files) or removed (biometric rows), what is not stays byte for byte, and a second pass is a no-op."""

from __future__ import annotations

import io
import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from assets.lifecycle import data_retention
from recsys_platform.ingest.landing import LocalLandingZone
from recsys_platform.lifecycle import apply_retention, load_retention
from resources import LandingZoneResource, PipelineResource
from resources.recommendation_sets import RecommendationSetsResource

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
POLICY = {
    "raw_events": 400,
    "quarantined_events": 90,
    "session_features": 30,
    "realtime_recommendations": 30,
    "biometric_samples": 30,
    "exports": 30,
}


def _hour(days_ago: float) -> datetime:
    return (NOW - timedelta(days=days_ago)).replace(minute=0, second=0, microsecond=0)


def _key(hour: datetime) -> str:
    return f"{hour:%Y-%m-%d-%H}:00"


def _events(hour: datetime) -> list[dict]:
    base = {"user_id": "u1", "event_time": hour.isoformat()}
    return [
        {**base, "event_id": f"{hour:%j}-play", "event_type": "content_start", "item_id": "i1"},
        {**base, "event_id": f"{hour:%j}-bio", "event_type": "biometric", "steps": 100, "heart_rate": 80.0},
    ]


def build(root: Path) -> dict[str, datetime]:
    hours = {"ancient": _hour(500), "old": _hour(100), "month": _hour(40), "recent": _hour(1)}
    zone = LocalLandingZone(root / "landing")
    lake = root / "lake"
    for table in ("raw_events", "quarantined_events", "session_features", "realtime_recommendations"):
        (lake / table).mkdir(parents=True)
    for hour in hours.values():
        rows = _events(hour)
        zone.write_bytes(
            f"events/dt={hour:%Y-%m-%d}/hr={hour:%H}/b1.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode()
        )
        buf = io.BytesIO()
        pl.DataFrame(rows).write_parquet(buf)
        zone.write_bytes(f"events/dt={hour:%Y-%m-%d}/hr={hour:%H}/b2.parquet", buf.getvalue())
        pl.DataFrame(rows).write_parquet(lake / "raw_events" / f"{_key(hour)}.parquet")
        pl.DataFrame({"reason": ["x"], "raw": ["{}"]}).write_parquet(
            lake / "quarantined_events" / f"{_key(hour)}.parquet"
        )
        pl.DataFrame({"user_id": ["u1"]}).write_parquet(lake / "session_features" / f"{_key(hour)}.parquet")
        for run in ("run1abcd", "run2efgh"):  # a file per refresh run: <hour>.<run>.parquet
            pl.DataFrame({"user_id": ["u1"]}).write_parquet(
                lake / "realtime_recommendations" / f"{_key(hour)}.{run}.parquet"
            )
    exports = root / "exports"
    exports.mkdir()
    for name, age in (("old.jsonl", 45), ("new.jsonl", 2)):
        (exports / name).write_text('{"user_id": "u1"}\n')
        stamp = (NOW - timedelta(days=age)).timestamp()
        os.utime(exports / name, (stamp, stamp))
    return hours


def test_retention_deletes_what_is_past_its_days_and_keeps_the_rest(tmp_path: Path) -> None:
    hours = build(tmp_path)
    zone = LocalLandingZone(tmp_path / "landing")
    recent_before = {
        f.key: zone.read_bytes(f.key) for f in zone.list_files("events/") if f"{hours['recent']:%Y-%m-%d}" in f.key
    }
    report = apply_retention(zone, str(tmp_path / "lake"), tmp_path / "exports", POLICY, NOW)
    left = {f.key.split("/")[1][3:] for f in zone.list_files("events/")}
    assert f"{hours['ancient']:%Y-%m-%d}" not in left and len(left) == 3  # only the 500-day-old hour is gone
    lake = tmp_path / "lake"
    raw = {p.stem for p in (lake / "raw_events").glob("*.parquet")}
    assert raw == {_key(hours[h]) for h in ("old", "month", "recent")}
    assert {p.stem for p in (lake / "quarantined_events").glob("*.parquet")} == {
        _key(hours[h]) for h in ("month", "recent")
    }
    assert {p.stem for p in (lake / "session_features").glob("*.parquet")} == {_key(hours["recent"])}
    assert {p.name for p in (lake / "realtime_recommendations").glob("*.parquet")} == {
        f"{_key(hours['recent'])}.{run}.parquet" for run in ("run1abcd", "run2efgh")
    }
    for h in ("old", "month"):  # past 30 days: the biometric rows are gone, the plays stay
        assert pl.read_parquet(lake / "raw_events" / f"{_key(hours[h])}.parquet")["event_type"].to_list() == [
            "content_start"
        ]
    assert pl.read_parquet(lake / "raw_events" / f"{_key(hours['recent'])}.parquet").height == 2
    for f in zone.list_files("events/"):
        data = zone.read_bytes(f.key)
        if f.key in recent_before:
            assert data == recent_before[f.key]  # untouched, byte for byte
        else:
            assert b"biometric" not in (
                data if f.key.endswith(".jsonl") else pl.read_parquet(io.BytesIO(data)).write_csv().encode()
            )
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == ["new.jsonl"]
    assert report.files_deleted == {
        "landing_events": 2,
        "raw_events": 1,
        "quarantined_events": 2,
        "session_features": 3,
        "realtime_recommendations": 6,
        "exports": 1,
    }
    # biometric rows of the 100- and 40-day-old hours: 2 landing files + 1 lake partition each
    assert report.rows_removed == {"biometric_samples": 6}
    again = apply_retention(zone, str(tmp_path / "lake"), tmp_path / "exports", POLICY, NOW)
    assert again.files_deleted == {} and again.rows_removed == {}


def test_the_policy_file_is_checked(tmp_path: Path) -> None:
    assert load_retention() == POLICY  # the shipped config/retention.yaml
    bad = tmp_path / "r.yaml"
    bad.write_text("raw_event: 10\n")
    with pytest.raises(ValueError, match="unknown table"):
        load_retention(bad)
    bad.write_text("raw_events: 0\n")
    with pytest.raises(ValueError, match="whole number of days"):
        load_retention(bad)


def test_the_asset_applies_the_policy_and_reports_it(tmp_path: Path) -> None:
    build(tmp_path)
    resources = {
        "landing": LandingZoneResource(url=str(tmp_path / "landing")),
        "pipeline": PipelineResource(lake_url=str(tmp_path / "lake"), catalog_path=str(tmp_path / "c.duckdb")),
        "set_config": RecommendationSetsResource(config_path="unused.yaml", exports_dir=str(tmp_path / "exports")),
    }
    result = dg.materialize([data_retention], resources=resources)
    meta = result.asset_materializations_for_node("data_retention")[0].metadata
    assert meta["retention_days"].value == POLICY
    # the real clock: the fixture's hours are 1-500 days before 2026-12-01, so at least the 500-day-old one goes
    assert meta["files_deleted"].value["raw_events"] >= 1 and time.time() > NOW.timestamp() - 86400
