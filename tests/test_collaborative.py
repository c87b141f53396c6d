"""Hand-checkable behaviour of the collaborative candidate sources."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from recsys_platform.collaborative import (
    fit_ease,
    fit_item_cooccurrence,
    fit_popularity,
    popularity_scores,
    top_k_from_scores,
)
from recsys_platform.factorization import fit_ials
from recsys_platform.temporal import (
    ease_from_gram,
    row_normalise,
    sequence_cooccurrence,
    session_aggregate,
    session_matrix,
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


# --- time-aware item-item signals and iALS ------------------------------------------------------


def test_session_matrix_splits_on_gap_and_dedupes() -> None:
    # user 0: items 0 and 1 at t=0, item 2 at t=100; user 1: item 1 at t=5 and t=30 (twice in one sitting)
    users, items, times = np.array([0, 0, 0, 1, 1]), np.array([0, 1, 2, 1, 1]), np.array([0, 0, 100, 5, 30])
    sessions, owners = session_matrix(users, items, times, n_items=3, max_gap_s=60)
    assert sessions.toarray().tolist() == [[1, 1, 0], [0, 0, 1], [0, 1, 0]]
    assert owners.tolist() == [0, 0, 1]
    same_second, _ = session_matrix(users, items, times, n_items=3, max_gap_s=0)
    assert same_second.shape[0] == 4  # {0,1}@0, {2}@100, {1}@5, {1}@30


def test_sequence_cooccurrence_counts_neighbours_with_decay() -> None:
    # one user rates 0, 1, 2 in that order: time decides, not the order of the arrays
    users, items, times = np.zeros(3, int), np.array([2, 0, 1]), np.array([30, 10, 20])
    adjacent = sequence_cooccurrence(users, items, times, n_items=3, window=1)
    assert adjacent.tolist() == [[0, 1, 0], [1, 0, 1], [0, 1, 0]]
    decayed = sequence_cooccurrence(users, items, times, n_items=3, window=2, decay=0.5)
    assert decayed[0, 2] == decayed[2, 0] == 0.5 and decayed[0, 1] == 1.0
    assert row_normalise(adjacent)[1].tolist() == [0.5, 0.0, 0.5]


def test_ease_from_gram_matches_fit_ease(interactions: pl.DataFrame) -> None:
    model = fit_ease(interactions, l2=3.0)
    x = model.data.matrix.toarray().astype(np.float64)
    np.testing.assert_allclose(ease_from_gram(x.T @ x, 3.0), model.weights, atol=1e-5)


def test_session_aggregate_gives_each_sitting_norm_sqrt_size() -> None:
    sessions = sp.csr_matrix(np.array([[1, 1, 0], [0, 0, 1]], np.float32))
    weights = np.array([[0, 2, 0], [2, 0, 0], [3, 4, 0]], np.float64)
    out = session_aggregate(sessions, np.array([0, 1]), weights, n_users=2)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), [np.sqrt(2), 1.0])
    np.testing.assert_allclose(out[1], [0.6, 0.8, 0.0])


def test_ials_separates_two_taste_blocks() -> None:
    # users 0-9 like items 0-4, users 10-19 like items 5-9; each user misses one item of their block
    rows, cols = [], []
    for u in range(20):
        block = range(0, 5) if u < 10 else range(5, 10)
        rows += [u] * 4
        cols += [i for i in block if i != (u % 5) + (0 if u < 10 else 5)]
    frame = pl.DataFrame({"user_id": [f"u{r:02d}" for r in rows], "item_id": [f"i{c}" for c in cols]})
    model = fit_ials(frame, factors=4, alpha=10.0, reg=1.0, iterations=10, seed=0)
    recs = model.recommend(None, k=1)
    expected = {f"u{u:02d}": f"i{(u % 5) + (0 if u < 10 else 5)}" for u in range(20)}
    assert dict(zip(recs["user_id"], recs["item_id"], strict=True)) == expected
    again = fit_ials(frame, factors=4, alpha=10.0, reg=1.0, iterations=10, seed=0)
    np.testing.assert_array_equal(model.factors.user_factors, again.factors.user_factors)
