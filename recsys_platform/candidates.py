"""Candidate generation: several sources, each contributing a score and a rank per (user, item).

Sources: `pop` (overall recent popularity), `seg_pop` (popularity in the user's segment),
`tod_pop` (popularity in the user's preferred time of day), `cf` (EASE item-item model),
`content` (metadata similarity to the user's taste: topic, narrator, type), `history` (the
user's own favourites, for repeat listening) and `new` (recent releases). The union is the
ranker's input; a missing source is rank = `MISSING_RANK`, score = 0.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import polars as pl

from recsys_platform.collaborative import EaseModel, fit_ease
from recsys_platform.features import history_before

logger = logging.getLogger(__name__)

SOURCES: tuple[str, ...] = ("pop", "seg_pop", "tod_pop", "cf", "content", "history", "new")
MISSING_RANK = 1000
POPULARITY_DAYS = 14
NEW_RELEASE_DAYS = 14
CONTENT_FACETS = (("topic", 1.0), ("narrator", 0.6), ("content_type", 0.4))
CONTENT_BLOCK_USERS = 2000


@dataclass
class CandidateContext:
    """Everything candidate generation knows as of a cutoff (fitted once, used for many users)."""

    cutoff: datetime
    history: pl.DataFrame  # interactions before the cutoff
    items: pl.DataFrame
    users: pl.DataFrame
    ease: EaseModel | None
    affinities: dict[str, pl.DataFrame]
    # Global per-source tables (popularity by segment, daypart, ...), computed once per context and
    # shared by its copies, so scoring users chunk by chunk does not re-aggregate the whole history.
    tables: dict[str, pl.DataFrame] = field(default_factory=dict, repr=False, compare=False)
    # The history of the users this context serves (None: `history`), for the per-user sources.
    user_history: pl.DataFrame | None = field(default=None, repr=False, compare=False)

    def table(self, key: str, build: Callable[[], pl.DataFrame]) -> pl.DataFrame:
        """The global table `key`, built on first use."""
        if key not in self.tables:
            self.tables[key] = build()
        return self.tables[key]


def _ts(cutoff: datetime) -> pl.Expr:
    return pl.lit(cutoff, dtype=pl.Datetime("us", "UTC"))


def build_context(
    interactions: pl.DataFrame, items: pl.DataFrame, users: pl.DataFrame, cutoff: datetime
) -> CandidateContext:
    """Fit the global candidate sources (history, EASE) on interactions strictly before `cutoff`.

    The per-user affinities are left empty: `ranking.PointInTime` computes them for the users it
    serves, so their cost grows with those users, not with everyone."""
    history = history_before(interactions, cutoff)
    positive = history.filter(pl.col("weight") > 0).select("user_id", "item_id", "weight")
    ease = fit_ease(positive, l2=200.0, binary=True) if positive.height else None
    return CandidateContext(cutoff=cutoff, history=history, items=items, users=users, ease=ease, affinities={})


def _ranked(df: pl.DataFrame, by: list[str], source: str, n: int) -> pl.DataFrame:
    """Keep the top-n items per group of `by` by score, as [*by, item_id, score_<s>, rank_<s>]."""
    return (
        df.sort([*by, "score", "item_id"], descending=[*([False] * len(by)), True, False])
        .with_columns(rank=pl.int_range(1, pl.len() + 1).over(by) if by else pl.int_range(1, pl.len() + 1))
        .filter(pl.col("rank") <= n)
        .select(
            *by,
            "item_id",
            pl.col("score").cast(pl.Float64).alias(f"score_{source}"),
            pl.col("rank").cast(pl.Int64).alias(f"rank_{source}"),
        )
    )


def _released(ctx: CandidateContext) -> pl.DataFrame:
    return ctx.items.filter(pl.col("release_date") <= _ts(ctx.cutoff).dt.date()).select("item_id")


def popularity_table(ctx: CandidateContext, days: int = POPULARITY_DAYS) -> pl.DataFrame:
    """Distinct users with a positive interaction per item in the last `days` days: [item_id, score]."""
    since = _ts(ctx.cutoff) - pl.duration(days=days)
    return ctx.table(
        f"popularity_{days}d",
        lambda: (
            ctx.history.filter((pl.col("weight") > 0) & (pl.col("event_time") >= since))
            .group_by("item_id")
            .agg(score=pl.col("user_id").n_unique().cast(pl.Float64))
            .join(_released(ctx), on="item_id", how="inner")
        ),
    )


def source_pop(ctx: CandidateContext, user_ids: pl.DataFrame, n: int) -> pl.DataFrame:
    """Overall recent popularity, the same list for everyone."""
    return user_ids.join(_ranked(popularity_table(ctx), [], "pop", n), how="cross")


def source_segment_pop(ctx: CandidateContext, user_ids: pl.DataFrame, n: int) -> pl.DataFrame:
    """Popularity among users of the same language and experience level."""
    seg = ctx.users.select("user_id", segment=pl.concat_str("language", "experience_level", separator=":"))
    since = _ts(ctx.cutoff) - pl.duration(days=POPULARITY_DAYS)
    table = ctx.table(
        "segment_popularity",
        lambda: (
            ctx.history.filter((pl.col("weight") > 0) & (pl.col("event_time") >= since))
            .join(seg, on="user_id")
            .group_by("segment", "item_id")
            .agg(score=pl.col("user_id").n_unique().cast(pl.Float64))
        ),
    )
    return (
        user_ids.join(seg, on="user_id").join(_ranked(table, ["segment"], "seg_pop", n), on="segment").drop("segment")
    )


def source_time_of_day_pop(ctx: CandidateContext, user_ids: pl.DataFrame, n: int) -> pl.DataFrame:
    """Popularity among plays at the user's preferred time of day (local hour)."""
    local = (pl.col("event_time").dt.hour().cast(pl.Int64) + pl.col("utc_offset_hours")).mod(24)
    daypart = (
        pl.when((local >= 6) & (local < 12))
        .then(pl.lit("morning"))
        .when((local >= 12) & (local < 18))
        .then(pl.lit("afternoon"))
        .when((local >= 18) & (local < 22))
        .then(pl.lit("evening"))
        .otherwise(pl.lit("night"))
    )
    table = ctx.table(
        "daypart_popularity",
        lambda: (
            ctx.history.filter(pl.col("weight") > 0)
            .join(ctx.users.select("user_id", "utc_offset_hours"), on="user_id")
            .with_columns(daypart=daypart)
            .group_by("daypart", "item_id")
            .agg(score=pl.col("user_id").n_unique().cast(pl.Float64))
        ),
    )
    prefs = ctx.users.select("user_id", daypart=pl.col("preferred_daypart"))
    return (
        user_ids.join(prefs, on="user_id").join(_ranked(table, ["daypart"], "tod_pop", n), on="daypart").drop("daypart")
    )


def source_cf(ctx: CandidateContext, user_ids: pl.DataFrame, n: int) -> pl.DataFrame:
    """EASE item-item collaborative scores (seen items kept: repeat listening is real here)."""
    if ctx.ease is None:
        return pl.DataFrame(
            schema={"user_id": pl.String, "item_id": pl.String, "score_cf": pl.Float64, "rank_cf": pl.Int64}
        )
    recs = ctx.ease.recommend(user_ids["user_id"], k=n, exclude_seen=False)
    return recs.select(
        "user_id", "item_id", score_cf=pl.col("score").cast(pl.Float64), rank_cf=pl.col("rank").cast(pl.Int64)
    ).join(_released(ctx), on="item_id", how="semi")


def source_content(ctx: CandidateContext, user_ids: pl.DataFrame, n: int) -> pl.DataFrame:
    """Metadata similarity: the user's topic, narrator and content-type shares summed per item."""
    items = (
        ctx.items.join(_released(ctx), on="item_id", how="semi")
        .select("item_id", *(f for f, _ in CONTENT_FACETS))
        .sort("item_id")
    )
    users = user_ids.select("user_id").unique(maintain_order=True).with_row_index("u")
    parts = []
    # Dense (users x items) scores, a block of users at a time: a few vector ops instead of a
    # join per facet value and a group-by over every (user, item) pair.
    for start in range(0, users.height, CONTENT_BLOCK_USERS):
        block = users.slice(start, CONTENT_BLOCK_USERS).with_columns(pl.col("u") - start)
        score = np.zeros((block.height, items.height))
        for facet, weight in CONTENT_FACETS:
            values = items.select(facet).drop_nulls().unique().sort(facet).with_row_index("v")
            # items without a value point at an extra all-zero column
            codes = items.select(facet).join(values, on=facet, how="left", maintain_order="left")["v"]
            aff = ctx.affinities[facet].join(block, on="user_id").join(values, on=facet)
            share = np.zeros((block.height, values.height + 1))
            share[aff["u"].to_numpy(), aff["v"].to_numpy()] = aff[f"aff_{facet}"].to_numpy()
            score += weight * share[:, codes.fill_null(values.height).to_numpy()]
        # Rounded so that equal sums reached in a different order tie exactly; ties: smaller item_id first.
        score = np.round(score, 12)
        order = np.argsort(-score, axis=1, kind="stable")[:, :n]
        top = np.take_along_axis(score, order, axis=1)
        row, pos = np.nonzero(top > 0)  # only items matching at least one facet of the user's taste
        parts.append(
            pl.DataFrame(
                {
                    "user_id": block["user_id"].gather(row),
                    "item_id": items["item_id"].gather(order[row, pos]),
                    "score_content": top[row, pos],
                    "rank_content": pos.astype(np.int64) + 1,
                }
            )
        )
    if not parts:
        return pl.DataFrame(
            schema={"user_id": pl.String, "item_id": pl.String, "score_content": pl.Float64, "rank_content": pl.Int64}
        )
    return pl.concat(parts)


def source_history(ctx: CandidateContext, user_ids: pl.DataFrame, n: int) -> pl.DataFrame:
    """The user's own most-loved items (replays), by summed positive weight."""
    scores = (
        (ctx.history if ctx.user_history is None else ctx.user_history)
        .join(user_ids, on="user_id", how="semi")
        .filter(pl.col("weight") > 0)
        .group_by("user_id", "item_id")
        .agg(score=pl.col("weight").sum())
    )
    return _ranked(scores, ["user_id"], "history", n)


def source_new(ctx: CandidateContext, user_ids: pl.DataFrame, n: int) -> pl.DataFrame:
    """Recent releases, ranked by their early uptake."""
    cut = _ts(ctx.cutoff).dt.date()
    fresh = ctx.items.filter(
        (pl.col("release_date") <= cut) & (pl.col("release_date") > cut - pl.duration(days=NEW_RELEASE_DAYS))
    ).select("item_id")
    table = fresh.join(popularity_table(ctx, days=NEW_RELEASE_DAYS), on="item_id", how="left").with_columns(
        pl.col("score").fill_null(0.0)
    )
    return user_ids.join(_ranked(table, [], "new", n), how="cross")


SOURCE_FUNCTIONS = {
    "pop": source_pop,
    "seg_pop": source_segment_pop,
    "tod_pop": source_time_of_day_pop,
    "cf": source_cf,
    "content": source_content,
    "history": source_history,
    "new": source_new,
}


def generate_candidates(ctx: CandidateContext, user_ids: pl.Series | list[str], n: int) -> pl.DataFrame:
    """Union of all sources for the given users: [user_id, item_id, score_<s>, rank_<s> for each s]."""
    users = pl.DataFrame({"user_id": pl.Series(list(user_ids), dtype=pl.String)}).unique(maintain_order=True)
    sizes = {"new": max(5, n // 6), "history": max(5, n // 3)}
    frames = [fn(ctx, users, sizes.get(name, n)) for name, fn in SOURCE_FUNCTIONS.items()]
    out = users.join(frames[0], on="user_id", how="inner")
    for frame in frames[1:]:
        out = out.join(frame, on=["user_id", "item_id"], how="full", coalesce=True)
    kids_ok = ctx.users.select("user_id", kids=pl.col("household_type") == "family_with_kids")
    kids_items = ctx.items.filter(pl.col("is_kids")).select("item_id", is_kids=pl.lit(True))
    out = (
        out.with_columns(
            [pl.col(f"score_{s}").fill_null(0.0) for s in SOURCES]
            + [pl.col(f"rank_{s}").fill_null(MISSING_RANK) for s in SOURCES]
        )
        # Kids content only for households with kids.
        .join(kids_ok, on="user_id", how="left")
        .join(kids_items, on="item_id", how="left")
        .filter(~(pl.col("is_kids").fill_null(False) & ~pl.col("kids").fill_null(False)))
        .drop("kids", "is_kids")
        .with_columns(
            n_sources=pl.sum_horizontal([(pl.col(f"rank_{s}") < MISSING_RANK).cast(pl.Int64) for s in SOURCES])
        )
    )
    return out.sort("user_id", "item_id")


def candidate_recall(candidates: pl.DataFrame, truth: pl.DataFrame) -> dict[str, float]:
    """Share of truth (user, item) pairs covered by all candidates and by each source alone."""
    truth = truth.select("user_id", "item_id").unique()
    if truth.height == 0:
        return {}
    hit = truth.join(candidates, on=["user_id", "item_id"], how="left")
    out = {"all": hit.filter(pl.col("n_sources").is_not_null()).height / truth.height}
    for s in SOURCES:
        out[s] = hit.filter(pl.col(f"rank_{s}") < MISSING_RANK).height / truth.height
    return out
