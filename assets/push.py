"""Push asset: notify users right after a session or a night-time sleep search with their top recommendation."""

from datetime import UTC, datetime

import dagster as dg
import polars as pl

from assets import groups
from recsys_platform import schemas
from recsys_platform.analytics.reporting import frame_preview_markdown
from recsys_platform.push.selection import PushRules, schedule_pushes
from resources import OnlineStoreResource, PushQueueResource

GROUP = groups.SERVING
_DEFAULT_RULES = PushRules()


class PushConfig(dg.Config):
    """When "now" is and the trigger windows (defaults from `PushRules`)."""

    as_of: str = ""  # ISO timestamp; empty means the latest event time (data time, like feature_cutoff)
    completed_within_minutes: int = _DEFAULT_RULES.completed_within_minutes
    search_within_minutes: int = _DEFAULT_RULES.search_within_minutes
    night_start_hour: int = _DEFAULT_RULES.night_start_hour
    night_end_hour: int = _DEFAULT_RULES.night_end_hour

    def rules(self) -> PushRules:
        """The core's rules object."""
        return PushRules(
            completed_within_minutes=self.completed_within_minutes,
            search_within_minutes=self.search_within_minutes,
            night_start_hour=self.night_start_hour,
            night_end_hour=self.night_end_hour,
        )


def _events(raw_events: pl.LazyFrame) -> pl.LazyFrame:
    """Raw events with the schema's columns (an empty lake scan has none)."""
    if not raw_events.collect_schema().names():
        return schemas.empty_frame(schemas.EVENT_SCHEMA).lazy()
    return raw_events


@dg.asset(group_name=GROUP, kinds={"polars", "sqlite", "redis"}, deps=["feature_store_snapshot"])
def push_notifications(
    context: dg.AssetExecutionContext,
    config: PushConfig,
    raw_events: pl.LazyFrame,
    users: pl.DataFrame,
    items: pl.DataFrame,
    online_store: OnlineStoreResource,
    push_queue: PushQueueResource,
) -> pl.DataFrame:
    """Push notifications enqueued for delivery: users who just completed a session or searched for sleep
    content at night (local time) get their top recommendation from the active online-store slot (never the
    item they just completed), with a human-readable reason; at most one per user per local day (dedup key).
    `recsys push-worker` delivers them."""
    events = _events(raw_events)
    if config.as_of:
        as_of = datetime.fromisoformat(config.as_of)
        as_of = as_of if as_of.tzinfo else as_of.replace(tzinfo=UTC)
    else:
        latest = events.select(pl.col("event_time").max()).collect().item()
        as_of = latest or datetime.now(UTC)
    with online_store.open() as store, push_queue.open() as queue:
        batch = schedule_pushes(store, queue, events, users, as_of, items, config.rules())
        stats = queue.stats()
    frame = batch.frame
    by_trigger = {str(k): int(v) for k, v in frame.group_by("trigger").len().sort("trigger").iter_rows()}
    context.add_output_metadata(
        {
            "as_of": as_of.isoformat(),
            "selected_users": batch.selected_users,
            "enqueued": batch.enqueued,
            "duplicates": batch.duplicates,
            "skipped_no_recommendation": batch.skipped_users,
            "by_trigger": dg.MetadataValue.json(by_trigger),
            "queue": dg.MetadataValue.json(stats.as_dict()),
            # Items and reasons only: the run log is not a store `recsys forget-user` can edit, so it holds no user id.
            "sample": dg.MetadataValue.md(frame_preview_markdown(frame.select("item_id", "reason"), 10)),
        }
    )
    return frame
