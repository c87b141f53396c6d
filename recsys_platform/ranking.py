"""Ranker: point-in-time feature assembly over candidates, training labels, LightGBM LambdaRank.

`PointInTime` holds every feature table as of one cutoff; `ranker_frame` joins them onto
candidates, and it is the only way features reach the model, offline and online alike.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from recsys_platform import features as feats
from recsys_platform.candidates import SOURCES, CandidateContext, build_context, generate_candidates
from recsys_platform.config import PipelineParams

logger = logging.getLogger(__name__)

ITEM_COLUMNS = (
    "item_completes",
    "item_completes_7d",
    "item_completes_1d",
    "item_users",
    "item_completion_rate",
    "item_bounce_rate",
    "item_age_days",
    "item_duration_min",
    "item_level",
    "item_type_code",
)
USER_COLUMNS = (
    "user_starts",
    "user_completes",
    "user_favorites",
    "user_active_days",
    "user_distinct_items",
    "user_days_since_last",
    "user_night_share",
    "user_morning_share",
    "user_level_played",
    "user_sleep_share",
    "user_movement_share",
    "user_tenure_days",
    "user_experience",
    "user_daypart_code",
    "user_completion_rate",
)
PAIR_COLUMNS = (
    "aff_topic",
    "aff_narrator",
    "aff_content_type",
    "ui_plays",
    "ui_completed",
    "ui_favorited",
    "ui_bounced",
    "ui_days_since",
    "level_gap",
    "language_match",
    "n_sources",
)
FEATURE_COLUMNS: tuple[str, ...] = (
    *[f"score_{s}" for s in SOURCES],
    *[f"rank_{s}" for s in SOURCES],
    *ITEM_COLUMNS,
    *USER_COLUMNS,
    *PAIR_COLUMNS,
)
CATEGORICAL_COLUMNS = ("item_type_code", "user_daypart_code")
# The training window's features and candidates come from events before its cutoff: at least a day of them.
MIN_FEATURE_DAYS = 1
# Users per scoring chunk: a ranker frame is ~150 candidates x ~60 features per user (~0.5 GiB per 10k users).
SCORING_CHUNK_USERS = 10_000


@dataclass
class PointInTime:
    """All feature tables as of `cutoff` (built only from events before it)."""

    cutoff: datetime
    candidates: CandidateContext
    user_features: pl.DataFrame
    item_features: pl.DataFrame
    ui_history: pl.DataFrame

    @classmethod
    def build(
        cls,
        interactions: pl.DataFrame,
        items: pl.DataFrame,
        users: pl.DataFrame,
        cutoff: datetime,
        params: PipelineParams,
        user_ids: pl.Series | list[str] | None = None,
    ) -> PointInTime:
        """Compute the feature tables and fit the candidate sources as of `cutoff`; the per-user tables
        (user features, affinities, user-item history) only for `user_ids` when given (default: all)."""
        ctx = build_context(interactions, items, users, cutoff)
        return cls.from_context(ctx, feats.item_features(ctx.history, items, cutoff), user_ids, params)

    def for_users(self, user_ids: pl.Series | list[str], params: PipelineParams) -> PointInTime:
        """The same global parts (history, EASE, item features) with the per-user tables rebuilt for
        `user_ids` only: memory that grows with those users, not with everyone."""
        return self.from_context(self.candidates, self.item_features, user_ids, params)

    @classmethod
    def from_context(
        cls,
        ctx: CandidateContext,
        item_features: pl.DataFrame,
        user_ids: pl.Series | list[str] | None,
        params: PipelineParams,
    ) -> PointInTime:
        """Global parts from `ctx` and `item_features`; the per-user tables for `user_ids` (None: everyone)."""
        mine, users = ctx.history, ctx.users
        if user_ids is not None:
            who = pl.Series(list(user_ids), dtype=pl.String)
            mine = feats.rows_of_users(mine, who)
            users = users.join(pl.DataFrame({"user_id": who}), on="user_id", how="semi")
        return cls(
            cutoff=ctx.cutoff,
            candidates=replace(
                ctx, affinities=feats.user_item_affinities(mine, ctx.items, ctx.cutoff), user_history=mine
            ),
            user_features=feats.user_features(mine, users, ctx.items, ctx.cutoff),
            item_features=item_features,
            ui_history=feats.user_item_history(mine, ctx.cutoff, params.repeat_cap),
        )

    def ranker_frame(self, user_ids: pl.Series | list[str], n_candidates: int) -> pl.DataFrame:
        """Candidates for the users with every ranker feature joined on."""
        cands = generate_candidates(self.candidates, user_ids, n_candidates)
        aff = self.candidates.affinities
        items = self.item_features.select(
            "item_id", "topic", "narrator", "content_type", "language", "is_kids", *ITEM_COLUMNS
        )
        users = self.user_features.select("user_id", pl.col("language").alias("user_language"), *USER_COLUMNS)
        return (
            cands.join(items, on="item_id", how="inner")
            .join(users, on="user_id", how="inner")
            .join(aff["topic"], on=["user_id", "topic"], how="left")
            .join(aff["narrator"], on=["user_id", "narrator"], how="left")
            .join(aff["content_type"], on=["user_id", "content_type"], how="left")
            .join(self.ui_history, on=["user_id", "item_id"], how="left")
            .with_columns(
                pl.col("aff_topic", "aff_narrator", "aff_content_type").fill_null(0.0),
                pl.col("ui_plays", "ui_completed").fill_null(0),
                pl.col("ui_favorited", "ui_bounced").fill_null(False).cast(pl.Int8),
                pl.col("ui_days_since").fill_null(999.0),
                level_gap=pl.col("item_level").cast(pl.Float64) - pl.col("user_level_played"),
                language_match=(pl.col("language") == pl.col("user_language")).cast(pl.Int8),
            )
        )


def label_window(interactions: pl.DataFrame, start: datetime, end: datetime) -> pl.DataFrame:
    """Graded relevance per (user, item) in [start, end): favourite 2, completion 1."""
    lo, hi = pl.lit(start, dtype=pl.Datetime("us", "UTC")), pl.lit(end, dtype=pl.Datetime("us", "UTC"))
    return (
        interactions.filter((pl.col("event_time") >= lo) & (pl.col("event_time") < hi))
        .filter(pl.col("event_type").is_in(["content_complete", "favorite"]))
        .group_by("user_id", "item_id")
        .agg(relevance=pl.when(pl.col("event_type") == "favorite").then(2).otherwise(1).max().cast(pl.Int64))
    )


def recently_completed(interactions: pl.DataFrame, cutoff: datetime, days: int) -> pl.DataFrame:
    """(user, item) pairs completed in the `days` before `cutoff`: excluded from recommendations."""
    cut = pl.lit(cutoff, dtype=pl.Datetime("us", "UTC"))
    return (
        interactions.filter(
            (pl.col("event_type") == "content_complete")
            & (pl.col("event_time") < cut)
            & (pl.col("event_time") >= cut - pl.duration(days=days))
        )
        .select("user_id", "item_id")
        .unique()
    )


@dataclass(frozen=True)
class TemporalSplit:
    """Cutoffs of the temporal protocol: train labels, evaluation labels, serving."""

    train_cutoff: datetime
    eval_cutoff: datetime
    end: datetime

    @classmethod
    def from_interactions(cls, interactions: pl.DataFrame, label_days: int) -> TemporalSplit:
        """Last `label_days` days = evaluation labels; the window before = training labels."""
        end = interactions["event_time"].max() + timedelta(microseconds=1)
        eval_cutoff = end - timedelta(days=label_days)
        return cls(train_cutoff=eval_cutoff - timedelta(days=label_days), eval_cutoff=eval_cutoff, end=end)

    @staticmethod
    def min_history_days(label_days: int) -> int:
        """Days of events the protocol needs: MIN_FEATURE_DAYS of features, then two label windows."""
        return MIN_FEATURE_DAYS + 2 * label_days

    @staticmethod
    def history_requirement(label_days: int) -> str:
        """What the protocol needs, said for error messages."""
        return (
            f"the training cycle needs at least {TemporalSplit.min_history_days(label_days)} days of events "
            f"({MIN_FEATURE_DAYS} of features, then two label windows of label_days={label_days})"
        )


def label_users(labels: pl.DataFrame, max_users: int | None, seed: int) -> pl.Series:
    """The users with a label, sorted; a seeded sample of `max_users` of them when there are more."""
    active = labels.select("user_id").unique().sort("user_id")
    if max_users and active.height > max_users:
        active = active.sample(max_users, seed=seed).sort("user_id")
    return active["user_id"]


def training_frame(
    interactions: pl.DataFrame,
    items: pl.DataFrame,
    users: pl.DataFrame,
    cutoff: datetime,
    label_end: datetime,
    params: PipelineParams,
    max_users: int | None = None,
) -> pl.DataFrame:
    """Candidates with features as of `cutoff` and labels from [cutoff, label_end) (no leakage)."""
    labels = label_window(interactions, cutoff, label_end)
    active = label_users(labels, max_users, params.seed)
    labels = labels.join(active.to_frame(), on="user_id", how="semi")
    # Per-user tables only for the sampled users; global ones (EASE, popularity, items) on everyone.
    pit = PointInTime.build(interactions, items, users, cutoff, params, user_ids=active)
    frame = pit.ranker_frame(active, params.candidates_per_source)
    excluded = recently_completed(interactions, cutoff, params.recent_exclusion_days)
    return (
        frame.join(excluded, on=["user_id", "item_id"], how="anti")
        .join(labels, on=["user_id", "item_id"], how="left")
        .with_columns(
            relevance=pl.col("relevance").fill_null(0),
            feature_cutoff=pl.lit(cutoff, dtype=pl.Datetime("us", "UTC")),
        )
        .sort("user_id", "item_id")
    )


def _matrix(frame: pl.DataFrame) -> np.ndarray:
    return frame.select([pl.col(c).cast(pl.Float32) for c in FEATURE_COLUMNS]).to_numpy()


def train_ranker(train: pl.DataFrame, params: PipelineParams, valid: pl.DataFrame | None = None) -> Any:
    """Fit a LightGBM LambdaRank model on groups of candidates per user (users with a positive only)."""
    import lightgbm as lgb

    has_pos = train.group_by("user_id").agg(pl.col("relevance").max() > 0).filter(pl.col("relevance"))
    train = train.join(has_pos.select("user_id"), on="user_id", how="semi").sort("user_id", "item_id")
    if train.height == 0:
        raise ValueError("no training rows with a positive label: nothing for the ranker to learn from")
    groups = train.group_by("user_id", maintain_order=True).len()["len"].to_numpy()
    model = lgb.LGBMRanker(
        objective="lambdarank",
        n_estimators=params.ranker_rounds,
        learning_rate=0.05,
        num_leaves=31,
        min_child_samples=50,
        subsample=0.8,
        subsample_freq=1,
        colsample_bytree=0.8,
        lambdarank_truncation_level=20,
        n_jobs=params.ranker_threads,
        random_state=params.seed,
        verbose=-1,
    )
    model.fit(
        _matrix(train),
        train["relevance"].to_numpy(),
        group=groups,
        feature_name=list(FEATURE_COLUMNS),
        categorical_feature=list(CATEGORICAL_COLUMNS),
    )
    logger.info("ranker trained on %d rows, %d groups", train.height, len(groups))
    return model


def score_frame(model: Any, frame: pl.DataFrame) -> pl.DataFrame:
    """Add the ranker's score to a ranker frame."""
    if frame.height == 0:
        return frame.with_columns(score=pl.lit(0.0))
    booster = getattr(model, "booster_", model)  # an sklearn wrapper or a bare Booster from MLflow
    return frame.with_columns(score=pl.Series(booster.predict(_matrix(frame)), dtype=pl.Float64))


def top_n(scored: pl.DataFrame, n: int, score_col: str = "score") -> pl.DataFrame:
    """Best `n` items per user as [user_id, rank, item_id, score]."""
    return (
        scored.sort(["user_id", score_col, "item_id"], descending=[False, True, False])
        .with_columns(rank=pl.int_range(1, pl.len() + 1).over("user_id").cast(pl.Int64))
        .filter(pl.col("rank") <= n)
        .select("user_id", "rank", "item_id", pl.col(score_col).alias("score"))
    )


def recommend(
    model: Any,
    pit: PointInTime,
    user_ids: pl.Series,
    excluded: pl.DataFrame,
    params: PipelineParams,
    chunk_users: int = SCORING_CHUNK_USERS,
) -> pl.DataFrame:
    """Best `params.top_n` items per user by the ranker, minus `excluded` (user, item) pairs, scored
    `chunk_users` users at a time so memory is bounded by the chunk, not by the number of users."""
    users = user_ids.unique().sort()
    parts = []
    for start in range(0, users.len(), chunk_users):
        chunk = users.slice(start, chunk_users)
        frame = pit.for_users(chunk, params).ranker_frame(chunk, params.candidates_per_source)
        frame = frame.join(excluded, on=["user_id", "item_id"], how="anti")
        parts.append(top_n(score_frame(model, frame), params.top_n))
        logger.debug("scored users %d..%d (%d rows)", start, start + chunk.len(), frame.height)
    if not parts:
        return pl.DataFrame(schema={"user_id": pl.String, "rank": pl.Int64, "item_id": pl.String, "score": pl.Float64})
    return pl.concat(parts)


def feature_importance(model: Any) -> pl.DataFrame:
    """Gain importance per feature, largest first."""
    gains = model.booster_.feature_importance(importance_type="gain")
    return pl.DataFrame({"feature": list(FEATURE_COLUMNS), "gain": gains.astype(float)}).sort("gain", descending=True)
