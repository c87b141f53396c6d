"""Bounded-memory paths give the same answers as the all-at-once ones: per-user tables built for a
sample of users, recommendations scored in user chunks, the generator writing chunk by chunk."""

import io
from dataclasses import replace
from datetime import timedelta

import polars as pl
import pytest

from recsys_platform import candidates, schemas
from recsys_platform.candidates import CONTENT_FACETS, _ranked, _released, source_content
from recsys_platform.config import PipelineParams
from recsys_platform.features import build_interactions, read_history, rows_of_users
from recsys_platform.generator import GeneratorConfig, generate, generate_to_landing
from recsys_platform.landing import EVENTS_PREFIX, ITEMS_PREFIX, USERS_PREFIX, LocalLandingZone, partition_key_of
from recsys_platform.ranking import (
    PointInTime,
    TemporalSplit,
    label_users,
    label_window,
    recently_completed,
    recommend,
    score_frame,
    top_n,
    train_ranker,
    training_frame,
)
from recsys_platform.training import build_training_set, evaluate_holdout
from tests.conftest import FIXED_END

PARAMS = PipelineParams(ranker_rounds=15, max_training_users=120)


@pytest.fixture(scope="module")
def world() -> dict:
    """A small dataset, its interactions and the temporal split."""
    ds = generate(GeneratorConfig(n_users=500, days=21, seed=11, end=FIXED_END))
    inter = build_interactions(ds.events, ds.items)
    return {"ds": ds, "inter": inter, "split": TemporalSplit.from_interactions(inter, PARAMS.label_days)}


def _sorted(df: pl.DataFrame) -> pl.DataFrame:
    return df.select(sorted(df.columns)).sort("user_id", "item_id")


def test_point_in_time_for_some_users_equals_the_full_build_for_them(world):
    ds, inter, cutoff = world["ds"], world["inter"], world["split"].eval_cutoff
    some = ds.users["user_id"].sample(60, seed=1).sort()
    full = PointInTime.build(inter, ds.items, ds.users, cutoff, PARAMS)
    sampled = PointInTime.build(inter, ds.items, ds.users, cutoff, PARAMS, user_ids=some)
    assert sampled.user_features.height == 60 and full.user_features.height == ds.users.height
    expected = full.ranker_frame(some, PARAMS.candidates_per_source)
    assert expected.height > 60 * 20
    assert _sorted(sampled.ranker_frame(some, PARAMS.candidates_per_source)).equals(_sorted(expected))
    # restricting an already-built PointInTime to other users gives the same as building for them
    others = ds.users["user_id"].sample(40, seed=2).sort()
    assert _sorted(sampled.for_users(others, PARAMS).ranker_frame(others, 30)).equals(
        _sorted(full.ranker_frame(others, 30))
    )


def test_training_frame_for_a_sample_equals_the_full_point_in_time_restricted_to_it(world):
    ds, inter, split = world["ds"], world["inter"], world["split"]
    labels = label_window(inter, split.train_cutoff, split.eval_cutoff)
    assert labels["user_id"].n_unique() > PARAMS.max_training_users  # the sample is a real sample
    frame = training_frame(
        inter, ds.items, ds.users, split.train_cutoff, split.eval_cutoff, PARAMS, PARAMS.max_training_users
    )
    sample = label_users(labels, PARAMS.max_training_users, PARAMS.seed)
    assert frame["user_id"].unique().sort().equals(sample.alias("user_id"))
    # the frame as it was built before per-user tables were restricted: everyone's PointInTime
    full = PointInTime.build(inter, ds.items, ds.users, split.train_cutoff, PARAMS)
    excluded = recently_completed(inter, split.train_cutoff, PARAMS.recent_exclusion_days)
    expected = (
        full.ranker_frame(sample, PARAMS.candidates_per_source)
        .join(excluded, on=["user_id", "item_id"], how="anti")
        .join(labels, on=["user_id", "item_id"], how="left")
        .with_columns(relevance=pl.col("relevance").fill_null(0))
    )
    assert _sorted(frame.drop("feature_cutoff")).equals(_sorted(expected))
    assert frame["relevance"].sum() > 0


def test_holdout_is_sampled_and_evaluated_on_the_same_users(world):
    ds, inter, split = world["ds"], world["inter"], world["split"]
    rows = build_training_set(inter, ds.items, ds.users, PARAMS)
    holdout = rows.filter(pl.col("split") == "eval")
    truth_users = label_window(inter, split.eval_cutoff, split.end)["user_id"].n_unique()
    assert truth_users > PARAMS.max_training_users
    assert holdout["user_id"].n_unique() == PARAMS.max_training_users
    model = train_ranker(rows.filter(pl.col("split") == "train"), PARAMS)
    table, recall = evaluate_holdout(score_frame(model, holdout), inter, ds.items, ds.users, PARAMS)
    assert set(table["model"]) == {"ranker", "popularity"}
    assert 0.0 < recall["all"] <= 1.0
    # the same evaluation with no cap: every label user, more rows, metrics of the same kind
    uncapped = replace(PARAMS, max_training_users=0)
    full_rows = build_training_set(inter, ds.items, ds.users, uncapped).filter(pl.col("split") == "eval")
    assert full_rows["user_id"].n_unique() == truth_users
    full_table, _ = evaluate_holdout(score_frame(model, full_rows), inter, ds.items, ds.users, uncapped)
    assert full_table.height == table.height


def test_recommend_in_chunks_equals_scoring_everyone_at_once(world):
    ds, inter, split = world["ds"], world["inter"], world["split"]
    model = train_ranker(
        training_frame(inter, ds.items, ds.users, split.eval_cutoff, split.end, PARAMS, PARAMS.max_training_users),
        PARAMS,
    )
    cutoff = split.end
    excluded = recently_completed(inter, cutoff, PARAMS.recent_exclusion_days)
    full = PointInTime.build(inter, ds.items, ds.users, cutoff, PARAMS)
    frame = full.ranker_frame(ds.users["user_id"], PARAMS.candidates_per_source)
    expected = top_n(score_frame(model, frame.join(excluded, on=["user_id", "item_id"], how="anti")), PARAMS.top_n)
    pit = PointInTime.build(inter, ds.items, ds.users, cutoff, PARAMS, user_ids=[])
    chunked = recommend(model, pit, ds.users["user_id"], excluded, PARAMS, chunk_users=73)
    assert chunked.height == expected.height > ds.users.height
    assert chunked.equals(expected)
    # the serving step reads the history sorted by user: chunks take slices of it, with the same answer
    by_user = inter.sort("user_id", maintain_order=True)
    assert by_user["user_id"].flags["SORTED_ASC"]
    pit = PointInTime.build(by_user, ds.items, ds.users, cutoff, PARAMS, user_ids=[])
    assert recommend(model, pit, ds.users["user_id"], excluded, PARAMS, chunk_users=73).equals(expected)


def test_rows_of_users_on_a_user_sorted_frame_equals_the_semi_join(world):
    inter = world["inter"]
    users = inter["user_id"].unique().sort()
    by_user = read_history(inter, by_user=True)
    assert by_user["user_id"].flags["SORTED_ASC"] and by_user.height == inter.height
    for who in (users.slice(10, 37), users.gather([3, 90, 91, 400]), pl.Series(["nobody"]), users.head(0)):
        want = inter.select(by_user.columns).join(pl.DataFrame({"user_id": who}), on="user_id", how="semi")
        got = rows_of_users(by_user, who)
        assert got.height == want.height
        assert got.equals(want.sort("user_id", maintain_order=True))
        assert rows_of_users(inter, who).equals(inter.join(pl.DataFrame({"user_id": who}), on="user_id", how="semi"))


def _read_events(zone: LocalLandingZone) -> pl.DataFrame:
    files = zone.list_files(EVENTS_PREFIX)
    assert all(partition_key_of(f.key) for f in files)
    return pl.concat([pl.read_parquet(io.BytesIO(zone.read_bytes(f.key))) for f in files])


@pytest.mark.parametrize("tastes", ["profile", "latent"])
def test_generate_to_landing_writes_the_same_events_as_generate(tmp_path, tastes):
    cfg = GeneratorConfig(n_users=300, days=3, seed=5, end=FIXED_END, tastes=tastes)
    ds = generate(cfg, chunk_users=120)
    zone = LocalLandingZone(str(tmp_path))
    counts = generate_to_landing(cfg, zone, chunk_users=120)
    written = _read_events(zone)
    assert counts.events == written.height == ds.events.height
    assert counts.files == len(zone.list_files(EVENTS_PREFIX)) + 2
    order = ["event_time", "event_id"]
    assert written.sort(order).equals(ds.events.select(list(schemas.RAW_EVENT_SCHEMA)).sort(order))
    items = pl.read_parquet(io.BytesIO(zone.read_bytes(zone.list_files(ITEMS_PREFIX)[0].key)))
    users = pl.read_parquet(io.BytesIO(zone.read_bytes(zone.list_files(USERS_PREFIX)[0].key)))
    assert items.equals(ds.items) and users.equals(ds.users)
    # one file per (arrival hour, chunk): three chunks, so more files than hours
    hours = {partition_key_of(f.key) for f in zone.list_files(EVENTS_PREFIX)}
    assert len(hours) < counts.files - 2 <= 3 * len(hours)


def _content_by_joins(ctx, user_ids: pl.DataFrame, n: int) -> pl.DataFrame:
    """The content source as it was written before (a join per facet, a group-by, a sort): the reference."""
    items = ctx.items.join(_released(ctx), on="item_id", how="semi")
    parts = [
        ctx.affinities[facet]
        .join(user_ids, on="user_id", how="semi")
        .join(items.select("item_id", facet), on=facet)
        .select("user_id", "item_id", s=pl.col(f"aff_{facet}") * weight)
        for facet, weight in CONTENT_FACETS
    ]
    # rounded like the source: sums of the same shares in another order differ in the last bits
    scores = pl.concat(parts).group_by("user_id", "item_id").agg(score=pl.col("s").sum().round(12))
    return _ranked(scores, ["user_id"], "content", n)


def test_content_source_equals_the_join_and_group_by_reference(world, monkeypatch):
    ds, inter, cutoff = world["ds"], world["inter"], world["split"].eval_cutoff
    monkeypatch.setattr(candidates, "CONTENT_BLOCK_USERS", 37)  # several blocks
    ctx = PointInTime.build(inter, ds.items, ds.users, cutoff, PARAMS).candidates
    who = pl.DataFrame({"user_id": ds.users["user_id"].sample(150, seed=4)})
    got = source_content(ctx, who, 25).sort("user_id", "rank_content")
    expected = _content_by_joins(ctx, who, 25).sort("user_id", "rank_content")
    assert got.height == expected.height > 150 * 10
    assert got.select("user_id", "item_id", "rank_content").equals(
        expected.select("user_id", "item_id", "rank_content")
    )
    assert (got["score_content"] - expected["score_content"]).abs().max() < 1e-12


def test_features_from_the_pruned_history_scan_equal_those_from_the_full_table(world, tmp_path):
    """Steps read interactions as a lazy scan of the lake with only HISTORY_COLUMNS (and a window where
    they need one): same features, training rows and outcomes as from the whole table in memory."""
    from recsys_platform import experiments, training
    from recsys_platform.features import (
        HISTORY_COLUMNS,
        POSITIVE_COLUMNS,
        item_features,
        latest_event_time,
        read_history,
        user_features,
    )

    ds, inter, cutoff = world["ds"], world["inter"], world["split"].end
    inter.write_parquet(tmp_path / "interactions.parquet", statistics=True)
    scan = pl.scan_parquet(tmp_path / "interactions.parquet")
    pruned = read_history(scan)
    assert pruned.columns == list(HISTORY_COLUMNS) and pruned.height == inter.height
    assert latest_event_time(scan) == inter["event_time"].max()
    # (their row order is not fixed, even between two calls on the same frame)
    got, expected = user_features(pruned, ds.users, ds.items, cutoff), user_features(inter, ds.users, ds.items, cutoff)
    assert got.sort("user_id").equals(expected.sort("user_id"))
    got, expected = item_features(pruned, ds.items, cutoff), item_features(inter, ds.items, cutoff)
    assert got.sort("item_id").equals(expected.sort("item_id"))
    positive = read_history(scan, POSITIVE_COLUMNS, positive_only=True)
    assert positive.height == inter.filter(pl.col("weight") > 0).height
    pop = training.popularity_table(inter, ds.users, cutoff)
    assert training.popularity_table(positive, ds.users, cutoff).equals(pop)
    assert build_training_set(pruned, ds.items, ds.users, PARAMS).equals(
        build_training_set(inter, ds.items, ds.users, PARAMS)
    )
    # experiment outcomes from the window after the first exposure equal those from every event
    exposed_at = inter["event_time"].max() - timedelta(days=3)
    who = ds.users.head(200).select("user_id")
    exposed = who.with_columns(experiment=pl.lit("x"), arm=pl.lit("a"), exposed_at=pl.lit(exposed_at))
    end = cutoff
    window = read_history(scan, ("user_id", "event_type", "event_time"), exposed["exposed_at"].min(), end)
    assert window.height < inter.height / 3
    outcomes = experiments.user_outcomes(exposed, window, end)
    assert outcomes.equals(experiments.user_outcomes(exposed, inter, end))
    assert outcomes["content_starts"].sum() > 0
