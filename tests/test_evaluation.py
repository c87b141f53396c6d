"""Metrics checked against hand-computed values and against scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import ndcg_score

from recsys_platform.model.evaluation import (
    catalog_coverage,
    evaluate_all,
    hit_rate_at_k,
    intra_list_diversity,
    map_at_k,
    mrr_at_k,
    ndcg_at_k,
    novelty,
    precision_at_k,
    recall_at_k,
)

# u1 likes a, b, c; u2 likes d; u3 likes e but gets no recommendations at all.
TRUTH = pl.DataFrame({"user_id": ["u1", "u1", "u1", "u2", "u3"], "item_id": ["a", "b", "c", "d", "e"]})
# u1: a(1) x(2) b(3) -> hits at positions 1 and 3;  u2: y(1) d(2) z(3) -> hit at position 2.
RECS = pl.DataFrame(
    {
        "user_id": ["u1", "u1", "u1", "u2", "u2", "u2"],
        "item_id": ["a", "x", "b", "y", "d", "z"],
        "rank": [1, 2, 3, 1, 2, 3],
    }
)
LOG2_3 = math.log2(3)


def test_precision_at_k() -> None:
    # u1 2/3, u2 1/3, u3 0 -> (2/3 + 1/3 + 0) / 3 = 1/3
    assert precision_at_k(TRUTH, RECS, 3) == pytest.approx(1 / 3)


def test_recall_at_k() -> None:
    # u1 2/3, u2 1/1, u3 0 -> (2/3 + 1) / 3 = 5/9
    assert recall_at_k(TRUTH, RECS, 3) == pytest.approx(5 / 9)


def test_ndcg_at_k() -> None:
    # u1: dcg = 1/log2(2) + 1/log2(4) = 1.5; idcg = 1 + 1/log2(3) + 1/log2(4)
    # u2: dcg = 1/log2(3); idcg = 1;  u3: 0
    u1 = 1.5 / (1 + 1 / LOG2_3 + 0.5)
    u2 = 1 / LOG2_3
    assert ndcg_at_k(TRUTH, RECS, 3) == pytest.approx((u1 + u2) / 3)


def test_map_at_k_divides_by_min_of_relevant_and_k() -> None:
    # k=3: u1 (1/1 + 2/3) / min(3, 3) = 5/9; u2 (1/2) / 1; u3 0 -> (5/9 + 1/2) / 3 = 19/54
    assert map_at_k(TRUTH, RECS, 3) == pytest.approx(19 / 54)
    # k=2: u1 only a hits: (1/1) / min(3, 2) = 1/2; u2 (1/2) / 1 -> (1/2 + 1/2) / 3 = 1/3
    assert map_at_k(TRUTH, RECS, 2) == pytest.approx(1 / 3)
    # old Recommenders `map`: u1 (1/1) / 3 -> (1/3 + 1/2) / 3 = 5/18
    assert map_at_k(TRUTH, RECS, 2, denominator="n_relevant") == pytest.approx(5 / 18)


def test_mrr_and_hit_rate() -> None:
    # first hits: u1 at 1, u2 at 2, u3 none -> (1 + 1/2 + 0) / 3 = 1/2; hit rate 2/3
    assert mrr_at_k(TRUTH, RECS, 3) == pytest.approx(0.5)
    assert hit_rate_at_k(TRUTH, RECS, 3) == pytest.approx(2 / 3)
    # at k=1 only u1 hits: mrr (1 + 0 + 0) / 3
    assert mrr_at_k(TRUTH, RECS, 1) == pytest.approx(1 / 3)
    assert hit_rate_at_k(TRUTH, RECS, 1) == pytest.approx(1 / 3)


def test_score_column_is_ordered_descending_like_rank() -> None:
    by_score = RECS.with_columns(score=-pl.col("rank").cast(pl.Float64)).drop("rank")
    assert evaluate_all(TRUTH, by_score, 3) == pytest.approx(evaluate_all(TRUTH, RECS, 3))


def test_graded_relevance_ndcg() -> None:
    # a rel 3, b rel 1; recommended b then a: dcg = 1/1 + 3/log2(3); idcg = 3/1 + 1/log2(3)
    truth = pl.DataFrame({"user_id": ["u", "u"], "item_id": ["a", "b"], "relevance": [3.0, 1.0]})
    recs = pl.DataFrame({"user_id": ["u", "u"], "item_id": ["b", "a"], "rank": [1, 2]})
    expected = (1 + 3 / LOG2_3) / (3 + 1 / LOG2_3)
    assert ndcg_at_k(truth, recs, 2) == pytest.approx(expected)
    assert expected == pytest.approx(ndcg_score([[3.0, 1.0]], [[1.0, 2.0]], k=2))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 5, 10])
def test_ndcg_matches_sklearn_on_random_binary_data(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    n_users, n_items = 40, 25
    relevance = (rng.random((n_users, n_items)) < 0.2).astype(float)
    relevance[np.arange(n_users), rng.integers(0, n_items, n_users)] = 1.0  # every user has a positive
    scores = rng.random((n_users, n_items))
    users = np.repeat(np.arange(n_users), n_items).astype(str)
    items = np.tile(np.arange(n_items), n_users).astype(str)
    recs = pl.DataFrame({"user_id": users, "item_id": items, "score": scores.ravel()})
    truth = recs.filter(pl.Series(relevance.ravel() > 0)).select("user_id", "item_id")
    assert ndcg_at_k(truth, recs, k) == pytest.approx(ndcg_score(relevance, scores, k=k), abs=1e-9)


def test_catalog_coverage() -> None:
    # top-3 items: a, x, b, y, d, z = 6 distinct of 10; top-1: a, y = 2 of 10
    assert catalog_coverage(RECS, n_items=10, k=3) == pytest.approx(0.6)
    assert catalog_coverage(RECS, n_items=10, k=1) == pytest.approx(0.2)


def test_novelty() -> None:
    pop = pl.DataFrame({"item_id": ["a", "x", "b", "y", "d", "z"], "count": [4, 2, 1, 4, 2, 1]})
    # with 8 users: a,y p=1/2 -> 1 bit; x,d p=1/4 -> 2 bits; b,z p=1/8 -> 3 bits; mean 12/6 = 2
    assert novelty(RECS, pop, k=3, n_users=8) == pytest.approx(2.0)
    # without n_users p = count / 14; top-1 is a and y: -log2(4/14) for both
    assert novelty(RECS, pop, k=1) == pytest.approx(-math.log2(4 / 14))


def test_intra_list_diversity_categories() -> None:
    feats = pl.DataFrame(
        {"item_id": ["a", "x", "b", "y", "d", "z"], "category": ["drama", "drama", "comedy"] + ["drama"] * 3}
    )
    # u1 pairs (a,x)=0 (a,b)=1 (x,b)=1 -> 2/3; u2 all drama -> 0; mean 1/3
    assert intra_list_diversity(RECS, feats, k=3) == pytest.approx(1 / 3)


def test_intra_list_diversity_genre_lists_use_jaccard() -> None:
    feats = pl.DataFrame(
        {
            "item_id": ["a", "x", "b", "y", "d", "z"],
            "genres": [["A", "B"], ["B"], ["C"], ["A"], ["A"], ["A", "B"]],
        }
    )
    # u1: (a,x) 1 - 1/2, (a,b) 1, (x,b) 1 -> 5/6; u2: (y,d) 0, (y,z) 1/2, (d,z) 1/2 -> 1/3; mean 7/12
    assert intra_list_diversity(RECS, feats, k=3, feature_col="genres") == pytest.approx(7 / 12)


def test_intra_list_diversity_vectors_use_cosine() -> None:
    # only u1's items have vectors, so u2 has no pairs and is left out of the mean
    feats = pl.DataFrame({"item_id": ["a", "x", "b"], "vec": [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]})
    # (a,x) 1 - 0 = 1; (a,b) and (x,b) 1 - 1/sqrt(2) -> mean over 3 pairs
    expected = (1 + 2 * (1 - 1 / math.sqrt(2))) / 3
    assert intra_list_diversity(RECS, feats, k=3, feature_col="vec") == pytest.approx(expected)


def test_evaluate_all_and_edge_cases() -> None:
    results = evaluate_all(TRUTH, RECS, 3, n_items=10)
    assert results["precision@3"] == pytest.approx(1 / 3)
    assert results["map@3"] == pytest.approx(19 / 54)
    assert results["catalog_coverage@3"] == pytest.approx(0.6)
    empty = RECS.head(0)
    assert evaluate_all(TRUTH, empty, 3)["ndcg@3"] == 0.0
    with pytest.raises(ValueError):
        precision_at_k(TRUTH, RECS.drop("rank"), 3)
