"""Interactions, point-in-time features and the temporal split: dedup, weights, no leakage."""

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from recsys_platform import schemas
from recsys_platform.config import PipelineParams
from recsys_platform.features import (
    build_interactions,
    item_features,
    user_features,
    user_item_affinities,
    user_item_history,
)
from recsys_platform.generator import GeneratorConfig, generate
from recsys_platform.ranking import FEATURE_COLUMNS, TemporalSplit, label_window, train_ranker, training_frame
from recsys_platform.training import InsufficientHistoryError, build_training_set
from tests.conftest import FIXED_END

T0 = datetime(2026, 3, 1, 20, tzinfo=UTC)
ITEMS = pl.DataFrame(
    {
        "item_id": ["a", "b"],
        "content_type": ["sleep_story", "meditation"],
        "duration_seconds": [600, 300],
        "is_kids": [False, False],
    }
).pipe(lambda df: schemas.conform(df, schemas.ITEM_SCHEMA))


def _event(eid, etype, item, minutes, listened=None, user="u1"):
    return {
        "event_id": eid,
        "user_id": user,
        "event_type": etype,
        "item_id": item,
        "event_time": T0 + timedelta(minutes=minutes),
        "seconds_listened": listened,
    }


def test_interactions_dedup_weights_and_bounces():
    events = schemas.conform(
        pl.DataFrame(
            [
                _event("e1", "content_start", "a", 0),
                _event("e1", "content_start", "a", 0),  # duplicate delivery
                _event("e2", "content_complete", "a", 10, 600.0),
                _event("e3", "favorite", "a", 11),
                _event("e4", "content_start", "b", 20),
                _event("e5", "content_exit", "b", 20.2, 12.0),  # bounce
                _event("e6", "content_exit", "b", 25, 150.0),  # half listened
                _event("e7", "app_open", None, 30),
            ]
        ),
        schemas.EVENT_SCHEMA,
    )
    inter = build_interactions(events, ITEMS)
    assert inter["event_id"].to_list() == ["e1", "e2", "e3", "e4", "e5", "e6"]
    weights = dict(zip(inter["event_id"], inter["weight"], strict=True))
    assert weights == {"e1": 1.0, "e2": 3.0, "e3": 2.0, "e4": 1.0, "e5": -1.0, "e6": 0.0}
    ratio = dict(zip(inter["event_id"], inter["completion_ratio"], strict=True))
    assert ratio["e2"] == 1.0 and ratio["e6"] == pytest.approx(0.5)
    assert inter.filter(pl.col("is_bounce"))["event_id"].to_list() == ["e5"]


def test_features_ignore_events_at_or_after_cutoff():
    events = schemas.conform(
        pl.DataFrame([_event("e1", "content_start", "a", 0), _event("e2", "content_start", "a", 60)]),
        schemas.EVENT_SCHEMA,
    )
    inter = build_interactions(events, ITEMS)
    users = schemas.conform(pl.DataFrame({"user_id": ["u1"], "utc_offset_hours": [0]}), schemas.USER_SCHEMA)
    cutoff = T0 + timedelta(minutes=60)
    uf = user_features(inter, users, ITEMS, cutoff)
    assert uf["user_starts"].to_list() == [1]
    hist = user_item_history(inter, cutoff, repeat_cap=3)
    assert hist["ui_plays"].to_list() == [1]


@pytest.fixture(scope="module")
def frame_and_data():
    ds = generate(GeneratorConfig(n_users=300, days=16, seed=11, end=FIXED_END))
    inter = build_interactions(ds.events, ds.items)
    params = PipelineParams(label_days=4, candidates_per_source=20)
    split = TemporalSplit.from_interactions(inter, params.label_days)
    frame = training_frame(inter, ds.items, ds.users, split.train_cutoff, split.eval_cutoff, params)
    return frame, inter, ds, params, split


def test_training_labels_come_only_from_the_label_window(frame_and_data):
    frame, inter, _, params, split = frame_and_data
    labels = label_window(inter, split.train_cutoff, split.eval_cutoff)
    positives = frame.filter(pl.col("relevance") > 0).select("user_id", "item_id", "relevance")
    joined = positives.join(labels, on=["user_id", "item_id"], how="left", suffix="_window")
    assert joined["relevance_window"].null_count() == 0
    assert (joined["relevance"] == joined["relevance_window"]).all()
    assert frame["feature_cutoff"].unique().to_list() == [split.train_cutoff]


def test_no_feature_uses_events_after_cutoff(frame_and_data):
    """Leakage check: recomputing with every post-cutoff event deleted must give identical features."""
    frame, inter, ds, params, split = frame_and_data
    truncated_frame = training_frame(
        inter.filter(pl.col("event_time") < split.train_cutoff).vstack(
            inter.filter(pl.col("event_time") >= split.train_cutoff)  # labels still need the window
        ),
        ds.items,
        ds.users,
        split.train_cutoff,
        split.eval_cutoff,
        params,
    )
    assert truncated_frame.select(FEATURE_COLUMNS).equals(frame.select(FEATURE_COLUMNS))
    # Now shift one post-cutoff event of a candidate user: features must not move, labels may.
    future = inter.filter(pl.col("event_time") >= split.train_cutoff)
    scrambled = inter.filter(pl.col("event_time") < split.train_cutoff).vstack(
        future.with_columns(item_id=pl.col("item_id").shuffle(seed=1))
    )
    shifted = training_frame(scrambled, ds.items, ds.users, split.train_cutoff, split.eval_cutoff, params)
    keys = ["user_id", "item_id"]
    both = frame.select(*keys, *FEATURE_COLUMNS).join(
        shifted.select(*keys, *FEATURE_COLUMNS), on=keys, how="inner", suffix="_s"
    )
    assert both.height > 0
    for col in FEATURE_COLUMNS:
        assert (both[col] == both[f"{col}_s"]).all(), col


def test_leaky_feature_is_detected(frame_and_data):
    """The check above would catch a feature computed after the cutoff (guards the guard)."""
    frame, inter, _, _, split = frame_and_data
    leaky = inter.filter(pl.col("event_time") >= split.train_cutoff).group_by("user_id", "item_id").len()
    with_leak = frame.join(leaky, on=["user_id", "item_id"], how="left").with_columns(pl.col("len").fill_null(0))
    corr = with_leak.select(pl.corr("len", "relevance")).item()
    assert corr > 0.3  # a future-derived feature is strongly label-correlated: exactly what must never enter
    assert "len" not in FEATURE_COLUMNS


def test_feature_tables_are_sorted_by_their_keys_whatever_the_input_order(frame_and_data):
    """Joins and group-bys leave row order to the engine: without the sort, reruns wrote different Parquet."""
    _, inter, ds, _, split = frame_and_data
    cut = split.eval_cutoff
    for seed in (1, 2):
        users = ds.users.sample(fraction=1.0, shuffle=True, seed=seed)
        items = ds.items.sample(fraction=1.0, shuffle=True, seed=seed)
        history = inter.sample(fraction=1.0, shuffle=True, seed=seed)
        uf = user_features(history, users, items, cut)
        assert uf["user_id"].to_list() == sorted(ds.users["user_id"].to_list())
        assert uf.equals(user_features(inter, ds.users, ds.items, cut))
        itf = item_features(history, items, cut)
        assert itf["item_id"].to_list() == sorted(ds.items["item_id"].to_list())
        assert itf.equals(item_features(inter, ds.items, cut))
        for facet, table in user_item_affinities(history, items, cut).items():
            assert table.equals(table.sort("user_id", facet)), facet
        uih = user_item_history(history, cut, repeat_cap=3)
        assert uih.height > 0 and uih.equals(uih.sort("user_id", "item_id"))


def test_min_history_days_is_enough_for_a_training_set():
    params = PipelineParams(label_days=4, candidates_per_source=20)
    days = TemporalSplit.min_history_days(params.label_days)
    assert days == 9 and TemporalSplit.min_history_days(7) == 15
    ds = generate(GeneratorConfig(n_users=300, days=days, seed=11, end=FIXED_END))
    df = build_training_set(build_interactions(ds.events, ds.items), ds.items, ds.users, params)
    positives = df.filter(pl.col("relevance") > 0).group_by("split").len()
    assert sorted(positives["split"].to_list()) == ["eval", "train"]


def test_too_short_history_fails_naming_the_label_window_and_the_minimum(frame_and_data):
    """Seven days with label_days=7 leave the training label window empty: say so, not a LightGBM error."""
    _, inter, ds, _, _ = frame_and_data
    last_week = inter.filter(pl.col("event_time") >= FIXED_END - timedelta(days=7))
    params = PipelineParams(label_days=7, candidates_per_source=20)
    split = TemporalSplit.from_interactions(last_week, params.label_days)
    with pytest.raises(InsufficientHistoryError) as raised:
        build_training_set(last_week, ds.items, ds.users, params)
    message = str(raised.value)
    assert "'train' window" in message and "label_days=7" in message
    assert f"[{split.train_cutoff:%Y-%m-%d %H:%M}, {split.eval_cutoff:%Y-%m-%d %H:%M})" in message
    assert "at least 15 days" in message
    with pytest.raises(InsufficientHistoryError, match="no interactions"):
        build_training_set(inter.head(0), ds.items, ds.users, params)


def test_ranker_refuses_rows_without_a_positive_label(frame_and_data):
    frame, _, _, params, _ = frame_and_data
    with pytest.raises(ValueError, match="no training rows with a positive label"):
        train_ranker(frame.filter(pl.col("relevance") == 0), params)
