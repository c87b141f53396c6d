"""Offline ranking metrics on polars frames, one function per metric with one signature.

``metric(truth, recs, k) -> float``

* ``truth``: ``user_id, item_id`` and optionally ``relevance`` (float, default 1.0); duplicate
  pairs keep their highest relevance.
* ``recs``: ``user_id, item_id`` and either ``rank`` (1 = best, used when present) or ``score``
  (higher = better; ties broken by item_id). Only the first ``k`` positions per user count.

Conventions (those of Microsoft Recommenders' ``python_evaluation``, so MovieLens numbers are
comparable with their published table):

* Averages are over the users present in ``truth``; a truth user with no recommendations
  scores 0. (Recommenders averages over users present in both; identical whenever every test
  user gets recommendations, as in the benchmark.)
* precision@k = hits / k (k, not the number of recommendations returned).
* recall@k = hits / n_relevant.
* nDCG@k: gain = relevance (binary by default), discount 1 / log2(1 + position); the ideal DCG
  takes the min(n_relevant, k) largest relevances. Matches Recommenders' binary nDCG and
  ``sklearn.metrics.ndcg_score``.
* MAP@k: sum of precision@position over hit positions, divided by min(n_relevant, k) — the
  current Recommenders ``map_at_k`` (Spark MLlib ``meanAveragePrecisionAt``). Pass
  ``denominator="n_relevant"`` for Recommenders' older ``map`` (divides by n_relevant), which
  is what their published MovieLens MAP figures used.
* MRR@k = 1 / position of the first hit (0 without a hit); hit_rate@k = share of users with a hit.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import polars as pl

logger = logging.getLogger(__name__)

MapDenominator = Literal["min_k_relevant", "n_relevant"]


def top_k_positions(recs: pl.DataFrame, k: int) -> pl.DataFrame:
    """The first k recommendations per user as [user_id, item_id, position] (1-based, dense)."""
    order_col = "rank" if "rank" in recs.columns else "score"
    if order_col not in recs.columns:
        raise ValueError("recs needs a 'rank' or a 'score' column")
    descending = order_col == "score"
    return (
        recs.select("user_id", "item_id", order_col)
        .unique(["user_id", "item_id"], keep="first", maintain_order=True)
        .sort(["user_id", order_col, "item_id"], descending=[False, descending, False])
        .with_columns(position=pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over("user_id"))
        .filter(pl.col("position") <= k)
        .select("user_id", "item_id", "position")
    )


def _truth(truth: pl.DataFrame) -> pl.DataFrame:
    rel = pl.col("relevance").cast(pl.Float64) if "relevance" in truth.columns else pl.lit(1.0)
    return (
        truth.select("user_id", "item_id", relevance=rel).group_by("user_id", "item_id").agg(pl.col("relevance").max())
    )


def _per_user(truth: pl.DataFrame, recs: pl.DataFrame, k: int) -> pl.DataFrame:
    """One row per truth user with n_relevant, hits, dcg, idcg, ap_sum and first_hit."""
    if k <= 0:
        raise ValueError("k must be positive")
    gold = _truth(truth)
    top = top_k_positions(recs.with_columns(pl.col("user_id").cast(gold["user_id"].dtype)), k)
    hits = (
        top.join(gold, on=["user_id", "item_id"], how="inner")
        .sort("user_id", "position")
        .with_columns(hit_no=pl.int_range(1, pl.len() + 1).over("user_id"))
        .group_by("user_id")
        .agg(
            hits=pl.len(),
            dcg=(pl.col("relevance") / (pl.col("position") + 1).log(2)).sum(),
            ap_sum=(pl.col("hit_no") / pl.col("position")).sum(),
            first_hit=pl.col("position").min(),
        )
    )
    ideal = (
        gold.sort(["user_id", "relevance"], descending=[False, True])
        .with_columns(ipos=pl.int_range(1, pl.len() + 1).over("user_id"))
        .group_by("user_id")
        .agg(
            n_relevant=pl.len(),
            idcg=(pl.col("relevance") / (pl.col("ipos") + 1).log(2)).filter(pl.col("ipos") <= k).sum(),
        )
    )
    return ideal.join(hits, on="user_id", how="left").with_columns(
        pl.col("hits", "dcg", "ap_sum").fill_null(0), pl.col("first_hit").fill_null(0)
    )


def _mean(per_user: pl.DataFrame, expr: pl.Expr) -> float:
    if per_user.is_empty():
        return 0.0
    return float(per_user.select(expr.fill_nan(0.0).mean()).item())


def precision_at_k(truth: pl.DataFrame, recs: pl.DataFrame, k: int) -> float:
    """Mean over truth users of hits in the top k divided by k."""
    return _mean(_per_user(truth, recs, k), pl.col("hits") / k)


def recall_at_k(truth: pl.DataFrame, recs: pl.DataFrame, k: int) -> float:
    """Mean over truth users of hits in the top k divided by their number of relevant items."""
    return _mean(_per_user(truth, recs, k), pl.col("hits") / pl.col("n_relevant"))


def ndcg_at_k(truth: pl.DataFrame, recs: pl.DataFrame, k: int) -> float:
    """Mean normalised discounted cumulative gain of the top k (log2 discount)."""
    return _mean(_per_user(truth, recs, k), pl.col("dcg") / pl.col("idcg"))


def ndcg_per_user(truth: pl.DataFrame, recs: pl.DataFrame, k: int) -> pl.DataFrame:
    """[user_id, ndcg] for every truth user: what `ndcg_at_k` averages (0 when none of their items is shown)."""
    return _per_user(truth, recs, k).select("user_id", ndcg=(pl.col("dcg") / pl.col("idcg")).fill_nan(0.0))


def map_at_k(truth: pl.DataFrame, recs: pl.DataFrame, k: int, denominator: MapDenominator = "min_k_relevant") -> float:
    """Mean average precision of the top k, normalised by min(n_relevant, k) (or n_relevant)."""
    if denominator == "min_k_relevant":
        norm = pl.min_horizontal(pl.col("n_relevant"), pl.lit(k))
    elif denominator == "n_relevant":
        norm = pl.col("n_relevant")
    else:
        raise ValueError(f"unknown denominator {denominator!r}")
    return _mean(_per_user(truth, recs, k), pl.col("ap_sum") / norm)


def mrr_at_k(truth: pl.DataFrame, recs: pl.DataFrame, k: int) -> float:
    """Mean reciprocal rank of the first relevant item within the top k."""
    first = pl.col("first_hit")
    return _mean(_per_user(truth, recs, k), pl.when(first > 0).then(1.0 / first).otherwise(0.0))


def hit_rate_at_k(truth: pl.DataFrame, recs: pl.DataFrame, k: int) -> float:
    """Share of truth users with at least one relevant item in the top k."""
    return _mean(_per_user(truth, recs, k), (pl.col("hits") > 0).cast(pl.Float64))


def catalog_coverage(recs: pl.DataFrame, n_items: int, k: int) -> float:
    """Share of the catalogue's n_items that appear in at least one user's top k."""
    if n_items <= 0:
        raise ValueError("n_items must be positive")
    return top_k_positions(recs, k)["item_id"].n_unique() / n_items


def novelty(recs: pl.DataFrame, item_popularity: pl.DataFrame, k: int, n_users: int | None = None) -> float:
    """Mean self-information -log2 p(item) over all top-k recommendations.

    ``item_popularity`` has ``item_id, count`` (interactions or distinct users per item, from
    training data). p(item) = count / n_users when n_users is given (Recommenders' definition),
    else count / sum(count). Items absent from the table count as seen once.
    """
    total = float(n_users) if n_users else float(item_popularity["count"].sum())
    top = top_k_positions(recs, k).join(
        item_popularity.select("item_id", pl.col("count").cast(pl.Float64)), on="item_id", how="left"
    )
    if top.is_empty():
        return 0.0
    p = pl.max_horizontal(pl.col("count").fill_null(1.0), pl.lit(1.0)) / total
    return float(top.select((-p.log(2)).mean()).item())


def intra_list_diversity(
    recs: pl.DataFrame, item_features: pl.DataFrame, k: int, feature_col: str = "category"
) -> float:
    """Mean pairwise dissimilarity within each user's top k, averaged over users with >= 2 items.

    ``item_features`` has ``item_id`` and ``feature_col``, whose type picks the dissimilarity:
    a string category -> 1 if different else 0; a list of strings (e.g. genres) -> 1 - Jaccard;
    a list/array of numbers -> 1 - cosine similarity. Items without features are ignored.
    """
    feats = item_features.select("item_id", feature_col).unique("item_id", keep="first", maintain_order=True)
    feats = feats.with_columns(fidx=pl.int_range(pl.len(), dtype=pl.Int64))
    top = top_k_positions(recs, k).join(feats.select("item_id", "fidx"), on="item_id", how="inner")
    pairs = (
        top.join(top, on="user_id", suffix="_b")
        .filter(pl.col("position") < pl.col("position_b"))
        .select("user_id", "fidx", "fidx_b")
    )
    if pairs.is_empty():
        return 0.0
    dtype = feats.schema[feature_col]
    a, b = pairs["fidx"].to_numpy(), pairs["fidx_b"].to_numpy()
    if dtype == pl.String or dtype == pl.Categorical or dtype.is_integer():
        codes = feats[feature_col].cast(pl.String).to_numpy()
        dissim = (codes[a] != codes[b]).astype(np.float64)
    elif isinstance(dtype, pl.List | pl.Array) and dtype.inner == pl.String:
        lists = feats.select(pl.col(feature_col).cast(pl.List(pl.String)))[feature_col]
        left = pl.Series(lists.gather(a))
        right = pl.Series(lists.gather(b))
        both = pl.DataFrame({"l": left, "r": right}).select(
            inter=pl.col("l").list.set_intersection("r").list.len(),
            union=pl.col("l").list.set_union("r").list.len(),
        )
        union = both["union"].to_numpy().astype(np.float64)
        dissim = 1.0 - np.divide(both["inter"].to_numpy(), union, out=np.zeros_like(union), where=union > 0)
    else:
        mat = np.asarray(feats[feature_col].to_list(), dtype=np.float64)
        norms = np.linalg.norm(mat, axis=1)
        mat = np.divide(mat, norms[:, None], out=np.zeros_like(mat), where=norms[:, None] > 0)
        dissim = 1.0 - np.einsum("ij,ij->i", mat[a], mat[b])
    per_user = pairs.select("user_id").with_columns(d=pl.Series(dissim)).group_by("user_id").agg(pl.col("d").mean())
    return float(per_user["d"].mean())


def evaluate_all(
    truth: pl.DataFrame,
    recs: pl.DataFrame,
    k: int,
    n_items: int | None = None,
    item_popularity: pl.DataFrame | None = None,
    item_features: pl.DataFrame | None = None,
    feature_col: str = "category",
) -> dict[str, float]:
    """All accuracy metrics at k, plus coverage/novelty/diversity when their inputs are given."""
    per_user = _per_user(truth, recs, k)
    first = pl.col("first_hit")
    results = {
        f"precision@{k}": _mean(per_user, pl.col("hits") / k),
        f"recall@{k}": _mean(per_user, pl.col("hits") / pl.col("n_relevant")),
        f"ndcg@{k}": _mean(per_user, pl.col("dcg") / pl.col("idcg")),
        f"map@{k}": _mean(per_user, pl.col("ap_sum") / pl.min_horizontal(pl.col("n_relevant"), pl.lit(k))),
        f"map_full@{k}": _mean(per_user, pl.col("ap_sum") / pl.col("n_relevant")),
        f"mrr@{k}": _mean(per_user, pl.when(first > 0).then(1.0 / first).otherwise(0.0)),
        f"hit_rate@{k}": _mean(per_user, (pl.col("hits") > 0).cast(pl.Float64)),
    }
    if n_items:
        results[f"catalog_coverage@{k}"] = catalog_coverage(recs, n_items, k)
    if item_popularity is not None:
        results[f"novelty@{k}"] = novelty(recs, item_popularity, k)
    if item_features is not None:
        results[f"intra_list_diversity@{k}"] = intra_list_diversity(recs, item_features, k, feature_col)
    return results
