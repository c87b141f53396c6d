"""Context re-weighting: move the ranker's scores with what the user is doing right now.

The LightGBM ranker is trained on daily behaviour; it does not see the current session. At
re-scoring time its scores are standardised per user (z-scores, so one unit = one standard
deviation of that user's candidate scores) and these documented boosts are added:

    score_context = z(score)
        + search       * search_<topic>(session)           for items of the topic's content types
        + night_sleep  * search_sleep(session) * is_night   for sleep content (sleep stories, soundscapes)
        + movement     * movement_intent(session)           for movement content
        + sleep_bounce * sleep_bounce_rate(session)         for sleep content (negative: the user skips it)

`movement_intent` is in [0, 1] and positive only when both the step count and the heart rate
rise over the session window. Items completed recently (including in this session) are
removed before ranking, so a completed item leaves the list.

Measured where they act, on each user's newest sitting (`benchmarks/session_features.py --dataset synthetic --seed 11
--text-encoder hashed --windows session --splits 1 2 3 --refresh-boosts`, held-out training users of a development
seed, the ranker trained with every session group, at af9cde0): nDCG@10 of the sitting's plays 0.4142 -> 0.4189,
0.3873 -> 0.3903, 0.3837 -> 0.3860 with the boosts, higher on each split, so they stay (at f2b4013, before the
search similarity became a matrix product: 0.4190 -> 0.4214, 0.3913 -> 0.3948, 0.3733 -> 0.3801). On the per-user
and global windows (each user's next 20%) they did not help (0.4532 -> 0.4514, 0.4323 -> 0.4312): those labels reach
past the session.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from recsys_platform import schemas

STEPS_TREND_SCALE = 100.0  # steps per minute, per minute, that count as a full-strength rise
HEART_RATE_TREND_SCALE = 2.0  # beats per minute, per minute


@dataclass(frozen=True)
class ContextWeights:
    """Boosts, in per-user standard deviations of the ranker score."""

    search: float = 1.0
    night_sleep: float = 1.5
    movement: float = 2.0
    sleep_bounce: float = -1.0


def movement_intent() -> pl.Expr:
    """In [0, 1]: mean of the step and heart-rate rises, zero unless both rise."""
    steps = (pl.col("steps_trend").fill_null(0.0) / STEPS_TREND_SCALE).clip(0.0, 1.0)
    heart = (pl.col("heart_rate_trend").fill_null(0.0) / HEART_RATE_TREND_SCALE).clip(0.0, 1.0)
    return pl.when((steps > 0) & (heart > 0)).then((steps + heart) / 2.0).otherwise(0.0)


def apply_context(scored: pl.DataFrame, sessions: pl.DataFrame, weights: ContextWeights | None = None) -> pl.DataFrame:
    """Add `score_context` (and `context_boost`) to a scored ranker frame with a `content_type` column."""
    w = weights or ContextWeights()
    if scored.height == 0:
        return scored.with_columns(context_boost=pl.lit(0.0), score_context=pl.col("score"))
    sess_cols = ["user_id", "is_night", "sess_sleep_bounce_rate", "steps_trend", "heart_rate_trend"]
    sess_cols += [f"search_{t}" for t in schemas.TOPIC_CONTENT_TYPES]
    ctx = sessions.select([c for c in sess_cols if c in sessions.columns])
    frame = scored.join(ctx, on="user_id", how="left")
    for col in sess_cols[1:]:
        if col not in frame.columns:
            frame = frame.with_columns(pl.lit(None, dtype=pl.Float64).alias(col))
    ctype = pl.col("content_type")
    is_sleep = schemas.is_sleep_content(ctype).cast(pl.Float64)
    search_boost = pl.sum_horizontal(
        [
            pl.col(f"search_{topic}").fill_null(0.0) * ctype.is_in(list(types)).cast(pl.Float64)
            for topic, types in schemas.TOPIC_CONTENT_TYPES.items()
        ]
    )
    night = pl.col("is_night").fill_null(False).cast(pl.Float64)
    boost = (
        w.search * search_boost
        + w.night_sleep * pl.col("search_sleep").fill_null(0.0) * night * is_sleep
        + w.movement * movement_intent() * (ctype == "movement").cast(pl.Float64)
        + w.sleep_bounce * pl.col("sess_sleep_bounce_rate").fill_null(0.0) * is_sleep
    )
    std = pl.col("score").std(ddof=0).over("user_id")
    z = (pl.col("score") - pl.col("score").mean().over("user_id")) / pl.when(std > 1e-9).then(std).otherwise(1.0)
    return (
        frame.with_columns(context_boost=boost)
        .with_columns(score_context=z + pl.col("context_boost"))
        .drop([c for c in sess_cols[1:] if c not in scored.columns])
    )
