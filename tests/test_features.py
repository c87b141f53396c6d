"""Interactions and point-in-time tables: dedup, weights, nothing at or after the cutoff, rows sorted by key.

(The ranker's training rows, labels and leakage are tested in test_model_procedure.py and
test_model_leakage.py; the windows in test_model_windows.py.)"""

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from recsys_platform import schemas
from recsys_platform.dev.generator import GeneratorConfig, generate
from recsys_platform.features.tables import (
    build_interactions,
    item_features,
    user_features,
    user_item_affinities,
    user_item_history,
)
from recsys_platform.model.history import PairHistory, Vocabulary
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


def test_pair_history_aggregates_each_pair_before_the_cutoff_only():
    events = schemas.conform(
        pl.DataFrame(
            [
                _event("e1", "content_start", "a", 0),
                _event("e2", "content_complete", "a", 10, 600.0),
                _event("e3", "favorite", "a", 11),
                _event("e4", "content_start", "a", 30),  # a replay
                _event("e5", "content_start", "b", 40),
                _event("e6", "content_exit", "b", 40.2, 12.0),  # bounce
                _event("e7", "content_start", "b", 60),  # at the cutoff: not known
                _event("e8", "content_start", "a", 61, user="u2"),  # after it
            ]
        ),
        schemas.EVENT_SCHEMA,
    )
    inter = build_interactions(events, ITEMS)
    vocab = Vocabulary.build(pl.Series(["u1", "u2"]), pl.Series(["a", "b"]))
    cutoff = T0 + timedelta(minutes=60)
    history = PairHistory.build(inter, vocab, cutoff)
    assert history.cutoff_s == cutoff.timestamp()
    # rows by user, then first time: u1's a (minute 0) then b (minute 40); u2 has nothing before the cutoff
    assert history.user.tolist() == [0, 0] and history.item.tolist() == [0, 1]
    assert history.plays.tolist() == [2, 1] and history.completes.tolist() == [1, 0]
    assert history.favorites.tolist() == [1, 0] and history.bounces.tolist() == [0, 1]
    assert history.weight.tolist() == [1 + 3 + 2 + 1, 1 - 1]  # start 1, complete 3, favourite 2; bounce -1
    minute = 60.0
    assert (history.first_s - T0.timestamp()).tolist() == [0, 40 * minute]
    assert (history.last_s - T0.timestamp()).tolist() == [30 * minute, 40.2 * minute]
    assert history.item_counts().tolist() == [1, 1] and history.user_counts().tolist() == [2, 0]
    assert history.positions_from_end().tolist() == [1, 0]


@pytest.fixture(scope="module")
def data():
    ds = generate(GeneratorConfig(n_users=300, days=16, seed=11, end=FIXED_END))
    return build_interactions(ds.events, ds.items), ds


def test_feature_tables_are_sorted_by_their_keys_whatever_the_input_order(data):
    """Joins and group-bys leave row order to the engine: without the sort, reruns wrote different Parquet."""
    inter, ds = data
    cut = FIXED_END - timedelta(days=4)
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


def test_feature_tables_read_a_lazy_scan_as_they_read_the_frame(data, tmp_path):
    """The cycle's user and item features aggregate a scan of the lake with polars' streaming engine (the 98.5M
    events of 1M users are never one frame): the same tables as from the collected frame, and the distinct-items
    count and played level also right for events of an item the items table does not hold (or holds without a
    level), which the scan path counts apart from the catalogue's integer codes."""
    inter, ds = data
    cut = FIXED_END - timedelta(days=4)
    path = tmp_path / "interactions.parquet"
    inter.write_parquet(path)
    assert user_features(pl.scan_parquet(path), ds.users, ds.items, cut).equals(
        user_features(inter, ds.users, ds.items, cut)
    )
    assert item_features(pl.scan_parquet(path), ds.items, cut).equals(item_features(inter, ds.items, cut))

    items = ITEMS.with_columns(level=pl.Series(["advanced", None], dtype=pl.String))
    rows = [
        _event("e1", "content_complete", "a", 0, 600.0),  # level advanced (index 2)
        _event("e2", "content_complete", "b", 10, 300.0),  # no level: index 0
        _event("e3", "content_start", "zz", 20),  # not in the items table
        _event("e4", "content_start", "zy", 30),
        _event("e5", "content_start", "zz", 40),
        _event("e6", "content_start", "a", 50),
    ]
    events = schemas.conform(pl.DataFrame(rows), schemas.INTERACTION_SCHEMA)
    users = schemas.conform(pl.DataFrame({"user_id": ["u1"], "utc_offset_hours": [0]}), schemas.USER_SCHEMA)
    later = T0 + timedelta(hours=2)
    for source in (events, events.lazy()):
        uf = user_features(source, users, items, later)
        assert uf["user_distinct_items"].to_list() == [4]  # a, b, zz, zy
        assert uf["user_level_played"].to_list() == [pytest.approx((2 + 0) / 2)]
        assert uf["user_starts"].to_list() == [4] and uf["user_completes"].to_list() == [2]
