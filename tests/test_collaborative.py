"""Hand-checkable behaviour of the item co-occurrence model behind `similar_items` (the candidate sources of
the recommender are tested in test_model_sources.py)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recsys_platform.features.item_cooccurrence import (
    build_interaction_matrix,
    fit_item_cooccurrence,
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


def test_recommend_is_deterministic_and_skips_unknown_users(interactions: pl.DataFrame) -> None:
    model = fit_item_cooccurrence(interactions, "cosine")
    first = model.recommend(["u4", "nobody", "u1"], k=3)
    second = model.recommend(["u4", "nobody", "u1"], k=3)
    assert first.equals(second)
    assert set(first["user_id"]) == {"u4", "u1"}


def test_exclude_seen_false_keeps_seen_items(interactions: pl.DataFrame) -> None:
    # cosine, u1 saw a and b: a = sim(a,a) 1 + sim(b,a) 3/sqrt(12) = 1.866, b the same, c = 1/4 + 1/sqrt(12)
    # = 0.539, d = 0 (not returned); ties by item index
    model = fit_item_cooccurrence(interactions, "cosine")
    kept = model.recommend(["u1"], k=4, exclude_seen=False)
    assert kept["item_id"].to_list() == ["a", "b", "c"]
    assert kept["score"].to_list() == pytest.approx([1 + 3 / 12**0.5, 1 + 3 / 12**0.5, 0.25 + 1 / 12**0.5], rel=1e-6)
    assert model.recommend(["u1"], k=4)["item_id"].to_list() == ["c"]


def test_interaction_matrix_sums_duplicate_pairs_on_sorted_id_maps(interactions: pl.DataFrame) -> None:
    data = build_interaction_matrix(interactions.vstack(interactions.head(1)))  # (u1, a) twice
    assert data.item_index == {"a": 0, "b": 1, "c": 2, "d": 3}
    assert data.user_index == {f"u{i}": i - 1 for i in range(1, 8)}
    assert data.matrix[0].toarray().tolist() == [[2.0, 1.0, 0.0, 0.0]]
    assert build_interaction_matrix(interactions.vstack(interactions.head(1)), binary=True).matrix.max() == 1.0


def test_top_k_from_scores_breaks_ties_by_index() -> None:
    idx, vals = top_k_from_scores(np.array([[1.0, 3.0, 3.0, 0.5]], np.float32), 3)
    assert idx.tolist() == [[1, 2, 0]]
    assert vals.tolist() == [[3.0, 3.0, 1.0]]
