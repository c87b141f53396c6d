"""Hand-checkable behaviour of the collaborative candidate sources."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recsys_platform.collaborative import (
    fit_ease,
    fit_item_cooccurrence,
    fit_popularity,
    popularity_scores,
    top_k_from_scores,
)

# a and b are always consumed together; c is popular on its own; d is rare.
PAIRS = [
    ("u1", "a"),
    ("u1", "b"),
    ("u2", "a"),
    ("u2", "b"),
    ("u3", "a"),
    ("u3", "b"),
    ("u3", "c"),
    ("u4", "c"),
    ("u5", "c"),
    ("u6", "c"),
    ("u6", "d"),
    ("u7", "a"),
]


@pytest.fixture
def interactions() -> pl.DataFrame:
    users, items = zip(*PAIRS, strict=True)
    return pl.DataFrame({"user_id": users, "item_id": items, "weight": [1.0] * len(PAIRS)})


def test_popularity_scores_counts_distinct_users(interactions: pl.DataFrame) -> None:
    # a: u1,u2,u3,u7 = 4; c: u3,u4,u5,u6 = 4; b: 3; d: 1. Ties broken by item id.
    scores = popularity_scores(interactions)
    assert scores["item_id"].to_list() == ["a", "c", "b", "d"]
    assert scores["score"].to_list() == [4.0, 4.0, 3.0, 1.0]
    assert scores["rank"].to_list() == [1, 2, 3, 4]


def test_popularity_excludes_seen_and_serves_unknown_users(interactions: pl.DataFrame) -> None:
    recs = fit_popularity(interactions).recommend(["u1", "stranger"], k=2)
    assert recs.filter(pl.col("user_id") == "u1")["item_id"].to_list() == ["c", "d"]
    assert recs.filter(pl.col("user_id") == "stranger")["item_id"].to_list() == ["a", "c"]


@pytest.mark.parametrize("similarity", ["jaccard", "lift", "cosine"])
def test_cooccurrence_recommends_co_consumed_item(interactions: pl.DataFrame, similarity: str) -> None:
    # u7 only saw a; b co-occurs with a 3 times, c once (u3), d never -> b first, d never.
    model = fit_item_cooccurrence(interactions, similarity=similarity)
    recs = model.recommend(["u7"], k=3)
    assert recs["item_id"][0] == "b"
    assert "a" not in recs["item_id"].to_list()
    assert "d" not in recs["item_id"].to_list()  # no co-occurrence with a: score 0, not returned
    assert recs["rank"].to_list() == list(range(1, recs.height + 1))


def test_cooccurrence_jaccard_values(interactions: pl.DataFrame) -> None:
    # jaccard(a, b) = |{u1,u2,u3}| / |{u1,u2,u3,u7}| = 3/4; jaccard(a, c) = 1 / (4 + 4 - 1) = 1/7
    sims = fit_item_cooccurrence(interactions, "jaccard").similar_items(["a"], k=5)
    assert sims["similar_item_id"].to_list() == ["b", "c"]
    assert sims["score"].to_list() == pytest.approx([3 / 4, 1 / 7], rel=1e-6)


def test_ease_recommends_co_consumed_item_and_excludes_seen(interactions: pl.DataFrame) -> None:
    model = fit_ease(interactions, l2=1.0)
    recs = model.recommend(["u7", "u4"], k=2)
    assert recs.filter(pl.col("user_id") == "u7")["item_id"][0] == "b"
    seen = interactions.select("user_id", "item_id")
    assert recs.join(seen, on=["user_id", "item_id"]).is_empty()
    assert model.item_index == {"a": 0, "b": 1, "c": 2, "d": 3}
    assert set(model.user_index) == {f"u{i}" for i in range(1, 8)}


def test_ease_weights_have_zero_diagonal_and_match_closed_form(interactions: pl.DataFrame) -> None:
    model = fit_ease(interactions, l2=2.0)
    x = model.data.matrix.toarray().astype(np.float64)
    p = np.linalg.inv(x.T @ x + 2.0 * np.eye(4))
    expected = np.eye(4) - p / np.diag(p)  # Steck 2019, eq. 8
    np.testing.assert_allclose(model.weights, expected, atol=1e-5)
    assert np.all(np.diag(model.weights) == 0)


def test_recommend_is_deterministic_and_skips_unknown_users(interactions: pl.DataFrame) -> None:
    model = fit_item_cooccurrence(interactions, "cosine")
    first = model.recommend(["u4", "nobody", "u1"], k=3)
    second = model.recommend(["u4", "nobody", "u1"], k=3)
    assert first.equals(second)
    assert set(first["user_id"]) == {"u4", "u1"}


def test_exclude_seen_false_keeps_seen_items(interactions: pl.DataFrame) -> None:
    recs = fit_popularity(interactions).recommend(["u1"], k=4, exclude_seen=False)
    assert recs["item_id"].to_list() == ["a", "c", "b", "d"]


def test_top_k_from_scores_breaks_ties_by_index() -> None:
    idx, vals = top_k_from_scores(np.array([[1.0, 3.0, 3.0, 0.5]], np.float32), 3)
    assert idx.tolist() == [[1, 2, 0]]
    assert vals.tolist() == [[3.0, 3.0, 1.0]]
