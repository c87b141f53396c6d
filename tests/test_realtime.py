"""Near-real-time building blocks: landing cursor, event collector, session windows, context layer, tree model."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys_platform import schemas
from recsys_platform.ingest.ingestion import ingest_files
from recsys_platform.ingest.landing import LandedFile, LocalLandingZone, event_file_key, new_batch_id, partition_key_of
from recsys_platform.realtime.collector import EventCollector
from recsys_platform.realtime.context import ContextWeights, apply_context
from recsys_platform.realtime.cursor import LandingCursor, advance, new_event_files
from recsys_platform.realtime.sessions import current_window, keyword_vector, session_features
from recsys_platform.realtime.tree_model import TreeEnsemble

NOW = datetime(2026, 10, 1, 12, 30, tzinfo=UTC)


def _key(at: datetime) -> str:
    return event_file_key(at, ".parquet", new_batch_id(at))


# --- landing cursor ---------------------------------------------------------------------


def test_cursor_lists_only_new_files_and_keeps_recent_keys() -> None:
    old, recent = _key(NOW - timedelta(minutes=5)), _key(NOW - timedelta(seconds=5))
    files = [LandedFile(old, 10), LandedFile(recent, 10)]
    new, cur = advance(LandingCursor(), files, NOW, grace_seconds=30)
    assert [f.key for f in new] == [old, recent]
    assert cur.after == old  # old enough: nothing named before it can still appear
    assert cur.seen == frozenset({recent})
    again, cur2 = advance(cur, [LandedFile(recent, 10)], NOW + timedelta(seconds=1), grace_seconds=30)
    assert again == [] and cur2 == cur


def test_cursor_picks_up_a_file_named_earlier_but_completed_later() -> None:
    first, second = _key(NOW - timedelta(seconds=3)), _key(NOW - timedelta(seconds=1))
    _, cur = advance(LandingCursor(), [LandedFile(second, 1)], NOW, grace_seconds=30)
    # The slower producer's file (named first) becomes visible after the cursor saw `second`.
    new, cur = advance(cur, [LandedFile(first, 1), LandedFile(second, 1)], NOW + timedelta(seconds=1), 30)
    assert [f.key for f in new] == [first]
    # Once both are older than the grace period the low-water mark moves past them and `seen` empties.
    _, cur = advance(cur, [LandedFile(first, 1), LandedFile(second, 1)], NOW + timedelta(minutes=2), 30)
    assert cur.after == second and cur.seen == frozenset()


def test_cursor_round_trips_and_accepts_a_bare_key() -> None:
    cur = LandingCursor(after="events/dt=2026-10-01/hr=12/a.parquet", seen=frozenset({"b", "c"}))
    assert LandingCursor.from_json(cur.to_json()) == cur
    assert LandingCursor.from_json("events/x.parquet") == LandingCursor(after="events/x.parquet")
    assert LandingCursor.from_json(None) == LandingCursor()


def test_new_event_files_groups_by_partition_and_starts_at_previous_hour(tmp_path: Path) -> None:
    zone = LocalLandingZone(tmp_path)
    keys = [_key(NOW - timedelta(hours=3)), _key(NOW - timedelta(minutes=50)), _key(NOW - timedelta(minutes=20))]
    keys.append(_key(NOW - timedelta(minutes=19)))
    for k in keys:
        zone.write_bytes(k, b"x")
    zone.write_bytes("events/dt=2026-10-01/hr=12/notes.txt", b"not an event file")
    batches, cur = new_event_files(zone, LandingCursor(), max_files=100, now=NOW)
    # The 3-hour-old file predates the first tick's lookback (the batch ingestion's job).
    assert [(b.partition_key, b.files) for b in batches] == [("2026-10-01-11:00", 1), ("2026-10-01-12:00", 2)]
    assert batches[1].first_key == keys[2] and batches[1].last_key == keys[3]
    assert new_event_files(zone, cur, max_files=100, now=NOW)[0] == []
    late = _key(NOW - timedelta(seconds=1))
    zone.write_bytes(late, b"x")
    batches, _ = new_event_files(zone, cur, max_files=100, now=NOW)
    assert [(b.partition_key, b.first_key) for b in batches] == [(partition_key_of(late), late)]


def test_new_event_files_caps_a_tick_and_hands_out_the_rest_later(tmp_path: Path) -> None:
    zone = LocalLandingZone(tmp_path)
    keys = [_key(NOW - timedelta(minutes=10, seconds=i)) for i in range(5)]
    for k in keys:
        zone.write_bytes(k, b"x")
    first, cur = new_event_files(zone, LandingCursor(), max_files=3, now=NOW)
    second, cur = new_event_files(zone, cur, max_files=3, now=NOW)
    assert sum(b.files for b in first) == 3 and sum(b.files for b in second) == 2
    assert new_event_files(zone, cur, max_files=3, now=NOW)[0] == []


# --- collector ----------------------------------------------------------------------------


def _record(**kw: object) -> dict:
    base = {"user_id": "u1", "event_type": "app_open", "event_time": datetime.now(UTC) - timedelta(seconds=1)}
    return {**base, **kw}


def test_collector_writes_only_accepted_records_with_reasons(tmp_path: Path) -> None:
    zone = LocalLandingZone(tmp_path)
    collector = EventCollector(zone, known_items=lambda: {"i1"})
    records = [
        _record(event_id="e1"),
        _record(event_id="e2", event_type="teleport"),
        _record(event_id="e3", event_type="content_start", item_id="nope"),
        _record(event_type="content_complete", item_id="i1", seconds_listened=60.0),
        _record(event_id="e5", event_type="biometric", heart_rate=400.0),
        _record(event_id="e6", event_time=datetime.now(UTC) + timedelta(days=1)),
    ]
    result = collector.put(records)
    codes = [r.error_code for r in result.records]
    assert codes == [None, "unknown_event_type", "unknown_item_id", None, "invalid_biometric", "timestamp_in_future"]
    assert result.failed_count == 4
    assigned = result.records[3].event_id
    assert assigned and len(assigned) == 36  # uuid4 assigned by the server
    [landed] = zone.list_files("events/")
    assert result.records[0].landing_key == landed.key and result.records[1].landing_key is None
    ingested = ingest_files(zone, [landed], partition_key_of(landed.key), datetime.now(UTC), {"i1"})
    assert sorted(ingested.events["event_id"].to_list()) == sorted(["e1", assigned])
    assert ingested.stats["quarantined"] == 0


def test_collector_writes_nothing_when_everything_is_rejected(tmp_path: Path) -> None:
    zone = LocalLandingZone(tmp_path)
    result = EventCollector(zone).put([_record(event_type="nope"), _record(user_id=None)])
    assert result.failed_count == 2 and zone.list_files("events/") == []
    assert [r.error_code for r in result.records] == ["unknown_event_type", "missing_required_field"]


def test_collector_group_commits_concurrent_requests_into_one_file(tmp_path: Path) -> None:
    zone = LocalLandingZone(tmp_path)
    collector = EventCollector(zone, linger_seconds=0.05)

    async def run() -> list:
        results = await asyncio.gather(
            *[collector.put_async([_record(event_id=f"e{i}-{j}") for j in range(3)]) for i in range(5)]
        )
        await collector.aclose()
        return results

    results = asyncio.run(run())
    files = zone.list_files("events/")
    assert len(files) == 1 and collector.files_written == 1
    assert {r.records[0].landing_key for r in results} == {files[0].key}
    assert pl.read_parquet(zone.read_bytes(files[0].key)).height == 15


# --- session windows and context ----------------------------------------------------------


def _events(rows: list[dict]) -> pl.DataFrame:
    return schemas.conform(pl.DataFrame(rows), schemas.RAW_EVENT_SCHEMA)


ITEMS = pl.DataFrame(
    {"item_id": ["s1", "s2", "m1", "f1"], "content_type": ["sleep_story", "soundscape", "movement", "focus"]}
)
USERS = pl.DataFrame({"user_id": ["a", "b"], "utc_offset_hours": [0, 9]})


def test_current_window_covers_the_five_to_ten_minutes_before_the_latest_event() -> None:
    start, end = current_window(datetime(2026, 10, 1, 22, 7, 30, tzinfo=UTC))
    assert (start, end) == (datetime(2026, 10, 1, 22, 0, tzinfo=UTC), datetime(2026, 10, 1, 22, 10, tzinfo=UTC))


def test_session_features_from_sliding_windows() -> None:
    t = datetime(2026, 10, 1, 22, 7, 30, tzinfo=UTC)  # 22:07 UTC: night for user a, 07:07 for user b
    rows = [
        {
            "event_id": "old",
            "user_id": "a",
            "event_type": "content_start",
            "event_time": t - timedelta(minutes=9),
            "item_id": "f1",
        },  # noqa: E501
        {
            "event_id": "1",
            "user_id": "a",
            "event_type": "content_start",
            "event_time": t - timedelta(minutes=6),
            "item_id": "s1",
        },  # noqa: E501
        {
            "event_id": "2",
            "user_id": "a",
            "event_type": "content_exit",
            "event_time": t - timedelta(minutes=6),
            "item_id": "s1",
            "seconds_listened": 5.0,
        },  # noqa: E501
        {
            "event_id": "3",
            "user_id": "a",
            "event_type": "content_start",
            "event_time": t - timedelta(minutes=5),
            "item_id": "s2",
        },  # noqa: E501
        {
            "event_id": "4",
            "user_id": "a",
            "event_type": "content_complete",
            "event_time": t - timedelta(minutes=1),
            "item_id": "s2",
        },  # noqa: E501
        {"event_id": "5", "user_id": "a", "event_type": "search", "event_time": t, "query": "sleep story rain"},
        {
            "event_id": "6",
            "user_id": "b",
            "event_type": "biometric",
            "event_time": t - timedelta(minutes=4),
            "steps": 100,
            "heart_rate": 70.0,
        },  # noqa: E501
        {
            "event_id": "7",
            "user_id": "b",
            "event_type": "biometric",
            "event_time": t - timedelta(minutes=2),
            "steps": 300,
            "heart_rate": 80.0,
        },  # noqa: E501
        {"event_id": "8", "user_id": "b", "event_type": "biometric", "event_time": t, "steps": 500, "heart_rate": 90.0},
        {"event_id": "8", "user_id": "b", "event_type": "biometric", "event_time": t, "steps": 500, "heart_rate": 90.0},
    ]
    df = session_features(_events(rows), USERS, ITEMS, watermark_minutes=10)
    a, b = df.row(0, named=True), df.row(1, named=True)
    assert a["window_start"] == datetime(2026, 10, 1, 22, 0, tzinfo=UTC)
    assert a["window_end"] == datetime(2026, 10, 1, 22, 10, tzinfo=UTC)
    # The focus start at 21:58:30 is before the current window.
    assert (a["sess_starts"], a["sess_completes"], a["sess_sleep_starts"], a["sess_sleep_bounces"]) == (2, 1, 2, 1)
    assert a["sess_sleep_bounce_rate"] == pytest.approx(0.5)
    assert a["sess_completed_items"] == ["s2"] and a["search_terms"] == ["sleep story rain"]
    assert a["search_sleep"] == pytest.approx(1.0) and a["is_night"] and a["local_hour"] == 22
    assert b["steps_trend"] == pytest.approx(100.0) and b["heart_rate_trend"] == pytest.approx(5.0)
    assert b["sess_events"] == 3 and not b["is_night"] and b["sess_sleep_bounce_rate"] is None


def test_session_features_ignore_events_behind_the_watermark() -> None:
    t = datetime(2026, 10, 1, 22, 7, tzinfo=UTC)
    rows = [
        {
            "event_id": "late",
            "user_id": "a",
            "event_type": "search",
            "event_time": t - timedelta(minutes=40),
            "query": "yoga",
        },  # noqa: E501
        {"event_id": "now", "user_id": "b", "event_type": "app_open", "event_time": t},
    ]
    df = session_features(_events(rows), USERS, ITEMS, watermark_minutes=10)
    assert df["user_id"].to_list() == ["b"]
    both = session_features(_events(rows), USERS, ITEMS, watermark_minutes=60)
    assert both["user_id"].to_list() == ["a", "b"]


def test_keyword_vector() -> None:
    assert keyword_vector("Yoga STRETCH before sleep") == pytest.approx(
        {"sleep": 1 / 3, "movement": 2 / 3, "focus": 0, "meditation": 0, "music": 0, "kids": 0}
    )
    assert sum(keyword_vector("nothing relevant").values()) == 0


def _scored() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": ["a"] * 4,
            "item_id": ["s1", "s2", "m1", "f1"],
            "content_type": ["sleep_story", "soundscape", "movement", "focus"],
            "score": [0.0, 0.1, 0.2, 0.3],
        }
    )


def _session(**kw: object) -> pl.DataFrame:
    base = {
        "user_id": "a",
        "is_night": False,
        "sess_sleep_bounce_rate": None,
        "steps_trend": None,
        "heart_rate_trend": None,
        **{f"search_{t}": 0.0 for t in ("sleep", "movement", "focus", "meditation", "music", "kids")},
    }
    return pl.DataFrame([{**base, **kw}])


def _order(frame: pl.DataFrame) -> list[str]:
    return frame.sort("score_context", descending=True)["item_id"].to_list()


def test_context_layer_behaviours() -> None:
    assert _order(apply_context(_scored(), _session())) == ["f1", "m1", "s2", "s1"]
    night_sleep = apply_context(_scored(), _session(is_night=True, search_sleep=1.0))
    day_sleep = apply_context(_scored(), _session(is_night=False, search_sleep=1.0))
    # z-scores are [-1.34, -0.45, 0.45, 1.34]; a sleep search adds 1.0 to sleep items, 2.5 at night.
    assert _order(day_sleep) == ["f1", "s2", "m1", "s1"]
    assert _order(night_sleep) == ["s2", "f1", "s1", "m1"]
    boost = dict(zip(night_sleep["item_id"], night_sleep["context_boost"], strict=True))
    assert boost["s1"] == pytest.approx(ContextWeights().search + ContextWeights().night_sleep)
    assert dict(zip(day_sleep["item_id"], day_sleep["context_boost"], strict=True))["s1"] == pytest.approx(1.0)
    moving = apply_context(_scored(), _session(steps_trend=100.0, heart_rate_trend=2.0))
    assert _order(moving)[0] == "m1"
    # Rising steps with a falling heart rate is not an intent to move.
    steps_only = apply_context(_scored(), _session(steps_trend=100.0, heart_rate_trend=-1.0))
    assert _order(steps_only) == ["f1", "m1", "s2", "s1"]
    bouncing = apply_context(_scored(), _session(sess_sleep_bounce_rate=1.0))
    assert dict(zip(bouncing["item_id"], bouncing["context_boost"], strict=True))["s1"] == pytest.approx(-1.0)


# --- numpy tree model ------------------------------------------------------------------------


def test_tree_model_matches_lightgbm_including_categoricals_and_missing(tmp_path: Path) -> None:
    import lightgbm as lgb

    rng = np.random.default_rng(7)
    n = 3000
    x = rng.normal(size=(n, 5))
    x[:, 3] = rng.integers(0, 7, size=n)  # categorical
    x[rng.random(x.shape) < 0.1] = np.nan
    y = np.nan_to_num(x[:, 0]) * 2 + (np.nan_to_num(x[:, 3]) % 3 == 1) + rng.normal(0, 0.1, size=n)
    booster = lgb.train(
        {"objective": "regression", "num_leaves": 15, "verbose": -1, "seed": 1, "min_data_in_leaf": 5},
        lgb.Dataset(x, y, categorical_feature=[3]),
        num_boost_round=40,
    )
    path = tmp_path / "model.txt"
    booster.save_model(str(path))
    ours = TreeEnsemble.from_file(path)
    probe = rng.normal(0, 3, size=(2000, 5))
    probe[:, 3] = np.where(rng.random(2000) < 0.5, rng.integers(-2, 12, size=2000), rng.normal(2, 3, 2000))
    probe[rng.random(probe.shape) < 0.15] = np.nan
    assert any("cat_threshold" in line for line in path.read_text().splitlines())
    np.testing.assert_allclose(ours.predict(probe), booster.predict(probe), rtol=0, atol=1e-12)
