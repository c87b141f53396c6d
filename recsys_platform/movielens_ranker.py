"""Two-stage MovieLens recommender: collaborative candidates, then a LightGBM LambdaRank re-ranker.

Leakage guard: the ranker's labels come from the *training* ratings only. Each user's training
ratings are dealt into ``label_folds`` folds; for every fold, candidate models and features are
fitted on the other folds and the fold itself supplies the labels (one LambdaRank query per user
and fold). Early stopping uses held-out users of that frame. At prediction time the candidate
models and features are refitted on the full training set. The test set is never seen here.
Features are scale-free because fold histories are smaller than the full training set.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import lightgbm as lgb
import numpy as np
import polars as pl

from recsys_platform.collaborative import InteractionMatrix, build_interaction_matrix, fit_ease
from recsys_platform.evaluation import ndcg_at_k
from recsys_platform.movielens import stratified_split

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankerConfig:
    """Knobs of the two-stage model (chosen on inner-validation splits, never on test)."""

    ease_l2: float = 500.0
    candidates_ease: int = 60
    candidates_cooc: int = 30
    candidates_pop: int = 20
    label_folds: int = 5
    early_stopping_users: float = 0.2
    lgbm: dict = field(
        default_factory=lambda: {
            "objective": "lambdarank",
            "n_estimators": 500,
            "learning_rate": 0.02,
            "num_leaves": 31,
            "min_child_samples": 500,
            "reg_lambda": 10.0,
            "subsample": 0.8,
            "subsample_freq": 1,
            "colsample_bytree": 0.8,
            "lambdarank_truncation_level": 20,
            "n_jobs": 2,
            "verbose": -1,
        }
    )


def _dense_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based rank of every column within its row (best score = 1)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(1, scores.shape[1] + 1)[None, :], axis=1)
    return ranks


@dataclass
class _Sources:
    """Dense user x item score matrices of every candidate source on one training set."""

    data: InteractionMatrix
    scores: dict[str, np.ndarray]
    ranks: dict[str, np.ndarray]


def _fit_sources(train: pl.DataFrame, cfg: RankerConfig) -> _Sources:
    data = build_interaction_matrix(train.select("user_id", "item_id", weight=pl.lit(1.0)), binary=True)
    x = data.matrix
    seen = x.toarray() > 0
    ease = fit_ease(train.select("user_id", "item_id"), l2=cfg.ease_l2)
    cooc = (x.T @ x).toarray()
    diag = np.diag(cooc).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        jaccard = np.nan_to_num(cooc / (diag[:, None] + diag[None, :] - cooc))
        lift = np.nan_to_num(cooc / (diag[:, None] * diag[None, :]), posinf=0.0)
    np.fill_diagonal(jaccard, 0.0)
    np.fill_diagonal(lift, 0.0)
    n_user = np.asarray(x.sum(axis=1)).ravel()[:, None]
    scores = {
        "ease": np.asarray(x @ ease.weights),
        "jaccard": np.asarray(x @ jaccard) / np.maximum(n_user, 1),
        "lift": np.asarray(x @ lift) / np.maximum(n_user, 1),
        "pop": np.broadcast_to(diag / x.shape[0], x.shape).copy(),
    }
    for mat in scores.values():
        mat[seen] = -np.inf
    return _Sources(data=data, scores=scores, ranks={k: _dense_ranks(v) for k, v in scores.items()})


def _time_window_counts(train: pl.DataFrame, data: InteractionMatrix, u: np.ndarray, i: np.ndarray) -> np.ndarray:
    """For each (user, item) pair: ratings of the item inside the user's first-to-last rating window."""
    item_lookup = pl.DataFrame({"item_id": data.item_ids, "i": np.arange(len(data.item_ids))})
    per_item = train.join(item_lookup, on="item_id").select("i", "timestamp").sort("i", "timestamp")
    span = 1 << 32  # timestamps fit in 32 bits; item index goes above them
    keys = per_item["i"].to_numpy().astype(np.int64) * span + per_item["timestamp"].to_numpy()
    user_lookup = pl.DataFrame({"user_id": data.user_ids, "u": np.arange(len(data.user_ids))})
    window = (
        train.join(user_lookup, on="user_id")
        .group_by("u")
        .agg(lo=pl.col("timestamp").min(), hi=pl.col("timestamp").max())
        .sort("u")
    )
    lo, hi = window["lo"].to_numpy(), window["hi"].to_numpy()
    base = i.astype(np.int64) * span
    return np.searchsorted(keys, base + hi[u], side="right") - np.searchsorted(keys, base + lo[u], side="left")


def _user_zscore(scores: np.ndarray, u: np.ndarray, i: np.ndarray) -> np.ndarray:
    """Scores standardised within each user's row over unseen items, gathered at (u, i)."""
    finite = np.where(np.isfinite(scores), scores, np.nan)
    mean, std = np.nanmean(finite, axis=1), np.nanstd(finite, axis=1)
    return ((scores[u, i] - mean[u]) / np.where(std[u] > 0, std[u], 1.0)).astype(np.float32)


def build_candidates(
    train: pl.DataFrame, items: pl.DataFrame | None, users: pl.DataFrame | None, cfg: RankerConfig
) -> pl.DataFrame:
    """Candidate (user, item) pairs from every source with the ranker's features, fitted on train only."""
    src = _fit_sources(train, cfg)
    r = src.ranks
    mask = (r["ease"] <= cfg.candidates_ease) | (r["jaccard"] <= cfg.candidates_cooc) | (r["pop"] <= cfg.candidates_pop)
    mask &= np.isfinite(src.scores["pop"])
    u, i = np.nonzero(mask)
    # Features are scale-free (ranks, per-user z-scores, shares, percentiles): the ranker is trained on
    # fold histories smaller than the full training set it is applied to, so raw counts would shift.
    cols: dict[str, np.ndarray] = {}
    for name in src.scores:
        cols[f"{name}_rank"] = r[name][u, i].astype(np.int32)
        if name != "pop":
            cols[f"{name}_z"] = _user_zscore(src.scores[name], u, i)
    in_window = _time_window_counts(train, src.data, u, i)
    item_pop = np.asarray(src.data.matrix.sum(axis=0)).ravel()
    cols["window_share"] = (in_window / np.maximum(item_pop[i], 1)).astype(np.float32)
    frame = pl.DataFrame({"user_id": src.data.user_ids.gather(u), "item_id": src.data.item_ids.gather(i), **cols})
    return _join_side_features(frame, train, items, users, src)


def _join_side_features(
    frame: pl.DataFrame,
    train: pl.DataFrame,
    items: pl.DataFrame | None,
    users: pl.DataFrame | None,
    src: _Sources,
) -> pl.DataFrame:
    item_stats = train.group_by("item_id").agg(
        n=pl.len(), item_mean_rating=pl.col("rating").mean(), item_mean_ts=pl.col("timestamp").mean()
    )
    item_stats = item_stats.with_columns(item_pop_pct=pl.col("n").rank() / pl.len()).drop("n")
    user_stats = train.group_by("user_id").agg(
        n=pl.len(),
        user_mean_rating=pl.col("rating").mean(),
        user_mean_ts=pl.col("timestamp").mean(),
        user_span_days=(pl.col("timestamp").max() - pl.col("timestamp").min()) / 86400,
    )
    user_stats = user_stats.with_columns(user_activity_pct=pl.col("n").rank() / pl.len()).drop("n")
    frame = frame.join(item_stats, on="item_id", how="left").join(user_stats, on="user_id", how="left")
    frame = frame.with_columns(ts_gap_days=(pl.col("item_mean_ts") - pl.col("user_mean_ts")) / 86400).drop(
        "item_mean_ts", "user_mean_ts"
    )
    if items is not None and "genres" in items.columns:
        frame = _genre_affinity(frame, train, items)
    if items is not None and "release_year" in items.columns:
        frame = frame.join(items.select("item_id", "release_year"), on="item_id", how="left")
    if users is not None:
        demo = users.select(
            "user_id",
            *[c for c in ("age",) if c in users.columns],
            *[(pl.col(c) == "M").cast(pl.Int8).alias("is_male") for c in ("gender",) if c in users.columns],
            *[pl.col(c).cast(pl.Categorical).to_physical().alias(c) for c in ("occupation",) if c in users.columns],
        )
        frame = frame.join(demo, on="user_id", how="left")
    return frame


def _genre_affinity(frame: pl.DataFrame, train: pl.DataFrame, items: pl.DataFrame) -> pl.DataFrame:
    """Share of the user's training ratings in the candidate's genres (mean and max over its genres)."""
    item_genre = items.select("item_id", "genres").explode("genres").rename({"genres": "genre"})
    user_genre = (
        train.select("user_id", "item_id")
        .join(item_genre, on="item_id")
        .group_by("user_id", "genre")
        .agg(n=pl.len())
        .join(train.group_by("user_id").agg(total=pl.len()), on="user_id")
        .select("user_id", "genre", share=pl.col("n") / pl.col("total"))
    )
    affinity = (
        frame.select("user_id", "item_id")
        .join(item_genre, on="item_id")
        .join(user_genre, on=["user_id", "genre"], how="left")
        .group_by("user_id", "item_id")
        .agg(
            genre_aff_mean=pl.col("share").fill_null(0).mean(),
            genre_aff_max=pl.col("share").fill_null(0).max(),
        )
    )
    return frame.join(affinity, on=["user_id", "item_id"], how="left")


FEATURE_EXCLUDE = ("user_id", "item_id", "label", "query")


@dataclass
class TwoStageRanker:
    """A fitted LambdaRank model and the config that produced its training candidates."""

    model: lgb.LGBMRanker
    features: list[str]
    cfg: RankerConfig

    def recommend(
        self, train: pl.DataFrame, items: pl.DataFrame | None, users: pl.DataFrame | None, k: int
    ) -> pl.DataFrame:
        """Top-k re-ranked recommendations [user_id, item_id, score, rank] for every user in train."""
        cands = build_candidates(train, items, users, self.cfg)
        # Tree outputs are piecewise constant; EASE rank breaks the ties the trees leave.
        scores = self.model.predict(cands.select(self.features).to_numpy()) - 1e-6 * cands["ease_rank"].to_numpy()
        return (
            cands.select("user_id", "item_id")
            .with_columns(score=pl.Series(scores))
            .sort(["user_id", "score", "item_id"], descending=[False, True, False])
            .with_columns(rank=pl.int_range(1, pl.len() + 1, dtype=pl.UInt32).over("user_id"))
            .filter(pl.col("rank") <= k)
        )


def _fold_split(train: pl.DataFrame, n_folds: int, seed: int) -> pl.Series:
    """Assign each rating a fold 0..n_folds-1, spread evenly within each user (stratified)."""
    ordered = train.sort("user_id", "item_id", "timestamp")
    keys = np.random.default_rng(seed).random(ordered.height)
    folds = ordered.with_columns(_key=pl.Series(keys)).select(
        "user_id",
        "item_id",
        fold=((pl.col("_key").rank("ordinal").over("user_id") - 1) % n_folds).cast(pl.Int8),
    )
    return train.join(folds, on=["user_id", "item_id"], how="left")["fold"]


def ranker_training_frame(
    train: pl.DataFrame, items: pl.DataFrame | None, users: pl.DataFrame | None, cfg: RankerConfig, seed: int
) -> pl.DataFrame:
    """Labelled candidates: for each fold, candidates/features from the other folds, labels from this one."""
    with_fold = train.with_columns(fold=_fold_split(train, cfg.label_folds, seed))
    frames = []
    for fold in range(cfg.label_folds):
        history = with_fold.filter(pl.col("fold") != fold).drop("fold")
        labels = with_fold.filter(pl.col("fold") == fold).select("user_id", "item_id", label=pl.lit(1, pl.Int8))
        cands = build_candidates(history, items, users, cfg)
        cands = cands.join(labels, on=["user_id", "item_id"], how="left").with_columns(pl.col("label").fill_null(0))
        # a query is one (user, fold); users without a positive among candidates carry no gradient
        cands = cands.with_columns(query=pl.col("user_id") + f"#{fold}")
        keep = cands.group_by("query").agg(pl.col("label").max()).filter(pl.col("label") > 0).select("query")
        frames.append(cands.join(keep, on="query", how="semi"))
    return pl.concat(frames).sort("query")


def _monotone(features: list[str]) -> list[int]:
    """Better source score -> never a lower prediction; better (lower) source rank likewise."""
    sources = ("ease_", "jaccard_", "pop_")
    return [
        (1 if f.endswith("_z") else -1) if f.startswith(sources) and f.endswith(("_z", "_rank")) else 0
        for f in features
    ]


def fit_two_stage(
    train: pl.DataFrame,
    items: pl.DataFrame | None,
    users: pl.DataFrame | None,
    cfg: RankerConfig,
    seed: int,
) -> TwoStageRanker:
    """Train the LambdaRank re-ranker on fold splits of train only, early-stopped on held-out users."""
    cands = ranker_training_frame(train, items, users, cfg, seed)
    features = [c for c in cands.columns if c not in FEATURE_EXCLUDE]
    user_ids = cands["user_id"].unique().sort()
    rng = np.random.default_rng(seed)
    holdout = user_ids.gather(rng.permutation(len(user_ids))[: int(len(user_ids) * cfg.early_stopping_users)])
    is_holdout = cands["user_id"].is_in(holdout.implode())
    fit_part, stop_part = cands.filter(~is_holdout), cands.filter(is_holdout)

    def groups(frame: pl.DataFrame) -> np.ndarray:
        return frame.group_by("query", maintain_order=True).len()["len"].to_numpy()

    model = lgb.LGBMRanker(random_state=seed, monotone_constraints=_monotone(features), **cfg.lgbm)
    with warnings.catch_warnings():  # lightgbm>=4.6 prefers eval_X/eval_y; eval_set still works from 4.5 on
        warnings.filterwarnings("ignore", message=".*eval_set.*deprecated")
        model.fit(
            fit_part.select(features).to_numpy(),
            fit_part["label"].to_numpy(),
            group=groups(fit_part),
            eval_set=[(stop_part.select(features).to_numpy(), stop_part["label"].to_numpy())],
            eval_group=[groups(stop_part)],
            eval_at=[10],
            callbacks=[lgb.early_stopping(50, verbose=False)],
        )
    logger.info(
        "ranker: %d candidate rows, %.1f%% positive, best iteration %s, held-out ndcg@10 %.4f",
        cands.height,
        100 * cands["label"].mean(),
        model.best_iteration_,
        model.best_score_["valid_0"]["ndcg@10"],
    )
    return TwoStageRanker(model=model, features=features, cfg=cfg)


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
