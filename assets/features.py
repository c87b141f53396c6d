"""Feature assets: interactions, user and item features, item similarities (as of the latest event)."""

from datetime import UTC, datetime, timedelta

import dagster as dg
import polars as pl

from assets import groups
from assets.pools import HISTORY_POOL, in_pool
from recsys_platform.analytics.reporting import frame_preview_markdown
from recsys_platform.features import tables as feats
from recsys_platform.features.item_cooccurrence import fit_item_cooccurrence

GROUP = groups.FEATURES


def feature_cutoff(interactions: pl.LazyFrame | pl.DataFrame) -> datetime:
    """Serving features use every event up to the latest one."""
    latest = feats.latest_event_time(interactions)
    return datetime.now(UTC) if latest is None else latest + timedelta(microseconds=1)


@dg.asset(group_name=GROUP, kinds={"polars", "parquet"}, **in_pool(HISTORY_POOL))
def interactions(context: dg.AssetExecutionContext, raw_events: pl.LazyFrame, items: pl.DataFrame) -> pl.DataFrame:
    """Content interactions from raw events: typed, deduplicated by event_id across all hours, weighted
    (complete 3 > favorite 2 > start 1; exits 0, bounces under 30 s -1 as negative signal)."""
    df = feats.build_interactions(raw_events, items)
    context.add_output_metadata(
        {
            "users": df["user_id"].n_unique(),
            "items": df["item_id"].n_unique(),
            "by_event_type": dg.MetadataValue.json({k: int(v) for k, v in df.group_by("event_type").len().iter_rows()}),
            "bounces": int(df["is_bounce"].sum()),
        }
    )
    return df


@dg.asset(group_name=GROUP, kinds={"polars", "parquet"}, **in_pool(HISTORY_POOL))
def session_signals(context: dg.AssetExecutionContext, raw_events: pl.LazyFrame) -> pl.DataFrame:
    """The events of sessions that are not content interactions: searches (query text) and biometric readings
    (steps, heart rate), deduplicated by event_id across all hours. The ranker's session features read them
    up to each user's cutoff, in training, batch scoring and the near-real-time refresh alike."""
    from recsys_platform.model.signals import signal_events

    df = signal_events(raw_events)
    context.add_output_metadata(
        {
            "users": df["user_id"].n_unique(),
            "by_event_type": dg.MetadataValue.json({k: int(v) for k, v in df.group_by("event_type").len().iter_rows()}),
            "distinct_queries": df["query"].n_unique(),
        }
    )
    return df


@dg.asset(group_name=GROUP, kinds={"polars", "parquet"}, **in_pool(HISTORY_POOL))
def user_features(
    context: dg.AssetExecutionContext, interactions: pl.LazyFrame, users: pl.DataFrame, items: pl.DataFrame
) -> pl.DataFrame:
    """Per-user activity, habits (night/morning share, sleep/movement share), level and cold-start
    segment, computed from events before the latest event (the serving point in time)."""
    cutoff = feature_cutoff(interactions)
    df = feats.user_features(interactions, users, items, cutoff)  # a scan, aggregated as it is read
    context.add_output_metadata(
        {"feature_cutoff": cutoff.isoformat(), "active_users": int((df["user_starts"] > 0).sum())}
    )
    return df


@dg.asset(group_name=GROUP, kinds={"polars", "parquet"}, **in_pool(HISTORY_POOL))
def item_features(context: dg.AssetExecutionContext, interactions: pl.LazyFrame, items: pl.DataFrame) -> pl.DataFrame:
    """Per-item popularity (all time, 7 days, 1 day), completion and bounce rates, freshness and level."""
    cutoff = feature_cutoff(interactions)
    df = feats.item_features(interactions, items, cutoff)  # a scan, aggregated as it is read
    top = df.sort("item_completes_7d", descending=True).select("item_id", "title", "content_type", "item_completes_7d")
    context.add_output_metadata(
        {
            "feature_cutoff": cutoff.isoformat(),
            "top_items_7d": dg.MetadataValue.md(frame_preview_markdown(top, 10)),
        }
    )
    return df


@dg.asset(group_name=GROUP, kinds={"polars", "parquet"}, **in_pool(HISTORY_POOL))
def similar_items(interactions: pl.LazyFrame) -> pl.DataFrame:
    """Item-to-item neighbours (Jaccard co-occurrence of positive interactions), 20 per item."""
    positive = feats.read_history(interactions, ("user_id", "item_id", "weight"), positive_only=True)
    if positive.height == 0:
        return pl.DataFrame(
            schema={
                "item_id": pl.String,
                "similar_item_id": pl.String,
                "score": pl.Float32,
                "rank": pl.UInt32,
            }
        )
    model = fit_item_cooccurrence(positive, similarity="jaccard")
    return model.similar_items(model.data.item_ids, k=20)
