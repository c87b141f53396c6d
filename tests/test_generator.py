"""The synthetic generator: deterministic, believable structure, lands in the documented layout;
its latent-taste mode hides its tastes from every table and reads no profile column."""

from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from recsys_platform import schemas
from recsys_platform.dev.generator import GeneratorConfig, _latent_tastes, generate, write_to_landing
from recsys_platform.ingest.landing import LocalLandingZone, partition_key_of
from recsys_platform.model.evaluation import ndcg_at_k
from recsys_platform.model.params import ModelParams
from recsys_platform.quality_benchmark.baselines import fit_baseline, pair_history, top_k_unseen
from recsys_platform.quality_benchmark.holdout import ITEM, TIME, USER
from tests.conftest import FIXED_END

LATENT = GeneratorConfig(n_users=400, days=14, seed=3, end=FIXED_END, tastes="latent")


@pytest.fixture(scope="module")
def small():
    return generate(GeneratorConfig(n_users=400, days=14, seed=3, end=FIXED_END))


@pytest.fixture(scope="module")
def latent():
    return generate(LATENT)


@pytest.fixture(scope="module", params=["profile", "latent"])
def either(request, small, latent):
    """The same shape checks hold in both taste modes."""
    return small if request.param == "profile" else latent


def test_same_seed_same_data_other_seed_other_data(small):
    again = generate(GeneratorConfig(n_users=400, days=14, seed=3, end=FIXED_END))
    assert small.events.equals(again.events)
    assert small.items.equals(again.items) and small.users.equals(again.users)
    other = generate(GeneratorConfig(n_users=400, days=14, seed=4, end=FIXED_END))
    assert not small.events.equals(other.events)


def test_latent_mode_same_seed_same_data_other_seed_other_data(small, latent):
    again = generate(LATENT)
    assert latent.events.equals(again.events)
    assert latent.items.equals(again.items) and latent.users.equals(again.users)
    other = generate(GeneratorConfig(n_users=400, days=14, seed=4, end=FIXED_END, tastes="latent"))
    assert not latent.events.equals(other.events)
    # the catalog and the profiles are the same in both modes; only behaviour differs
    assert latent.items.equals(small.items) and latent.users.equals(small.users)
    assert not latent.events.equals(small.events)


def test_unknown_taste_mode_is_refused():
    with pytest.raises(ValueError, match="unknown tastes 'genre'; use one of profile, latent"):
        GeneratorConfig(tastes="genre")


def test_schemas_and_vocabularies(either):
    assert either.items.schema == pl.Schema(schemas.ITEM_SCHEMA)
    assert either.users.schema == pl.Schema(schemas.USER_SCHEMA)
    assert set(either.events["event_type"].unique()) == set(schemas.EVENT_TYPES)
    assert set(either.items["content_type"].unique()) == set(schemas.CONTENT_TYPES)
    assert either.events["event_id"].n_unique() == either.events.height


def test_events_inside_window_and_arrive_after_they_happen(either):
    start = FIXED_END - timedelta(days=14)
    ev = either.events
    assert ev["event_time"].min() >= start and ev["event_time"].max() < FIXED_END
    assert (ev["arrival_time"] >= ev["event_time"]).all()
    assert ev["arrival_time"].max() < FIXED_END
    late = ev.filter((pl.col("arrival_time") - pl.col("event_time")) > pl.duration(minutes=10))
    assert 0 < late.height < 0.05 * ev.height  # some late events, not many


def test_content_events_reference_released_catalog_items(either):
    content = either.events.filter(pl.col("event_type").is_in(list(schemas.CONTENT_EVENT_TYPES)))
    assert content["item_id"].null_count() == 0
    joined = content.join(either.items, on="item_id", how="inner")
    assert joined.height == content.height
    assert (joined["event_time"].dt.date() >= joined["release_date"]).all()


def test_kids_content_only_in_families(either):
    kids_plays = (
        either.events.filter(pl.col("event_type") == "content_start")
        .join(either.items.filter(pl.col("is_kids")), on="item_id")
        .join(either.users, on="user_id")
    )
    assert kids_plays.height > 0
    assert set(kids_plays["household_type"].unique()) == {"family_with_kids"}


def test_sleep_content_is_played_at_night(small):
    # profile mode: content types follow the preferred daypart (latent mode has no such term)
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


def test_tastes_are_concentrated(either):
    # A user's plays concentrate on few topics: structure popularity cannot capture. In latent mode
    # through the topics the hidden item factors correlate with.
    plays = either.events.filter(pl.col("event_type") == "content_start").join(either.items, on="item_id")
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


def _numeric(frame: pl.DataFrame) -> dict[str, np.ndarray]:
    """Every numeric, date or time column of `frame` as floats (nulls as NaN)."""
    out = {}
    for name, dtype in frame.schema.items():
        if dtype.is_numeric() or dtype.is_temporal():
            out[name] = frame[name].cast(pl.Float64, strict=False).fill_null(np.nan).to_numpy()
    return out


def _max_abs_corr(column: np.ndarray, factors: np.ndarray) -> float:
    ok = np.isfinite(column)
    if ok.sum() < 3 or np.std(column[ok]) == 0:
        return 0.0
    return float(np.nanmax(np.abs([np.corrcoef(column[ok], f[ok])[0, 1] for f in factors.T])))


def test_latent_factors_appear_in_no_output_column(latent):
    tastes = _latent_tastes(LATENT, latent.items, latent.users.height, chunk=0)
    # the tables hold exactly their documented columns: nothing extra carries the factors
    assert latent.items.schema == pl.Schema(schemas.ITEM_SCHEMA)
    assert latent.users.schema == pl.Schema(schemas.USER_SCHEMA)
    assert list(latent.events.columns) == [*schemas.RAW_EVENT_SCHEMA, "arrival_time"]
    user_hidden = np.column_stack([tastes.user_factors, tastes.habit_hour])
    user_row = latent.users["user_id"].str.slice(1).cast(pl.Int64).to_numpy()
    item_row = latent.items["item_id"].str.slice(1).cast(pl.Int64).to_numpy()
    ev = latent.events
    ev_user = ev["user_id"].str.slice(1).cast(pl.Int64).to_numpy()
    ev_item = ev["item_id"].str.slice(1).cast(pl.Int64).fill_null(-1).to_numpy()
    has_item = ev_item >= 0
    checks = [
        *((f"items.{name}", col, tastes.item_factors[item_row]) for name, col in _numeric(latent.items).items()),
        *((f"users.{name}", col, user_hidden[user_row]) for name, col in _numeric(latent.users).items()),
        *((f"events.{name} ~ user", col, user_hidden[ev_user]) for name, col in _numeric(ev).items()),
        *(
            (f"events.{name} ~ item", col[has_item], tastes.item_factors[ev_item[has_item]])
            for name, col in _numeric(ev).items()
        ),
    ]
    worst = {name: round(_max_abs_corr(col, hidden), 2) for name, col, hidden in checks}
    # No column is (a linear function of) a factor: the largest |correlation| with any factor
    # dimension is 0.17 (series_position, through the content type both depend on).
    assert max(worst.values()) < 0.3, worst
    # and no column of any table holds a factor value itself
    values = np.concatenate([tastes.user_factors.ravel(), tastes.item_factors.ravel(), tastes.habit_hour])
    for table in (latent.items, latent.users, ev):
        for name, col in _numeric(table).items():
            assert not np.isin(col, values).any(), name


def _shuffled_profiles(users: pl.DataFrame, seed: int) -> pl.DataFrame:
    """Every profile column except the kids rule's household_type, permuted across users."""
    kept = ["user_id", "household_type"]
    perm = np.random.default_rng(seed).permutation(users.height)
    return users.select(kept).hstack(users.drop(kept)[perm]).select(users.columns)


def test_latent_behaviour_reads_no_profile_column(small, latent):
    shuffled = _shuffled_profiles(latent.users, seed=0)
    for column in ("language", "preferred_daypart", "experience_level", "country", "utc_offset_hours"):
        assert (shuffled[column] != latent.users[column]).mean() > 0.3
    # latent mode: the same events, item choices and times alike
    assert generate(LATENT, users=shuffled).events.equals(latent.events)

    def choices(events: pl.DataFrame) -> pl.DataFrame:
        return events.filter(pl.col("event_type") == "content_start").select("user_id", "item_id").unique()

    # profile mode: behaviour follows the profile columns, so most (user, item) choices change
    # (21% of them stay)
    profile_cfg = GeneratorConfig(n_users=400, days=14, seed=3, end=FIXED_END)
    moved = choices(generate(profile_cfg, users=shuffled).events)
    kept = moved.join(choices(small.events), on=["user_id", "item_id"], how="semi").height
    assert kept / moved.height < 0.3


def _top_10_unseen(train: pl.DataFrame, users: pl.Series, source: str, l2: float) -> pl.DataFrame:
    """The product's candidate source `source` (binary profile) fitted on the train pairs, 10 unseen items each."""
    rows = train.select(pl.col("user_id").alias(USER), pl.col("item_id").alias(ITEM), pl.lit(0.0).alias(TIME))
    history = pair_history(rows, 1.0)
    return top_k_unseen(fit_baseline(source, history, ModelParams(ease_l2=l2)), history, users, 10)


def test_latent_tastes_are_learnable_by_collaborative_filtering_not_by_popularity():
    # Temporal split: plays before the cutoff train EASE (binary, l2 200) and all-time popularity;
    # each user's new items after it are the truth. benchmarks/synthetic_tastes.py at 3000 users.
    cfg = GeneratorConfig(n_users=1000, days=21, seed=3, end=FIXED_END, tastes="latent")
    cutoff = FIXED_END - timedelta(days=5)
    plays = generate(cfg).events.filter(pl.col("event_type") == "content_start")
    train = plays.filter(pl.col("event_time") < cutoff).select("user_id", "item_id").unique()
    truth = (
        plays.filter(pl.col("event_time") >= cutoff)
        .select("user_id", "item_id")
        .unique()
        .join(train, on=["user_id", "item_id"], how="anti")
        .join(train.select("user_id").unique(), on="user_id", how="semi")
    )
    users = truth["user_id"].unique()
    ease = ndcg_at_k(truth, _top_10_unseen(train, users, "ease", 200.0), 10)
    popularity = ndcg_at_k(truth, _top_10_unseen(train, users, "pop", 200.0), 10)
    # 697 users with new items after the cutoff: EASE 0.1611, popularity 0.0964 (1.67x)
    assert users.len() == 697
    assert ease == pytest.approx(0.1611, abs=1e-3)
    assert popularity == pytest.approx(0.0964, abs=1e-3)
    assert popularity > 0.05  # a meaningful baseline (the head is real) ...
    assert ease > 1.5 * popularity  # ... that collaborative filtering clearly beats ...
    assert ease < 0.5  # ... without the tastes being trivial to recover
