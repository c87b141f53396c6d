"""Feature and label windows derived from the data itself, for training and for the two evaluation protocols.

A `Split` cuts the interactions at a time per user: events before a user's cutoff are what the
models may know (features, candidates, fitted sources), events from the cutoff until `end` are
what they must predict (labels or held-out truth). Two protocols, both as `Split`s:

* per-user temporal: each user's newest `fraction` of interactions (by count, at least one) is
  held out, so every user with a few interactions is evaluated, whatever the calendar looks like;
* global temporal: the newest `fraction` of all interactions (a time quantile) is held out, users
  with history before it are evaluated: the live situation, where everyone's future is unknown.

Nothing here reads a calendar constant: windows are quantiles of the interactions, so a dataset
with sparse last weeks (or one spanning decades) trains with the defaults.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from recsys_platform import schemas

logger = logging.getLogger(__name__)

TS = pl.Datetime("us", "UTC")
# Below these, a dataset is too small for a training window and a holdout: one message says so.
MIN_INTERACTIONS = 1000
MIN_USERS_WITH_LABELS = 20
# A user needs this many interactions before the per-user protocol holds any of them out.
MIN_USER_EVENTS = 3
# Relevance of a label pair: the best of its events in the window (declared with the event types in `schemas`).
RELEVANCE = schemas.EVENT_RELEVANCE


class InsufficientHistoryError(ValueError):
    """The interactions are too few for a training window and a holdout."""


@dataclass(frozen=True)
class Split:
    """Per-user cutoffs: events before a user's cutoff are known, events in [cutoff, end) are to predict."""

    name: str
    cutoffs: pl.DataFrame  # user_id, cutoff of the users held out
    end: datetime
    known_until: datetime  # when the known part ends: just after its newest event (global: the cutoff)
    # The global split's one cutoff, for every user: users it does not evaluate are unknown from it on too, and
    # features are as of it. None for a per-user split: users absent from `cutoffs` are known whole, and each
    # cutoff is the time of that user's next event, which features must not read: they are as of known_until
    # (`procedure.feature_times`).
    common_cutoff: datetime | None = None

    def known(self, interactions: pl.DataFrame) -> pl.DataFrame:
        """The interactions the models may read (before each user's cutoff)."""
        others = pl.lit(self.common_cutoff or self.end, dtype=TS)
        lf = interactions.lazy().join(self.cutoffs.lazy().select("user_id", "cutoff"), on="user_id", how="left")
        return lf.filter(pl.col("event_time") < pl.coalesce("cutoff", others)).drop("cutoff").collect()

    def truth(self, interactions: pl.DataFrame) -> pl.DataFrame:
        """(user, item, relevance) of the pairs to predict: the best event of each in [cutoff, end), or in [cutoff,
        until) where `cutoffs` has an `until` per user (a session window's labels end with the session)."""
        end = pl.col("until") if "until" in self.cutoffs.columns else pl.lit(self.end, dtype=TS)
        return (
            interactions.lazy()
            .join(self.cutoffs.lazy(), on="user_id", how="inner")
            .filter((pl.col("event_time") >= pl.col("cutoff")) & (pl.col("event_time") < end))
            .filter(pl.col("event_type").is_in(list(RELEVANCE)))
            .group_by("user_id", "item_id")
            .agg(relevance=pl.col("event_type").replace_strict(RELEVANCE, return_dtype=pl.Int64).max())
            .sort("user_id", "item_id")
            .collect()
        )

    def describe(self) -> dict[str, object]:
        """Plain facts for run metadata."""
        return {
            "protocol": self.name,
            "users_held_out": self.cutoffs.height,
            "first_cutoff": str(self.cutoffs["cutoff"].min()) if self.cutoffs.height else None,
            "last_cutoff": str(self.known_until),
            "end": str(self.end),
        }


@dataclass(frozen=True)
class PairSplit:
    """Held-out (user, item) pairs anywhere in the users' histories: every event of a held-out pair is to
    predict, everything else is known (a per-user random split, the Microsoft Recommenders protocol's kind)."""

    name: str
    held: pl.DataFrame  # user_id, item_id
    end: datetime

    @property
    def cutoffs(self) -> pl.DataFrame:
        """Every held-out user is scored as of the end (their known part spans their whole history)."""
        return self.held.select("user_id").unique().sort("user_id").with_columns(cutoff=pl.lit(self.end, dtype=TS))

    @property
    def known_until(self) -> datetime:
        """The known part runs to the end."""
        return self.end

    @property
    def common_cutoff(self) -> datetime:
        """Every user's features are as of the end, as after a global cutoff (`procedure.feature_times`)."""
        return self.end

    def known(self, interactions: pl.DataFrame) -> pl.DataFrame:
        """The interactions of pairs not held out."""
        return interactions.join(self.held, on=["user_id", "item_id"], how="anti", maintain_order="left")

    def truth(self, interactions: pl.DataFrame) -> pl.DataFrame:
        """(user, item, relevance) of the held-out pairs."""
        return (
            interactions.join(self.held, on=["user_id", "item_id"], how="semi")
            .filter(pl.col("event_type").is_in(list(RELEVANCE)))
            .group_by("user_id", "item_id")
            .agg(relevance=pl.col("event_type").replace_strict(RELEVANCE, return_dtype=pl.Int64).max())
            .sort("user_id", "item_id")
        )

    def describe(self) -> dict[str, object]:
        """Plain facts for run metadata."""
        return {"protocol": self.name, "users_held_out": self.held["user_id"].n_unique(), "end": str(self.end)}


def random_pair_split(
    interactions: pl.DataFrame, fraction: float = 0.2, seed: int = 0, name: str = "random"
) -> PairSplit:
    """A seeded random `fraction` of each user's distinct items (at least one), users with fewer than
    MIN_USER_EVENTS items kept whole."""
    pairs = _plays(interactions).select("user_id", "item_id").unique().sort("user_id", "item_id").collect()
    keys = np.random.default_rng(seed).random(pairs.height)
    held = (
        pairs.with_columns(_k=pl.Series(keys))
        .with_columns(n=pl.len().over("user_id"), pos=pl.col("_k").rank("ordinal").over("user_id"))
        .filter(pl.col("n") >= MIN_USER_EVENTS)
        .filter(pl.col("pos") <= (pl.col("n") * fraction).round().clip(1, pl.col("n") - 1))
        .select("user_id", "item_id")
    )
    return PairSplit(name, held, _end(interactions))


def _plays(interactions: pl.DataFrame) -> pl.LazyFrame:
    """The events that count as one interaction each: plays (content starts), or every event without any."""
    lf = interactions.lazy()
    has_starts = interactions.select((pl.col("event_type") == "content_start").any()).item()
    return lf.filter(pl.col("event_type") == "content_start") if has_starts else lf


def _end(interactions: pl.DataFrame) -> datetime:
    return interactions["event_time"].max() + timedelta(microseconds=1)


def per_user_split(interactions: pl.DataFrame, fraction: float = 0.2, name: str = "per_user") -> Split:
    """Each user's newest `fraction` of content events (at least one) to predict, users with fewer than
    MIN_USER_EVENTS events kept whole; events at the same time as the cutoff event go with it."""
    end = _end(interactions)
    ranked = (
        _plays(interactions)
        .select("user_id", "event_time")
        .sort("user_id", "event_time")
        .with_columns(n=pl.len().over("user_id"), pos=pl.int_range(pl.len()).over("user_id"))
        .filter(pl.col("n") >= MIN_USER_EVENTS)
        .with_columns(held=(pl.col("n") * fraction).round().clip(1, pl.col("n") - 1))
        .filter(pl.col("pos") == pl.col("n") - pl.col("held"))
        .select("user_id", cutoff=pl.col("event_time"))
        .sort("user_id")
        .collect()
    )
    return _per_user_cut(interactions, name, ranked, end)


def _per_user_cut(interactions: pl.DataFrame, name: str, cutoffs: pl.DataFrame, end: datetime) -> Split:
    """A Split at per-user `cutoffs` whose known part ends just after its newest known event: not the latest cutoff,
    which is the time of a held-out event."""
    newest = Split(name, cutoffs, end, end).known(interactions)["event_time"].max()
    known_until = newest + timedelta(microseconds=1) if newest is not None else end
    return Split(name, cutoffs, end, known_until)


def session_split(interactions: pl.DataFrame, gap_s: float, name: str = "session") -> Split:
    """Each user's newest sitting to predict, from its first play to its last (plays less than `gap_s` apart, as
    `sources._sessions` groups them), for users with at least MIN_USER_EVENTS plays before it. What a session
    signal is for: the searches, readings and bounces just before a sitting, and what the user plays in it. Their
    later events (none: it is their newest) are not labels, so the window asks only about that sitting."""
    end = _end(interactions)
    starts = (
        _plays(interactions)
        .select("user_id", "event_time")
        .sort("user_id", "event_time")
        .with_columns(
            new=(pl.col("event_time").diff().over("user_id").dt.total_microseconds() / 1e6)
            .fill_null(float("inf"))
            .ge(gap_s)
        )
        .with_columns(sitting=pl.col("new").cum_sum().over("user_id"), before=pl.int_range(pl.len()).over("user_id"))
        .filter(pl.col("sitting") == pl.col("sitting").max().over("user_id"))
        .group_by("user_id")
        .agg(cutoff=pl.col("event_time").min(), until=pl.col("event_time").max(), before=pl.col("before").min())
        .filter(pl.col("before") >= MIN_USER_EVENTS)
        .select("user_id", "cutoff", until=pl.col("until") + timedelta(seconds=gap_s))
        .sort("user_id")
        .collect()
    )
    return _per_user_cut(interactions, name, starts, end)


def global_split(interactions: pl.DataFrame, fraction: float = 0.1, name: str = "global") -> Split:
    """The newest `fraction` of content events to predict (a time quantile), for users with events before it."""
    end = _end(interactions)
    cutoff = (
        _plays(interactions)
        .select(pl.col("event_time").quantile(1.0 - fraction, interpolation="lower"))
        .collect()
        .item()
    )
    before = interactions.filter(pl.col("event_time") < cutoff).select("user_id").unique()
    after = interactions.filter(pl.col("event_time") >= cutoff).select("user_id").unique()
    users = before.join(after, on="user_id", how="semi").sort("user_id")
    cutoffs = users.with_columns(cutoff=pl.lit(cutoff, dtype=TS))
    return Split(name, cutoffs, end, cutoff, common_cutoff=cutoff)


def repeat_share(interactions: pl.DataFrame) -> float:
    """Share of plays that replay an item the user had played before (0 when every pair is played once)."""
    starts = interactions.filter(pl.col("event_type") == "content_start")
    if starts.height == 0:
        return 0.0
    pairs = starts.select("user_id", "item_id").unique().height
    return 1.0 - pairs / starts.height


def require_enough(interactions: pl.DataFrame | pl.LazyFrame) -> None:
    """InsufficientHistoryError, naming the minimum, when the data cannot hold a training window and a holdout.

    Counts content interactions (plays, completions, exits, favourites); the users who count are those with at least
    MIN_USER_EVENTS plays (content starts) the way the windows hold them out, or content events when there are no plays.
    `interactions` needs `user_id` and `event_type` only (raw events do)."""
    lf = interactions.lazy().filter(pl.col("event_type").is_in(list(RELEVANCE)))
    counts = lf.group_by("event_type").len().collect()
    n = int(counts["len"].sum())
    plays = counts.filter(pl.col("event_type") == "content_start")["len"].sum()
    what = lf.filter(pl.col("event_type") == "content_start") if plays else lf
    per_user = what.group_by("user_id").len().collect()
    users = per_user.filter(pl.col("len") >= MIN_USER_EVENTS).height
    if n < MIN_INTERACTIONS or users < MIN_USERS_WITH_LABELS:
        raise InsufficientHistoryError(
            f"{n:,} content interactions from {users:,} users with at least {MIN_USER_EVENTS} each: the training "
            f"cycle needs at least {MIN_INTERACTIONS:,} interactions and {MIN_USERS_WITH_LABELS} such users "
            f"(each user's newest interactions are held out to train and to evaluate on)"
        )
