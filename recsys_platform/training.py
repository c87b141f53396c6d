"""The training cycle on the platform's own data: training set, popularity baseline, holdout evaluation."""

from __future__ import annotations

import logging
from datetime import datetime

import polars as pl

from recsys_platform import evaluation
from recsys_platform.candidates import candidate_recall
from recsys_platform.config import PipelineParams
from recsys_platform.features import user_segments
from recsys_platform.ranking import (
    TemporalSplit,
    label_users,
    label_window,
    recently_completed,
    top_n,
    training_frame,
)
from recsys_platform.snapshot import GLOBAL_SEGMENT

logger = logging.getLogger(__name__)

EVAL_K = 10


class InsufficientHistoryError(ValueError):
    """The interactions are too few or too short for a window of the temporal training protocol."""


def _check_window(
    name: str, frame: pl.DataFrame, start: datetime, end: datetime, interactions: pl.DataFrame, params: PipelineParams
) -> None:
    """Raise InsufficientHistoryError when a window of the training set has no positive row."""
    if frame.height > 0 and (frame["relevance"] > 0).any():
        return
    first, last = interactions["event_time"].min(), interactions["event_time"].max()
    span = (last - first).total_seconds() / 86400
    raise InsufficientHistoryError(
        f"the {name!r} window of the training set has no positive row ({frame.height} rows): no candidate "
        f"built from events before {start:%Y-%m-%d %H:%M} was completed or favourited in the label window "
        f"[{start:%Y-%m-%d %H:%M}, {end:%Y-%m-%d %H:%M}) UTC (label_days={params.label_days}). The interactions "
        f"span {first:%Y-%m-%d %H:%M} .. {last:%Y-%m-%d %H:%M} ({span:.1f} days); "
        + TemporalSplit.history_requirement(params.label_days)
    )


def build_training_set(
    interactions: pl.DataFrame, items: pl.DataFrame, users: pl.DataFrame, params: PipelineParams
) -> pl.DataFrame:
    """Ranker rows for two windows: `train` (labels in the window before the holdout) and `eval` (holdout),
    each for at most `params.max_training_users` seeded-sampled users with a label in the window;
    InsufficientHistoryError when a window has no positive row to learn from or evaluate on."""
    if interactions.height == 0:
        raise InsufficientHistoryError(
            "no interactions to build a training set from; " + TemporalSplit.history_requirement(params.label_days)
        )
    split = TemporalSplit.from_interactions(interactions, params.label_days)
    cap = params.max_training_users
    train = training_frame(interactions, items, users, split.train_cutoff, split.eval_cutoff, params, cap)
    _check_window("train", train, split.train_cutoff, split.eval_cutoff, interactions, params)
    holdout = training_frame(interactions, items, users, split.eval_cutoff, split.end, params, cap)
    _check_window("eval", holdout, split.eval_cutoff, split.end, interactions, params)
    return pl.concat(
        [train.with_columns(split=pl.lit("train")), holdout.with_columns(split=pl.lit("eval"))],
        how="vertical_relaxed",
    )


def popularity_table(interactions: pl.DataFrame, users: pl.DataFrame, cutoff: datetime, k: int = 100) -> pl.DataFrame:
    """Popularity-count baseline: distinct users with a positive interaction before `cutoff`,
    globally (segment `__global__`) and per cold-start segment; top k per segment."""
    cut = pl.lit(cutoff, dtype=pl.Datetime("us", "UTC"))
    positive = interactions.filter((pl.col("weight") > 0) & (pl.col("event_time") < cut)).join(
        user_segments(users), on="user_id", how="left"
    )
    overall = (
        positive.group_by("item_id")
        .agg(score=pl.col("user_id").n_unique().cast(pl.Float64))
        .with_columns(segment=pl.lit(GLOBAL_SEGMENT))
    )
    by_segment = (
        positive.filter(pl.col("segment").is_not_null())
        .group_by("segment", "item_id")
        .agg(score=pl.col("user_id").n_unique().cast(pl.Float64))
    )
    both = pl.concat([overall.select("segment", "item_id", "score"), by_segment.select("segment", "item_id", "score")])
    return (
        both.sort(["segment", "score", "item_id"], descending=[False, True, False])
        .with_columns(rank=pl.int_range(1, pl.len() + 1).over("segment").cast(pl.Int64))
        .filter(pl.col("rank") <= k)
    )


def popularity_recommendations(
    table: pl.DataFrame,
    user_ids: pl.Series,
    excluded: pl.DataFrame,
    items: pl.DataFrame,
    users: pl.DataFrame,
    k: int,
) -> pl.DataFrame:
    """The global popularity list per user, with the same exclusions as the ranker (recent completions, kids guard)."""
    kids_items = items.filter(pl.col("is_kids")).select("item_id")
    no_kids = users.filter(pl.col("household_type") != "family_with_kids").select("user_id")
    rows = (
        pl.DataFrame({"user_id": user_ids.unique()})
        .join(table.filter(pl.col("segment") == GLOBAL_SEGMENT).select("item_id", "score"), how="cross")
        .join(excluded, on=["user_id", "item_id"], how="anti")
    )
    guarded = rows.join(no_kids, on="user_id", how="semi").join(kids_items, on="item_id", how="anti")
    rows = pl.concat([rows.join(no_kids, on="user_id", how="anti"), guarded])
    return top_n(rows, k)


def evaluate_holdout(
    eval_rows: pl.DataFrame,
    interactions: pl.DataFrame,
    items: pl.DataFrame,
    users: pl.DataFrame,
    params: PipelineParams,
    k: int = EVAL_K,
) -> tuple[pl.DataFrame, dict[str, float]]:
    """Ranker vs popularity on the temporal holdout (the users `build_training_set` sampled for it);
    returns (long metrics frame, candidate recall)."""
    split = TemporalSplit.from_interactions(interactions, params.label_days)
    truth = label_window(interactions, split.eval_cutoff, split.end)
    sampled = label_users(truth, params.max_training_users, params.seed)
    truth = truth.join(sampled.to_frame(), on="user_id", how="semi").select("user_id", "item_id")
    ranker_recs = top_n(eval_rows, k)
    excluded = recently_completed(interactions, split.eval_cutoff, params.recent_exclusion_days)
    table = popularity_table(interactions, users, split.eval_cutoff, k=200)
    pop_recs = popularity_recommendations(table, truth["user_id"], excluded, items, users, k)
    item_pop = (
        interactions.filter(pl.col("event_time") < split.eval_cutoff)
        .group_by("item_id")
        .agg(count=pl.col("user_id").n_unique())
    )
    n_items = items.height
    cats = items.select("item_id", category=pl.col("topic"))
    rows = []
    for model, recs in (("ranker", ranker_recs), ("popularity", pop_recs)):
        metrics = evaluation.evaluate_all(
            truth,
            recs,
            k,
            n_items=n_items,
            item_popularity=item_pop,
            item_features=cats,
            feature_col="category",
        )
        rows += [{"model": model, "metric": name, "value": float(value)} for name, value in metrics.items()]
    recall = candidate_recall(eval_rows, truth)
    logger.info("holdout: %d users with positives", truth["user_id"].n_unique())
    return pl.DataFrame(rows), recall


def metric(table: pl.DataFrame, model: str, name: str) -> float:
    """One value from a long metrics frame."""
    return float(table.filter((pl.col("model") == model) & (pl.col("metric") == name))["value"][0])
