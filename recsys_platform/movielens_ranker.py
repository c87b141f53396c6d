"""Two-stage MovieLens recommender: temporal-ensemble candidates, then a LightGBM LambdaRank re-ranker.

Leakage guard: the ranker learns from the ensemble's *inner* split of the training part only
(components fitted on the inner 75%, labels = the inner 25%, one LambdaRank query per user);
early stopping uses held-out users of that frame. At prediction time the same features are
computed from the components refitted on the whole training part. The test set is never seen.

The ensemble score is the ranker's starting margin (``init_score``): the trees learn a
correction to it, so zero trees reproduce the ensemble. Features are scale-free (per-user
z-scores, ranks, percentiles, day differences) because the inner split is smaller than train.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import lightgbm as lgb
import numpy as np
import polars as pl

from recsys_platform.collaborative import fit_ease
from recsys_platform.evaluation import ndcg_at_k
from recsys_platform.movielens import stratified_split
from recsys_platform.movielens_ensemble import (
    COMPONENTS,
    Components,
    Encoded,
    EnsembleConfig,
    TemporalEnsemble,
    fit_temporal_ensemble,
    top_k_frame,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankerConfig:
    """Knobs of the two-stage model (chosen on inner-validation splits, never on test)."""

    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    candidates: int = 100
    early_stopping_users: float = 0.2
    lgbm: dict = field(
        default_factory=lambda: {
            "objective": "lambdarank",
            "n_estimators": 500,
            "learning_rate": 0.02,
            "num_leaves": 15,
            "min_child_samples": 200,
            "reg_lambda": 10.0,
            "subsample": 0.8,
            "subsample_freq": 1,
            "colsample_bytree": 0.8,
            "lambdarank_truncation_level": 20,
            "n_jobs": 2,
            "verbose": -1,
        }
    )


@dataclass
class CandidateFrame:
    """Candidate (user row, item column) pairs with features and the ensemble score."""

    users: np.ndarray
    items: np.ndarray
    base: np.ndarray
    features: dict[str, np.ndarray]

    def matrix(self, names: list[str]) -> np.ndarray:
        """Feature matrix in the order of ``names``."""
        return np.column_stack([self.features[n] for n in names]).astype(np.float32)


def _percentile(values: np.ndarray) -> np.ndarray:
    return (np.argsort(np.argsort(values, kind="stable"), kind="stable") + 1) / len(values)


def candidate_frame(comps: Components, weights: dict[str, float], enc: Encoded, n_candidates: int) -> CandidateFrame:
    """Top-n candidates of the blend per user, with component z-scores and time/popularity features."""
    blend = comps.blend(weights)
    n_users, n_items = blend.shape
    n = min(n_candidates, n_items)
    top = np.argpartition(-blend, n - 1, axis=1)[:, :n]
    order = np.argsort(-np.take_along_axis(blend, top, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    u, i = np.repeat(np.arange(n_users), n), top.ravel()
    keep = np.isfinite(blend[u, i])
    u, i = u[keep], i[keep]
    feats = {name: comps.z[name][u, i] for name in COMPONENTS}
    feats["candidate_rank"] = np.tile(np.arange(1, n + 1), n_users)[keep].astype(np.float32)
    item_count = np.bincount(enc.items, minlength=n_items).astype(np.float64)
    user_count = np.bincount(enc.users, minlength=n_users).astype(np.float64)
    times = enc.times.astype(np.float64)
    first_seen = np.full(n_items, times.max())
    np.minimum.at(first_seen, enc.items, times)
    item_mean_t = np.bincount(enc.items, times, minlength=n_items) / np.maximum(item_count, 1)
    user_mean_t = np.bincount(enc.users, times, minlength=n_users) / np.maximum(user_count, 1)
    user_last, user_first = np.zeros(n_users), np.full(n_users, np.inf)
    np.maximum.at(user_last, enc.users, times)
    np.minimum.at(user_first, enc.users, times)
    day = 86400.0
    feats["item_available_days"] = (user_last[u] - first_seen[i]) / day  # < 0: item appeared after the user left
    feats["item_user_time_gap_days"] = (item_mean_t[i] - user_mean_t[u]) / day
    feats["user_span_days"] = (user_last - np.where(np.isfinite(user_first), user_first, user_last))[u] / day
    feats["item_popularity_pct"] = _percentile(item_count)[i]
    feats["user_activity_pct"] = _percentile(user_count)[u]
    return CandidateFrame(u, i, blend[u, i].astype(np.float64), {k: np.asarray(v) for k, v in feats.items()})


def _query_sizes(users: np.ndarray) -> np.ndarray:
    """Group sizes for LightGBM: rows must be contiguous per user (they are: built user by user)."""
    return np.unique(users, return_counts=True)[1]


@dataclass
class TwoStageRanker:
    """A fitted re-ranker on top of a fitted temporal ensemble."""

    ensemble: TemporalEnsemble
    model: lgb.LGBMRanker
    features: list[str]
    cfg: RankerConfig
    candidate_recall: float

    def recommend(self, k: int) -> pl.DataFrame:
        """Top-k re-ranked recommendations [user_id, item_id, score, rank] for every training user."""
        ens = self.ensemble
        cands = candidate_frame(ens.components, ens.weights, ens.encoded, self.cfg.candidates)
        margin = self.model.predict(cands.matrix(self.features)) + cands.base
        scores = np.full(ens.components.seen.shape, -np.inf)
        scores[cands.users, cands.items] = margin - 1e-9 * cands.features["candidate_rank"]
        return top_k_frame(scores, ens.user_ids, ens.item_ids, k)


def fit_two_stage(train: pl.DataFrame, cfg: RankerConfig | None = None, seed: int = 0) -> TwoStageRanker:
    """Fit the ensemble, then LambdaRank on its inner split (features inner-train, labels inner-val)."""
    cfg = cfg or RankerConfig()
    ens = fit_temporal_ensemble(train, cfg.ensemble, seed)
    cands = candidate_frame(ens.inner, ens.weights, ens.inner_encoded, cfg.candidates)
    labels = ens.inner_truth[cands.users, cands.items].astype(np.int32)
    recall = float(labels.sum() / max(ens.inner_truth.sum(), 1))
    has_positive = np.bincount(cands.users, labels, minlength=ens.inner_truth.shape[0]) > 0
    rows = has_positive[cands.users]  # users without a positive among candidates carry no gradient
    held_out = np.random.default_rng(seed).random(ens.inner_truth.shape[0]) < cfg.early_stopping_users
    features = list(cands.features)
    x, base, users = cands.matrix(features), cands.base, cands.users
    fit_rows, stop_rows = rows & ~held_out[users], rows & held_out[users]
    model = lgb.LGBMRanker(random_state=seed, **cfg.lgbm)
    with warnings.catch_warnings():  # lightgbm>=4.6 prefers eval_X/eval_y; eval_set still works from 4.5 on
        warnings.filterwarnings("ignore", message=".*eval_set.*deprecated")
        model.fit(
            x[fit_rows],
            labels[fit_rows],
            group=_query_sizes(users[fit_rows]),
            init_score=base[fit_rows],
            eval_set=[(x[stop_rows], labels[stop_rows])],
            eval_group=[_query_sizes(users[stop_rows])],
            eval_init_score=[base[stop_rows]],
            eval_at=[10],
            callbacks=[lgb.early_stopping(50, verbose=False)],
        )
    logger.info(
        "ranker: %d candidate rows, inner candidate recall@%d %.3f, best iteration %s, held-out ndcg@10 %.4f",
        int(rows.sum()),
        cfg.candidates,
        recall,
        model.best_iteration_,
        model.best_score_["valid_0"]["ndcg@10"],
    )
    return TwoStageRanker(ensemble=ens, model=model, features=features, cfg=cfg, candidate_recall=recall)


def tune_ease_l2(
    train: pl.DataFrame, grid: tuple[float, ...] = (100.0, 200.0, 300.0, 500.0, 800.0, 1200.0), seed: int = 0
) -> float:
    """Pick EASE's l2 by nDCG@10 on a per-user 80/20 split of train (the test set is never used)."""
    inner_train, inner_val = stratified_split(train, 0.8, seed=seed + 20_000)
    users = inner_val["user_id"].unique()
    scores = {l2: ndcg_at_k(inner_val, fit_ease(inner_train, l2=l2).recommend(users, 10), 10) for l2 in grid}
    best = max(scores, key=scores.__getitem__)
    logger.info("EASE l2 inner-validation nDCG@10: %s -> l2=%s", {k: round(v, 4) for k, v in scores.items()}, best)
    return best
