"""Opt-in simulation of an experiment's arms on top of the synthetic generator.

The generator's output is left exactly as it is; this module adds the behaviour the arms cause
during the experiment window. A user's arm comes from the same bucketing the analysis uses.
Behavioural model, per user and day of the window (independent draws, fixed seed):

- model arm: users with structured tastes (most of their plays in one topic before the window)
  come back for an extra session with probability `model_lift_structured` and play an item of
  their favourite topic; other users in the arm with probability `model_lift_other`;
- popularity arm: everyone with probability `popularity_lift`, playing a popular item;
- control: nothing is added.

An extra session is an app open, a content start and (with `complete_share`) a completion.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import polars as pl

from recsys_platform import schemas
from recsys_platform.batch.set_config import ExperimentConfig
from recsys_platform.dev.generator import SyntheticDataset
from recsys_platform.experiments.ab_tests import assign_arms

logger = logging.getLogger(__name__)

TS = pl.Datetime("us", "UTC")


@dataclass(frozen=True)
class ArmEffects:
    """Daily probability of an extra session caused by each arm."""

    model_lift_structured: float = 0.25
    model_lift_other: float = 0.02
    popularity_lift: float = 0.04
    complete_share: float = 0.8
    structured_share: float = 0.35  # top-topic share of plays that makes a user "structured"
    model_arm: str = "model"
    popularity_arm: str = "popularity"


def structured_users(events: pl.DataFrame, items: pl.DataFrame, before: pl.Expr, share: float) -> pl.DataFrame:
    """Users whose plays before the window concentrate on one topic: [user_id, topic, structured]."""
    plays = (
        events.filter((pl.col("event_type") == "content_start") & (pl.col("event_time") < before))
        .join(items.select("item_id", "topic"), on="item_id")
        .group_by("user_id", "topic")
        .len()
    )
    return (
        plays.sort(["user_id", "len", "topic"], descending=[False, True, False])
        .group_by("user_id", maintain_order=True)
        .agg(topic=pl.col("topic").first(), top=pl.col("len").first(), total=pl.col("len").sum())
        .with_columns(structured=(pl.col("total") >= 3) & (pl.col("top") / pl.col("total") >= share))
        .select("user_id", "topic", "structured")
    )


def simulate_arms(
    ds: SyntheticDataset, experiment: ExperimentConfig, effects: ArmEffects = ArmEffects(), seed: int = 0
) -> SyntheticDataset:
    """Add the arms' extra sessions in the last `experiment.duration_days` days of `ds`."""
    rng = np.random.default_rng([seed, 99])
    end = ds.events["event_time"].max()
    start = end - timedelta(days=experiment.duration_days)
    days = experiment.duration_days
    tastes = structured_users(ds.events, ds.items, pl.lit(start, dtype=TS), effects.structured_share)
    users = assign_arms(ds.users["user_id"], experiment).join(tastes, on="user_id", how="left")
    structured = users["structured"].fill_null(False).to_numpy()
    arm = users["arm"].to_numpy()
    p = np.where(
        arm == effects.model_arm,
        np.where(structured, effects.model_lift_structured, effects.model_lift_other),
        np.where(arm == effects.popularity_arm, effects.popularity_lift, 0.0),
    )
    extra = rng.random((users.height, days)) < p[:, None]
    u_idx, day = np.nonzero(extra)
    n = len(u_idx)
    # Item: the favourite topic's items for the model arm, popular items for the popularity arm.
    popular = (
        ds.events.filter(pl.col("event_type") == "content_complete")
        .group_by("item_id")
        .len()
        .sort(["len", "item_id"], descending=[True, False])
        .head(50)["item_id"]
        .to_numpy()
    )
    by_topic = ds.items.filter(~pl.col("is_kids")).group_by("topic").agg("item_id")
    topic_items = dict(zip(by_topic["topic"].to_list(), by_topic["item_id"].to_list(), strict=True))
    topics = users["topic"].to_list()
    item = np.empty(n, dtype=object)
    for k, (u, pick) in enumerate(zip(u_idx, rng.random(n), strict=True)):
        pool = topic_items.get(topics[u]) if arm[u] == effects.model_arm and topics[u] else None
        pool = pool if pool else popular
        item[k] = pool[int(pick * len(pool))]
    sec = start.timestamp() + day * 86400.0 + rng.uniform(0, 86400.0 - 7200.0, n)
    durations = dict(zip(ds.items["item_id"].to_list(), ds.items["duration_seconds"].to_list(), strict=True))
    dur = np.array([durations[i] for i in item], dtype=float)
    complete = rng.random(n) < effects.complete_share
    user_ids = users["user_id"].to_numpy()[u_idx]
    session = np.array([f"x{seed}-{k}" for k in range(n)], dtype=object)

    def part(
        etype: str, offset: np.ndarray, mask: np.ndarray, with_item: bool, listened: np.ndarray | None
    ) -> pl.DataFrame:
        m = int(mask.sum())
        return pl.DataFrame(
            {
                "event_id": [f"x{seed}-{etype}-{k}" for k in np.flatnonzero(mask)],
                "user_id": user_ids[mask],
                "event_type": [etype] * m,
                "event_time": ((sec + offset)[mask] * 1e6).astype(np.int64),
                "session_id": session[mask],
                "item_id": item[mask] if with_item else [None] * m,
                "seconds_listened": listened[mask] if listened is not None else [None] * m,
            },
            schema_overrides={"item_id": pl.String, "seconds_listened": pl.Float64},
        ).with_columns(pl.col("event_time").cast(TS))

    everyone = np.ones(n, dtype=bool)
    added = pl.concat(
        [
            part("app_open", np.zeros(n), everyone, False, None),
            part("content_start", np.full(n, 60.0), everyone, True, None),
            part("content_complete", 60.0 + dur, complete, True, dur),
        ]
    )
    added = schemas.conform(added, schemas.RAW_EVENT_SCHEMA).with_columns(
        arrival_time=pl.col("event_time") + pl.duration(seconds=5)
    )
    added = added.filter(pl.col("event_time") <= end)
    logger.info("experiment %s: %d extra sessions over %d days", experiment.name, n, days)
    events = pl.concat([ds.events, added.select(ds.events.columns)]).sort("arrival_time", "event_id")
    return SyntheticDataset(items=ds.items, users=ds.users, events=events)
