"""Bounded-memory paths give the same answers as the all-at-once ones: candidates and features built for a
block or a sample of users, recommendations scored in user blocks, the content source as a sparse product,
the generator writing chunk by chunk, steps reading a pruned scan of the history."""

import dataclasses
import io
from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from recsys_platform import schemas
from recsys_platform.dev.generator import GeneratorConfig, generate, generate_to_landing
from recsys_platform.features.tables import build_interactions, read_history, rows_of_users, user_sample
from recsys_platform.ingest.landing import EVENTS_PREFIX, ITEMS_PREFIX, USERS_PREFIX, LocalLandingZone, partition_key_of
from recsys_platform.model import procedure
from recsys_platform.model.candidates import FEATURES, pairs_frame
from recsys_platform.model.params import ModelParams
from recsys_platform.model.profiles import Profiles
from recsys_platform.model.ranker import ColumnScorer
from recsys_platform.model.recommender import Recommender, fit_serving
from recsys_platform.model.sources import fit_content
from tests.conftest import FIXED_END

# the per-user window alone: this file checks the sampling of its users
PARAMS = ModelParams(ials_factors=8, ials_iterations=3, depth=20, training_windows="temporal")
MAX_USERS = 120


@pytest.fixture(scope="module")
def world() -> dict:
    """A small dataset, its interactions and a fitted recommender as of the end of the data."""
    ds = generate(GeneratorConfig(n_users=500, days=21, seed=11, end=FIXED_END))
    inter = build_interactions(ds.events, ds.items)
    end = inter["event_time"].max() + timedelta(microseconds=1)
    rec = fit_serving(inter, ds.items, ds.users, end, PARAMS, ColumnScorer("score_ease_recent"))
    return {"ds": ds, "inter": inter, "end": end, "rec": rec}


def _rows(rec: Recommender, rows: np.ndarray, cutoff_s: np.ndarray) -> pl.DataFrame:
    """The candidate rows (user, item, every feature) of global user rows `rows`, built as one block."""
    profiles, block = rec.block(rows, cutoff_s)
    pairs = pairs_frame(block, profiles, rec.vocab.user_ids, rec.vocab.item_ids)
    return pl.concat([pairs, pl.DataFrame(block.features, schema=list(FEATURES))], how="horizontal")


def test_candidates_of_some_users_equal_the_full_block_restricted_to_them(world):
    """Nothing of a user's candidates or features depends on the other users of the block, even when each
    user is scored as of their own time (recommend's cutoff_s; here just after each user's latest event)."""
    rec = world["rec"]
    everyone = np.arange(rec.vocab.n_users)
    last = rec.history.user_last_s()
    as_of = np.where(np.isfinite(last), last + 1e-6, rec.history.cutoff_s)
    # items released between the earliest and the latest of these times: the rule must be per user
    released = rec.catalogue.release_s
    assert ((released > np.nanmin(as_of) - 86400) & (released < np.nanmax(as_of) - 86400)).sum() > 5
    full = _rows(rec, everyone, as_of)
    rng = np.random.default_rng(1)
    for some in (np.sort(rng.choice(everyone, 60, replace=False)), np.array([17]), everyone[::-7]):
        expected = full.join(pl.DataFrame({"user_id": rec.vocab.user_ids.gather(some)}), on="user_id", how="semi")
        assert expected.height > len(some) * PARAMS.depth
        got = _rows(rec, some, as_of[some])
        assert got.sort("user_id", "item_id").equals(expected.sort("user_id", "item_id"))


def test_training_set_for_a_sample_equals_the_full_build_restricted_to_it(world):
    ds, inter = world["ds"], world["inter"]
    split = procedure.per_user_split(inter, name="training")
    truth_users = split.truth(inter)["user_id"].unique().sort()
    assert truth_users.len() > MAX_USERS  # the sample is a real sample
    frame = procedure.training_set(inter, ds.items, ds.users, PARAMS, MAX_USERS)
    sample = truth_users.sample(MAX_USERS, seed=PARAMS.seed).sort()
    assert frame["user_id"].unique().sort().equals(sample)
    # one window for the capped build (206 users held out fill a window of 120); without max_users a window may label
    # label_users (1,000), more than this world holds, so the full build adds the fifth before: compare the newest
    full = procedure.training_set(inter, ds.items, ds.users, PARAMS, 0)
    assert set(frame["window"]) == {"training"} and set(full["window"]) == {"training", "training-1"}
    full = full.filter(pl.col("window") == "training")
    assert full["user_id"].n_unique() == truth_users.len()
    expected = full.join(pl.DataFrame({"user_id": sample}), on="user_id", how="semi")
    # label_pairs counts the held-out pairs of the users trained on, so it is the one column that differs
    assert frame.drop("label_pairs").equals(expected.drop("label_pairs"))
    assert frame["relevance"].sum() > 0
    held = split.truth(inter).join(pl.DataFrame({"user_id": sample}), on="user_id", how="semi")
    assert frame["label_pairs"].unique().to_list() == [held.height]


def test_evaluation_is_capped_and_every_model_scored_on_the_same_users(world, monkeypatch):
    """With max_users, evaluate scores a seeded sample of the held-out users, the same users for the ranker and
    every baseline; without it, every held-out user."""
    from recsys_platform.model import evaluation

    ds, inter = world["ds"], world["inter"]
    calls: list[tuple[pl.DataFrame, pl.DataFrame]] = []
    real = evaluation.evaluate_all

    def recording(truth, recs, k, **kwargs):
        calls.append((truth, recs))
        return real(truth, recs, k, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate_all", recording)
    truth_users = procedure.split_for("per_user", inter).truth(inter)["user_id"].n_unique()
    assert truth_users > MAX_USERS
    table, facts = procedure.evaluate(inter, ds.items, ds.users, "per_user", PARAMS, max_users=MAX_USERS)
    assert facts["test_users"] == MAX_USERS
    assert set(table["model"]) == {"ranker", *procedure.SCORED_COLUMNS}
    assert len(calls) == 1 + len(procedure.SCORED_COLUMNS)
    first_truth = calls[0][0]
    assert first_truth["user_id"].n_unique() == MAX_USERS
    for truth, recs in calls:
        assert truth.equals(first_truth)
        assert set(recs["user_id"]) <= set(first_truth["user_id"])
        assert recs["user_id"].n_unique() > 0.9 * MAX_USERS
    calls.clear()
    full_table, full_facts = procedure.evaluate(inter, ds.items, ds.users, "per_user", PARAMS, max_users=0)
    assert full_facts["test_users"] == truth_users == calls[0][0]["user_id"].n_unique()
    assert full_table.height == table.height


def test_recommend_in_blocks_equals_scoring_everyone_at_once(world):
    ds, inter, end, rec = world["ds"], world["inter"], world["end"], world["rec"]
    who = ds.users["user_id"]
    expected = rec.recommend(who, 20, block_users=10_000)
    assert expected.height > who.len() * 10
    assert rec.recommend(who, 20, block_users=73).equals(expected)
    # the input order of the history does not matter either (serving reads it sorted by user)
    by_user = inter.sort("user_id", maintain_order=True)
    again = fit_serving(by_user, ds.items, ds.users, end, PARAMS, ColumnScorer("score_ease_recent"))
    assert again.recommend(who, 20, block_users=73).equals(expected)


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


def test_content_source_equals_the_join_and_group_by_reference(world):
    """The content source as a sparse product equals the same scores written as joins: per user and facet,
    the share of their distinct items with each value, joined to the items with that value, weighted, summed."""
    ds, inter, end, rec = world["ds"], world["inter"], world["end"], world["rec"]
    source = fit_content(rec.history, rec.catalogue, PARAMS)
    rows = np.sort(np.random.default_rng(4).choice(rec.vocab.n_users, 150, replace=False))
    who = pl.DataFrame({"user_id": rec.vocab.user_ids.gather(rows)})
    got = source.score(Profiles.of(rec.history, rows))
    pairs = (
        inter.filter(pl.col("event_time") < end)
        .join(who, on="user_id", how="semi")
        .select("user_id", "item_id")
        .unique()
        .with_columns(n=pl.len().over("user_id"))
    )
    parts = []
    for facet, weight in source.weights.items():
        values = ds.items.select("item_id", facet).drop_nulls()
        shares = pairs.join(values, on="item_id").group_by("user_id", facet).agg(share=pl.len() / pl.col("n").first())
        parts.append(shares.join(values, on=facet).select("user_id", "item_id", s=pl.col("share") * weight))
    expected = pl.concat(parts).group_by("user_id", "item_id").agg(score=pl.col("s").sum())
    assert expected.height > 150 * 50
    r = rows.searchsorted(rec.vocab.user_rows(expected["user_id"]))
    c = rec.vocab.item_cols(expected["item_id"])
    np.testing.assert_allclose(got[r, c], expected["score"].to_numpy(), rtol=1e-5)
    # and nothing else is a content candidate
    assert np.isfinite(got).sum() == expected.height


def test_features_from_the_pruned_history_scan_equal_those_from_the_full_table(world, tmp_path):
    """Steps read interactions as a lazy scan of the lake with only HISTORY_COLUMNS (and a window where
    they need one): same features, training rows and outcomes as from the whole table in memory."""
    from recsys_platform.experiments import ab_tests as experiments
    from recsys_platform.features.tables import (
        HISTORY_COLUMNS,
        POSITIVE_COLUMNS,
        item_features,
        latest_event_time,
        read_history,
        user_features,
    )
    from recsys_platform.model.fallback import popularity_table

    ds, inter, cutoff = world["ds"], world["inter"], world["end"]
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
    pop = popularity_table(inter, ds.users, cutoff)
    assert popularity_table(positive, ds.users, cutoff).equals(pop)
    assert procedure.training_set(pruned, ds.items, ds.users, PARAMS, MAX_USERS).equals(
        procedure.training_set(inter, ds.items, ds.users, PARAMS, MAX_USERS)
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


def test_a_user_sample_is_seeded_sorted_and_taken_only_over_the_cap(world):
    inter = world["inter"]
    every = inter["user_id"].unique()
    sample = user_sample(inter.lazy(), 50, seed=7)
    first = sample.ids
    assert first.len() == 50 and first.is_sorted() and first.is_in(every.implode()).all()
    assert sample.of == every.len() and sample.weight == every.len() / 50
    assert sample.keep(inter)["user_id"].unique().sort().equals(first)
    assert first.equals(user_sample(inter, 50, seed=7).ids)  # the same users every time
    assert not first.equals(user_sample(inter, 50, seed=8).ids)
    assert user_sample(inter, every.len(), seed=7) is None
    assert user_sample(inter, 0, seed=7) is None


def _upstream(world, signals: pl.DataFrame) -> list:
    """Stand-ins for the training steps' upstream assets, holding the world's tables."""
    import dagster as dg

    ds, inter = world["ds"], world["inter"]

    @dg.asset(name="interactions")
    def interactions_() -> pl.LazyFrame:
        return inter.lazy()

    @dg.asset(name="items")
    def items_() -> pl.DataFrame:
        return ds.items

    @dg.asset(name="users")
    def users_() -> pl.DataFrame:
        return ds.users

    @dg.asset(name="session_signals")
    def session_signals_() -> pl.LazyFrame:
        return signals.lazy()

    return [interactions_, items_, users_, session_signals_]


def _materialize(assets: list, tmp_path, name: str, **pipeline_settings):
    import dagster as dg

    from resources import MlflowResource, PipelineResource

    pipeline = PipelineResource(lake_url=str(tmp_path), catalog_path=str(tmp_path / "c.duckdb"), **pipeline_settings)
    result = dg.materialize(
        assets,
        resources={
            "mlflow": MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"),
            "pipeline": pipeline,
            "io_manager": dg.FilesystemIOManager(base_dir=str(tmp_path / f"io-{name}")),
        },
    )
    assert result.success
    return result


def test_the_holdouts_fit_and_score_only_a_sample_of_users_above_max_holdout_users(world, tmp_path, monkeypatch):
    from assets.training import holdouts
    from resources import PipelineResource

    seen = {}

    def evaluate_protocols(interactions, items, users, protocols, *args):
        seen.update(interactions=interactions, users=users, signals=args[-1])
        row = {"protocol": "per_user", "model": "ranker", "metric": "ndcg@10", "value": 0.5}
        return {p: (pl.DataFrame([{**row, "protocol": p}]), {}) for p in protocols}

    monkeypatch.setattr(procedure, "evaluate_protocols", evaluate_protocols)
    ds, inter = world["ds"], world["inter"]
    signals = pl.DataFrame({"user_id": inter["user_id"].unique().sort()}).with_columns(event_type=pl.lit("search"))
    upstream = _upstream(world, signals)

    def run(cap: int) -> dict:
        seen.clear()
        result = _materialize([*upstream, holdouts], tmp_path, f"h{cap}", max_holdout_users=cap)
        return {"metadata": result.asset_materializations_for_node("holdouts")[0].metadata, **seen}

    sampled = run(100)
    want = user_sample(inter, 100, seed=PipelineResource(lake_url="", catalog_path="").seed).ids
    for key in ("interactions", "users", "signals"):
        assert sampled[key]["user_id"].unique().sort().equals(want), key
    # every row of a sampled user is kept, no other
    assert sampled["interactions"].height == inter.filter(pl.col("user_id").is_in(want.implode())).height
    assert sampled["metadata"]["sampled_users"].value == 100
    whole = run(0)
    assert whole["interactions"].height == inter.height and whole["users"].height == ds.users.height
    assert whole["metadata"]["sampled_users"].value == 0


def test_model_params_and_training_set_fit_on_a_weighted_sample_above_max_fit_users(world, tmp_path, monkeypatch):
    """Above max_fit_users, both steps read a seeded sample of users (every row of theirs, signals included) and
    pass how many users each stands for; at or below it, everyone at weight 1."""
    from assets.training import model_params, training_set
    from resources import PipelineResource

    seen: dict = {}

    def choose_params(interactions, items, users, base, max_users, user_weight=1.0):
        seen["model_params"] = {"interactions": interactions, "users": users, "weight": user_weight}
        return base, {"repeat_share": 0.0, "tuning_ndcg@10": {}}

    def training_set_(interactions, items, users, params, max_users, signals=None, user_weight=1.0):
        seen["training_set"] = {"interactions": interactions, "users": users, "signals": signals, "weight": user_weight}
        return pl.DataFrame({"user_id": ["u"], "relevance": [1], "label_pairs": [1]})

    monkeypatch.setattr(procedure, "choose_params", choose_params)
    monkeypatch.setattr(procedure, "training_set", training_set_)
    ds, inter = world["ds"], world["inter"]
    signals = pl.DataFrame({"user_id": inter["user_id"].unique().sort()}).with_columns(event_type=pl.lit("search"))
    upstream = _upstream(world, signals)
    n = inter["user_id"].n_unique()

    _materialize([*upstream, model_params, training_set], tmp_path, "sampled", max_fit_users=100)
    want = user_sample(inter, 100, seed=PipelineResource(lake_url="", catalog_path="").seed).ids
    for step in ("model_params", "training_set"):
        got = seen[step]
        assert got["weight"] == n / 100, step
        assert got["interactions"].height == inter.filter(pl.col("user_id").is_in(want.implode())).height, step
        assert got["users"]["user_id"].unique().sort().equals(want), step
    assert seen["training_set"]["signals"]["user_id"].unique().sort().equals(want)

    seen.clear()
    _materialize([*upstream, model_params, training_set], tmp_path, "whole", max_fit_users=n)
    for step in ("model_params", "training_set"):
        got = seen[step]
        assert got["weight"] == 1.0 and got["interactions"].height == inter.height, step
        assert got["users"].height == ds.users.height, step


def test_a_sample_whose_users_stand_for_w_users_each_fits_as_w_copies_of_them(world):
    """PairHistory.user_weight: every item-level count, co-occurrence and source fitted on a history whose users
    stand for 3 users each equals the same fit on a history holding 3 copies of each user, so training windows cut
    from a sample (max_fit_users) give features at the whole base's scale."""
    from recsys_platform.model.candidates import ItemStats
    from recsys_platform.model.catalogue import Catalogue
    from recsys_platform.model.history import PairHistory
    from recsys_platform.model.recommender import build_vocab
    from recsys_platform.model.sources import _gram, fit_sources

    ds, inter, end = world["ds"], world["inter"], world["end"]
    copies = 3

    def copied(frame: pl.DataFrame) -> pl.DataFrame:
        return pl.concat([frame.with_columns(pl.col("user_id") + f"#{k}") for k in range(copies)])

    fits = {}
    for name, data, users, weight in (
        ("weighted", inter, ds.users, float(copies)),
        ("copies", copied(inter), copied(ds.users), 1.0),
    ):
        vocab = build_vocab(data, ds.items, users)
        catalogue = Catalogue.build(vocab, ds.items, users)
        history = PairHistory.build(data, vocab, end, user_weight=weight)
        names = ("pop", "pop_recent", "ease", "knn", "ease_session", "new")
        sources = fit_sources(history, catalogue, PARAMS, names)
        fits[name] = {"history": history, "sources": sources, "stats": ItemStats.fit(history)}
    a, b = fits["weighted"], fits["copies"]
    assert a["history"].item_counts().tolist() == b["history"].item_counts().tolist()
    assert a["history"].item_counts().max() > copies  # the counts are the copies', not the sample's
    np.testing.assert_allclose(_gram(a["history"]), _gram(b["history"]), rtol=1e-12)
    for name in ("pop", "pop_recent", "new"):
        np.testing.assert_allclose(a["sources"][name].scores, b["sources"][name].scores, rtol=1e-6)
    for name in ("ease", "knn", "ease_session"):
        np.testing.assert_allclose(a["sources"][name].weights, b["sources"][name].weights, rtol=1e-4, atol=1e-6)
    for field in ("users", "mean_s", "completion_rate", "bounce_rate", "journey_position"):
        np.testing.assert_allclose(getattr(a["stats"], field), getattr(b["stats"], field), rtol=1e-9)
    # a weight of 1 is the plain history
    plain = PairHistory.build(inter, a["history"].vocab, end)
    assert plain.user_weight == 1.0 and plain.item_counts().tolist() == [c / copies for c in a["history"].item_counts()]


def test_the_pairs_a_history_says_were_played_are_the_events_played_pairs(world):
    from recsys_platform.batch.rules import played_pairs

    rec, inter = world["rec"], world["inter"]
    some = inter["user_id"].unique().sort().gather_every(3)
    got = rec.history.played(rec.vocab.user_rows(some)).sort("user_id", "item_id")
    want = played_pairs(inter.filter(pl.col("user_id").is_in(some.implode()))).sort("user_id", "item_id")
    assert got.height > 100 and got["favourite"].any()
    assert got.equals(want.select(got.columns))


def test_served_lists_scored_a_chunk_of_users_at_a_time_equal_them_scored_at_once(world, monkeypatch):
    """recommendations scores and applies the repeat-listen policy chunk by chunk (SERVED_CHUNK_USERS): the lists
    are those of every user at once, the policy included."""
    from assets import serving
    from recsys_platform.config import PipelineParams

    base = world["rec"]
    # replays are candidates: the policy has work to do
    rec = dataclasses.replace(base, params=base.params.with_(exclude_seen=False))
    params = PipelineParams(top_n=10, max_replays=2, replay_window=5)
    users = world["ds"].users["user_id"]
    whole = serving._served_lists(rec, users, params, True).sort("user_id", "rank")
    monkeypatch.setattr(serving, "SERVED_CHUNK_USERS", 37)
    chunked = serving._served_lists(rec, users, params, True).sort("user_id", "rank")
    assert chunked.equals(whole) and whole["user_id"].n_unique() > 400
    assert whole.group_by("user_id").len()["len"].max() == 10

    def replays_in_top_5(lists: pl.DataFrame) -> pl.Series:
        played = rec.history.played(rec.vocab.user_rows(users)).filter(~pl.col("favourite"))  # favourites exempt
        marked = lists.join(played.select("user_id", "item_id", p=pl.lit(True)), on=["user_id", "item_id"], how="left")
        return marked.filter(pl.col("rank") <= 5).group_by("user_id").agg(pl.col("p").fill_null(False).sum())["p"]

    assert replays_in_top_5(whole).max() == 2  # the policy acted: no more than 2 in the first 5
    assert (replays_in_top_5(serving._served_lists(rec, users, params, False)) > 2).sum() > 10  # where it had to


def test_ials_item_factors_fit_on_a_weighted_user_sample_above_ials_max_users(world):
    """Above `ials_max_users` iALS fits its item factors on a seeded sample of the users with pairs, exactly as on
    a history of those users alone whose users stand for n / cap users each; at or below the cap, on everyone."""
    from recsys_platform.model.catalogue import Catalogue
    from recsys_platform.model.history import PairHistory
    from recsys_platform.model.recommender import build_vocab
    from recsys_platform.model.sources import fit_ials

    ds, inter, end = world["ds"], world["inter"], world["end"]
    vocab = build_vocab(inter, ds.items, ds.users)
    catalogue = Catalogue.build(vocab, ds.items, ds.users)
    history = PairHistory.build(inter, vocab, end)
    active = np.unique(history.user)
    cap = 150
    assert len(active) > 2 * cap
    capped = fit_ials(history, catalogue, PARAMS.with_(ials_max_users=cap))
    chosen = active[np.sort(np.random.default_rng(PARAMS.seed).choice(len(active), cap, replace=False))]
    sampled = inter.filter(pl.col("user_id").is_in(vocab.user_ids.gather(chosen).implode()))
    alone = PairHistory.build(sampled, vocab, end, user_weight=len(active) / cap)
    assert len(np.unique(alone.user)) == cap
    expected = fit_ials(alone, catalogue, PARAMS.with_(ials_max_users=0))
    np.testing.assert_allclose(capped.item_factors, expected.item_factors, rtol=1e-5, atol=1e-6)
    everyone = fit_ials(history, catalogue, PARAMS.with_(ials_max_users=0))
    assert not np.allclose(capped.item_factors, everyone.item_factors, atol=1e-3)  # the cap did act
    at_cap = fit_ials(history, catalogue, PARAMS.with_(ials_max_users=len(active)))
    np.testing.assert_array_equal(at_cap.item_factors, everyone.item_factors)


def test_lists_encoded_a_chunk_of_users_at_a_time_equal_them_encoded_at_once(world, tmp_path):
    """A slot's `recs` namespace (`snapshot.EncodedLists`) gives each user the same JSON as encoding every list at once,
    whether iterated a chunk at a time or looked up one user at a time, and deploys and verifies like a dict."""
    from datetime import UTC, datetime

    from recsys_platform.serve import deployment, snapshot
    from recsys_platform.serve.online_store.sqlite import SQLiteOnlineStore

    rec, ds = world["rec"], world["ds"]
    users = rec.vocab.user_ids.slice(0, 40)
    recs = rec.recommend(users, 7).sample(fraction=1.0, shuffle=True, seed=3)  # rows in no particular order
    meta = ds.items.select("item_id", "content_type", "is_kids")
    when = datetime(2026, 10, 1, tzinfo=UTC)
    expected = snapshot._lists(recs.join(meta, on="item_id", how="left"), "user_id", when)
    lists = snapshot.EncodedLists(recs, "user_id", when, meta, chunk=3)
    assert len(expected) == 40 and len(lists) == 40 and list(lists) == list(expected)
    assert dict(lists.items()) == expected
    assert all(lists[u] == expected[u] for u in list(expected)[::7])
    assert '"content_type"' in lists[users[0]]
    payload = {"recs": lists}
    with SQLiteOnlineStore(tmp_path / "store.sqlite") as store:
        report = deployment.deploy(store, "v1", snapshot.snapshot_id_of(payload, "v1"), payload, batch_size=6)
        assert report.row_counts["recs"] == 40 and report.sample_checked == 40
    assert snapshot.snapshot_id_of(payload, "v1") == snapshot.snapshot_id_of({"recs": expected}, "v1")


def test_a_recommender_fitted_on_a_lazy_scan_equals_one_fitted_on_the_frame(world, tmp_path):
    """fit_serving on a Parquet scan (aggregated into pairs as it is read, as `recommendations` passes the lake's
    interactions) fits the same vocabulary and history and serves the same lists as on the collected frame."""
    from recsys_platform.model.history import PairHistory

    ds, inter, end, rec = world["ds"], world["inter"], world["end"], world["rec"]
    path = tmp_path / "interactions.parquet"
    inter.write_parquet(path)
    lazy = fit_serving(pl.scan_parquet(path), ds.items, ds.users, end, PARAMS, ColumnScorer("score_ease_recent"))
    assert lazy.vocab.user_ids.equals(rec.vocab.user_ids) and lazy.vocab.item_ids.equals(rec.vocab.item_ids)
    for f in dataclasses.fields(PairHistory):
        if f.name not in ("vocab", "cache", "signals"):
            np.testing.assert_array_equal(getattr(lazy.history, f.name), getattr(rec.history, f.name))
    users = rec.vocab.user_ids
    assert lazy.recommend(users, 10).equals(rec.recommend(users, 10))
