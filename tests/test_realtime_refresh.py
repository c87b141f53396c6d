"""The refresh path on real data: a trained ranker, a deployed SQLite store, and session events that must
move each user's recommendations (completed item leaves, night sleep search, rising steps and heart rate)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from recsys_platform import deployment, schemas, serving
from recsys_platform.config import PipelineParams
from recsys_platform.features import build_interactions
from recsys_platform.generator import GeneratorConfig, generate
from recsys_platform.online_store import StaleWriteError, open_online_store
from recsys_platform.ranking import train_ranker
from recsys_platform.realtime import refresh
from recsys_platform.realtime.ease_cache import cached_ease_weights, ease_for_users
from recsys_platform.realtime.models import clear_loaded_models, load_model_version
from recsys_platform.realtime.sessions import SLEEP_TYPES, session_features
from recsys_platform.training import build_training_set

END = datetime(2026, 10, 1, 12, tzinfo=UTC)
NOW = END + timedelta(minutes=30)
PARAMS = replace(PipelineParams(), ranker_rounds=40, label_days=2, candidates_per_source=30, top_n=30)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """150 users x 8 days, a ranker trained on it (saved as version 1), interactions as the batch table."""
    ds = generate(GeneratorConfig(n_users=150, days=8, seed=5, end=END))
    interactions = build_interactions(ds.events, ds.items)
    train = build_training_set(interactions, ds.items, ds.users, PARAMS).filter(pl.col("split") == "train")
    model = train_ranker(train, PARAMS)
    cache = tmp_path_factory.mktemp("models")
    model.booster_.save_model(str(cache / "recsys-ranker-v1.txt"))
    clear_loaded_models()
    return {"items": ds.items, "users": ds.users, "interactions": interactions, "cache": cache}


@pytest.fixture
def store(tmp_path: Path):
    """A SQLite online store with version 1 active."""
    with open_online_store(f"sqlite:///{tmp_path / 'store.sqlite'}") as s:
        deployment.deploy(s, "1", "snap-1", {"recs": {}, "user_features": {}})
        yield s


def _event(user: str, kind: str, at: datetime, **kw: object) -> dict:
    return {
        "event_id": f"rt-{user}-{kind}-{at.timestamp()}",
        "user_id": user,
        "event_type": kind,
        "event_time": at,
        **kw,
    }


def _refresh(world: dict, store, user: str, events: list[dict]) -> list[serving.RecommendedItem]:
    recent = (
        schemas.conform(pl.DataFrame(events), schemas.EVENT_SCHEMA)
        if events
        else pl.DataFrame(schema=schemas.EVENT_SCHEMA)
    )
    everything, mine = refresh.touched_interactions(world["interactions"], recent, world["items"], [user])
    ease = cached_ease_weights(world["interactions"], None, None)
    frame, feats = refresh.build_scoring_frame(
        everything, mine, world["items"], world["users"], [user], PARAMS, NOW, ease
    )
    sessions = session_features(recent, world["users"], world["items"], PARAMS.watermark_minutes)
    loader = lambda v: load_model_version("unused://", "recsys-ranker", v, world["cache"])  # noqa: E731
    report = refresh.refresh_users(store, frame, feats, sessions, world["items"], PARAMS, loader, now=NOW)
    assert report.rescored_users == 1 and report.model_version == "1" and report.slot == "blue"
    return serving.recommend(store, user, k=PARAMS.top_n).items


def _user_with_offset(world: dict, night: bool) -> str:
    local = (NOW.hour + world["users"]["utc_offset_hours"]) % 24
    is_night = (local >= 21) | (local < 5)
    active = world["interactions"]["user_id"].unique()
    return world["users"].filter((is_night == night) & pl.col("user_id").is_in(active.implode()))["user_id"].sort()[0]


def _ranks(items: list[serving.RecommendedItem], types: tuple[str, ...], top: int = 10) -> int:
    return sum(1 for i in items[:top] if i.content_type in types)


def test_refresh_writes_the_active_slot_and_a_completed_item_leaves_the_list(world: dict, store) -> None:
    user = _user_with_offset(world, night=False)
    before = _refresh(world, store, user, [])
    assert len(before) == PARAMS.top_n
    top = before[0].item_id
    after = _refresh(world, store, user, [_event(user, "content_complete", NOW - timedelta(minutes=1), item_id=top)])
    assert top not in [i.item_id for i in after]
    features = store.read("user_features", [user]).values[user]
    assert '"sess_completes":1' in features and '"refreshed_at"' in features


def test_a_night_time_sleep_search_moves_sleep_content_up(world: dict, store) -> None:
    night_user = _user_with_offset(world, night=True)
    before = _refresh(world, store, night_user, [])
    search = [_event(night_user, "search", NOW - timedelta(minutes=2), query="sleep story bedtime")]
    after = _refresh(world, store, night_user, search)
    assert _ranks(after, SLEEP_TYPES) > _ranks(before, SLEEP_TYPES)
    assert _ranks(after, SLEEP_TYPES) >= 7
    # The same search in the daytime moves sleep content less.
    day_user = _user_with_offset(world, night=False)
    day_before = _refresh(world, store, day_user, [])
    day_after = _refresh(world, store, day_user, [_event(day_user, "search", NOW, query="sleep story bedtime")])
    assert _ranks(day_after, SLEEP_TYPES) - _ranks(day_before, SLEEP_TYPES) < _ranks(after, SLEEP_TYPES)


def test_rising_steps_and_heart_rate_move_movement_content_up(world: dict, store) -> None:
    user = _user_with_offset(world, night=False)
    before = _refresh(world, store, user, [])
    readings = [
        _event(user, "biometric", NOW - timedelta(minutes=m), steps=steps, heart_rate=hr)
        for m, steps, hr in ((8, 200, 70.0), (5, 600, 82.0), (2, 1100, 96.0), (0, 1500, 104.0))
    ]
    after = _refresh(world, store, user, readings)
    best = [next((i.rank for i in items if i.content_type == "movement"), 99) for items in (before, after)]
    # This user's ranker scores put movement outside the top 30; the session brings it into the top 10,
    # and several movement items into the top 15 (the toy model's exact positions move with its training
    # data: since content-candidate ties are broken deterministically the third one lands at 11, not 10).
    assert _ranks(before, ("movement",), top=30) == 0
    assert _ranks(after, ("movement",)) >= 2 and _ranks(after, ("movement",), top=15) >= 4
    assert best[1] < best[0] and best[1] <= 8
    # Only the context changed: the non-movement items keep their relative order.
    others = [i.item_id for i in after if i.content_type != "movement"]
    assert others == [i.item_id for i in before if i.item_id in set(others)]


def test_a_write_refused_after_a_flip_is_redone_on_the_new_slot(world: dict, store) -> None:
    user = _user_with_offset(world, night=False)
    everything, mine = refresh.touched_interactions(
        world["interactions"], pl.DataFrame(schema=schemas.EVENT_SCHEMA), world["items"], [user]
    )
    frame, feats = refresh.build_scoring_frame(everything, mine, world["items"], world["users"], [user], PARAMS, NOW)
    flips = {"n": 0}

    def loader(version: str):
        # A deploy of version 2 lands while version 1 is being scored (only once).
        if flips["n"] == 0:
            flips["n"] += 1
            deployment.deploy(store, "2", "snap-2", {"recs": {}, "user_features": {}})
        return load_model_version("unused://", "recsys-ranker", "1", world["cache"])

    report = refresh.refresh_users(store, frame, feats, pl.DataFrame(), world["items"], PARAMS, loader, now=NOW)
    assert (report.attempts, report.model_version, report.slot) == (2, "2", "green")
    assert store.read_slot("blue", "recs", [user]).values[user] is None  # nothing half-written in the old slot
    assert (
        serving.recommend(store, user).model_version == "2" and serving.recommend(store, user).source == "personalized"
    )
    with pytest.raises(StaleWriteError):
        deployment.write_user_updates(store, "1", "recs", {user: "{}"})


def test_ease_for_users_scores_with_the_users_newest_rows(world: dict) -> None:
    weights, item_ids = cached_ease_weights(world["interactions"], None, None)
    user = world["interactions"]["user_id"].sort()[0]
    mine = world["interactions"].filter(pl.col("user_id") == user)
    model = ease_for_users(weights, item_ids, mine)
    assert model is not None and model.data.user_ids.to_list() == [user]
    extra = mine.head(1).with_columns(item_id=pl.lit(item_ids[-1]), weight=pl.lit(3.0), event_id=pl.lit("x"))
    grown = ease_for_users(weights, item_ids, pl.concat([mine, extra]))
    assert grown.data.matrix[0, len(item_ids) - 1] == 1.0
    assert not (grown.score_users([0]) == model.score_users([0])).all()
