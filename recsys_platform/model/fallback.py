"""The popularity fallback: what users the model cannot rank get (unknown users, a deployment without a champion).

Distinct users with a positive interaction per item, globally (segment `__global__`) and per cold-start
segment (language and experience level): the online store's `popular` namespace and the API's answer
for users it has no list for.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl

from recsys_platform.features.tables import user_segments
from recsys_platform.schemas import GLOBAL_SEGMENT


def recently_completed(interactions: pl.DataFrame, cutoff: datetime, days: float) -> pl.DataFrame:
    """(user, item) pairs completed in the `days` before `cutoff`: excluded from recommendations."""
    ts = pl.Datetime("us", "UTC")
    return (
        interactions.filter(
            (pl.col("event_type") == "content_complete")
            & (pl.col("event_time") < pl.lit(cutoff, dtype=ts))
            & (pl.col("event_time") >= pl.lit(cutoff - timedelta(days=days), dtype=ts))
        )
        .select("user_id", "item_id")
        .unique()
    )


def top_n(scored: pl.DataFrame, n: int, score_col: str = "score") -> pl.DataFrame:
    """Best `n` items per user as [user_id, rank, item_id, score]."""
    return (
        scored.sort(["user_id", score_col, "item_id"], descending=[False, True, False])
        .with_columns(rank=pl.int_range(1, pl.len() + 1).over("user_id").cast(pl.Int64))
        .filter(pl.col("rank") <= n)
        .select("user_id", "rank", "item_id", pl.col(score_col).alias("score"))
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
