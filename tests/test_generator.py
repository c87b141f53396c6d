"""The synthetic generator: deterministic, believable structure, lands in the documented layout."""

from datetime import timedelta

import polars as pl
import pytest

from recsys_platform import schemas
from recsys_platform.generator import GeneratorConfig, generate, write_to_landing
from recsys_platform.landing import LocalLandingZone, partition_key_of
from tests.conftest import FIXED_END


@pytest.fixture(scope="module")
def small():
    return generate(GeneratorConfig(n_users=400, days=14, seed=3, end=FIXED_END))


def test_same_seed_same_data_other_seed_other_data(small):
    again = generate(GeneratorConfig(n_users=400, days=14, seed=3, end=FIXED_END))
    assert small.events.equals(again.events)
    assert small.items.equals(again.items) and small.users.equals(again.users)
    other = generate(GeneratorConfig(n_users=400, days=14, seed=4, end=FIXED_END))
    assert not small.events.equals(other.events)


def test_schemas_and_vocabularies(small):
    assert small.items.schema == pl.Schema(schemas.ITEM_SCHEMA)
    assert small.users.schema == pl.Schema(schemas.USER_SCHEMA)
    assert set(small.events["event_type"].unique()) == set(schemas.EVENT_TYPES)
    assert set(small.items["content_type"].unique()) == set(schemas.CONTENT_TYPES)
    assert small.events["event_id"].n_unique() == small.events.height


def test_events_inside_window_and_arrive_after_they_happen(small):
    start = FIXED_END - timedelta(days=14)
    ev = small.events
    assert ev["event_time"].min() >= start and ev["event_time"].max() < FIXED_END
    assert (ev["arrival_time"] >= ev["event_time"]).all()
    assert ev["arrival_time"].max() < FIXED_END
    late = ev.filter((pl.col("arrival_time") - pl.col("event_time")) > pl.duration(minutes=10))
    assert 0 < late.height < 0.05 * ev.height  # some late events, not many


def test_content_events_reference_released_catalog_items(small):
    content = small.events.filter(pl.col("event_type").is_in(list(schemas.CONTENT_EVENT_TYPES)))
    assert content["item_id"].null_count() == 0
    joined = content.join(small.items, on="item_id", how="inner")
    assert joined.height == content.height
    assert (joined["event_time"].dt.date() >= joined["release_date"]).all()


def test_kids_content_only_in_families(small):
    kids_plays = (
        small.events.filter(pl.col("event_type") == "content_start")
        .join(small.items.filter(pl.col("is_kids")), on="item_id")
        .join(small.users, on="user_id")
    )
    assert kids_plays.height > 0
    assert set(kids_plays["household_type"].unique()) == {"family_with_kids"}


def test_sleep_content_is_played_at_night(small):
    plays = (
        small.events.filter(pl.col("event_type") == "content_start")
        .join(small.items.select("item_id", "content_type"), on="item_id")
        .join(small.users.select("user_id", "utc_offset_hours"), on="user_id")
        .with_columns(local_hour=(pl.col("event_time").dt.hour().cast(pl.Int64) + pl.col("utc_offset_hours")) % 24)
        .with_columns(night=(pl.col("local_hour") >= 22) | (pl.col("local_hour") < 6))
    )
    share = plays.group_by("night").agg((pl.col("content_type") == "sleep_story").mean().alias("sleep"))
    by_night = dict(share.iter_rows())
    assert by_night[True] > 2 * by_night[False]


def test_tastes_are_concentrated(small):
    # A user's plays concentrate on few topics: structure popularity cannot capture.
    plays = small.events.filter(pl.col("event_type") == "content_start").join(small.items, on="item_id")
    top_share = (
        plays.group_by("user_id", "topic")
        .len()
        .with_columns(share=pl.col("len") / pl.col("len").sum().over("user_id"))
        .group_by("user_id")
        .agg(pl.col("share").max())
    )
    assert top_share["share"].median() > 0.2  # vs ~1/35 for uniform topic choice


def test_writes_partitioned_batches(tmp_path, small):
    zone = LocalLandingZone(tmp_path)
    n_files = write_to_landing(small, zone, fmt=".jsonl", batches_per_hour=2)
    events = zone.list_files("events/")
    assert len(events) + 2 == n_files
    assert all(partition_key_of(f.key) for f in events)
    assert all(f.key.endswith(".jsonl") for f in events)
    assert zone.list_files("items/") and zone.list_files("users/")
    total = sum(pl.read_ndjson(tmp_path / f.key).height for f in events)
    assert total == small.events.height
