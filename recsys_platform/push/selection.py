"""Who gets a push and what it says: triggers from recent raw events, items from the active slot.

Triggers (each within a look-back window ending at `as_of`):

- `session_completed`: the user completed a piece of content in the last `completed_within_minutes`.
- `night_sleep_search`: the user searched for sleep content (query matches `sleep_query_pattern`)
  between `night_start_hour` and `night_end_hour` in their local time (`users.utc_offset_hours`)
  in the last `search_within_minutes`.
- `top_changed` (event-driven, from the near-real-time refresh): the refresh changed the user's top
  recommendation. Not pushed in the user's quiet hours (`quiet_start_hour` to `quiet_end_hour` local
  time at `as_of`): unlike the two rules above it does not answer something the user just did.

A user with several triggers gets one push: a rule's, the most recent, before `top_changed`. Users
whose `users.push_opt_out` is true (when the column exists) get none. The pushed item is the user's top
recommendation read through `serving.recommend` (so from the active slot and its model version),
skipping anything they completed in the last `exclude_completed_hours`; after a night sleep search
a sleep item from the top `candidates_k` is preferred. The dedup key is the user and their local
date, so the queue accepts at most one push per user per day.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import polars as pl

from recsys_platform import schemas
from recsys_platform.push.queue import PushMessage, PushQueue
from recsys_platform.schemas import PUSH_NOTIFICATION_SCHEMA, SELECTION_SCHEMA
from recsys_platform.serve.online_store import OnlineStore
from recsys_platform.serve.read_path import RecommendedItem, recommend

logger = logging.getLogger(__name__)

TRIGGER_SESSION_COMPLETED = "session_completed"
TRIGGER_NIGHT_SLEEP_SEARCH = "night_sleep_search"
TRIGGER_TOP_CHANGED = "top_changed"
OPT_OUT_COLUMN = "push_opt_out"
SLEEP_QUERY_PATTERN = r"(?i)\b(sleep|bedtime|insomnia|night|lullab|dream|rain sounds|white noise)"
SLEEP_CONTENT_TYPES = schemas.SLEEP_CONTENT_TYPES


@dataclass(frozen=True)
class PushRules:
    """Windows, hours and patterns of the push triggers."""

    completed_within_minutes: int = 30
    search_within_minutes: int = 60
    night_start_hour: int = schemas.NIGHT_START_HOUR
    # an hour before schemas.NIGHT_END_HOUR, as it always was here: whether a sleep search between 4 and 5 am
    # should trigger a push is a product decision, not a refactoring (issue 15)
    night_end_hour: int = 4
    sleep_query_pattern: str = SLEEP_QUERY_PATTERN
    exclude_completed_hours: int = 24
    candidates_k: int = 20
    quiet_start_hour: int = 22  # local hours without `top_changed` pushes; equal start and end: none
    quiet_end_hour: int = 7


@dataclass(frozen=True)
class PushBatch:
    """What one push run did: a row per planned push (`enqueued` False for duplicates), and counts."""

    frame: pl.DataFrame
    selected_users: int
    skipped_users: int

    @property
    def enqueued(self) -> int:
        """Messages newly enqueued."""
        return int(self.frame["enqueued"].sum()) if self.frame.height else 0

    @property
    def duplicates(self) -> int:
        """Messages the queue already had (same user and local day)."""
        return self.frame.height - self.enqueued


def dedup_key(user_id: str, local_date: object) -> str:
    """At most one push per user per local day."""
    return f"push:{user_id}:{local_date}"


def _is_night(hour: pl.Expr, start: int, end: int) -> pl.Expr:
    return (hour >= start) | (hour < end) if start > end else (hour >= start) & (hour < end)


def select_push_users(
    events: pl.DataFrame | pl.LazyFrame,
    users: pl.DataFrame,
    as_of: datetime,
    rules: PushRules | None = None,
    top_changed: Sequence[str] = (),
) -> pl.DataFrame:
    """One row per user to notify (a rule's most recent trigger, else `top_changed` for the users listed there
    outside their quiet hours; opted-out users never), with the items to keep out of the push."""
    rules = rules or PushRules()
    lookback = max(rules.completed_within_minutes, rules.search_within_minutes, rules.exclude_completed_hours * 60)
    offsets = users.lazy().select("user_id", pl.col("utc_offset_hours").fill_null(0))
    local_time = pl.col("event_time").dt.replace_time_zone(None) + pl.duration(hours=pl.col("utc_offset_hours"))
    recent = (
        events.lazy()
        .filter(pl.col("event_time") > as_of - timedelta(minutes=lookback), pl.col("event_time") <= as_of)
        .select("user_id", "event_type", "event_time", "item_id", "query")
        .join(offsets, on="user_id", how="left")
        .with_columns(pl.col("utc_offset_hours").fill_null(0))
        .with_columns(local_time=local_time)
    )
    completed = recent.filter(
        pl.col("event_type") == "content_complete",
        pl.col("item_id").is_not_null(),
        pl.col("event_time") > as_of - timedelta(minutes=rules.completed_within_minutes),
    ).select(
        "user_id",
        trigger=pl.lit(TRIGGER_SESSION_COMPLETED),
        trigger_time="event_time",
        local_date=pl.col("local_time").dt.date(),
        trigger_item_id="item_id",
        query=pl.lit(None, dtype=pl.String),
    )
    searched = recent.filter(
        pl.col("event_type") == "search",
        pl.col("event_time") > as_of - timedelta(minutes=rules.search_within_minutes),
        pl.col("query").fill_null("").str.contains(rules.sleep_query_pattern),
        _is_night(pl.col("local_time").dt.hour(), rules.night_start_hour, rules.night_end_hour),
    ).select(
        "user_id",
        trigger=pl.lit(TRIGGER_NIGHT_SLEEP_SEARCH),
        trigger_time="event_time",
        local_date=pl.col("local_time").dt.date(),
        trigger_item_id=pl.lit(None, dtype=pl.String),
        query="query",
    )
    exclude = (
        recent.filter(
            pl.col("event_type") == "content_complete",
            pl.col("item_id").is_not_null(),
            pl.col("event_time") > as_of - timedelta(hours=rules.exclude_completed_hours),
        )
        .group_by("user_id")
        .agg(exclude_item_ids=pl.col("item_id").unique().sort())
    )
    as_of_local = pl.lit(as_of.astimezone(UTC).replace(tzinfo=None)) + pl.duration(hours=pl.col("utc_offset_hours"))
    changed = (
        pl.LazyFrame({"user_id": list(top_changed)}, schema={"user_id": pl.String})
        .join(offsets, on="user_id", how="left")
        .with_columns(pl.col("utc_offset_hours").fill_null(0))
        .with_columns(local_time=as_of_local)
        .filter(~_is_quiet(pl.col("local_time").dt.hour(), rules.quiet_start_hour, rules.quiet_end_hour))
        .select(
            "user_id",
            trigger=pl.lit(TRIGGER_TOP_CHANGED),
            trigger_time=pl.lit(as_of, dtype=pl.Datetime("us", "UTC")),
            local_date=pl.col("local_time").dt.date(),
            trigger_item_id=pl.lit(None, dtype=pl.String),
            query=pl.lit(None, dtype=pl.String),
        )
    )
    opted_out = (
        users.lazy().filter(pl.col(OPT_OUT_COLUMN).fill_null(False)).select("user_id")
        if OPT_OUT_COLUMN in users.columns
        else pl.LazyFrame(schema={"user_id": pl.String})
    )
    chosen = (
        pl.concat([completed, searched, changed])
        .join(opted_out, on="user_id", how="anti")
        .with_columns(_last=pl.col("trigger") == TRIGGER_TOP_CHANGED)
        .sort(["user_id", "_last", "trigger_time", "trigger"], descending=[False, False, True, False])
        .unique("user_id", keep="first", maintain_order=True)
        .drop("_last")
        .join(exclude, on="user_id", how="left")
        .with_columns(pl.col("exclude_item_ids").fill_null(pl.lit([], dtype=pl.List(pl.String))))
    )
    return chosen.select([pl.col(c).cast(t) for c, t in SELECTION_SCHEMA.items()]).collect()


def _is_quiet(hour: pl.Expr, start: int, end: int) -> pl.Expr:
    return pl.lit(False) if start == end else _is_night(hour, start, end)


def _pick(
    items: Sequence[RecommendedItem], excluded: set[str], prefer_types: tuple[str, ...]
) -> RecommendedItem | None:
    allowed = [item for item in items if item.item_id not in excluded]
    preferred = [item for item in allowed if item.content_type in prefer_types]
    return (preferred or allowed or [None])[0]


def _reason(row: dict, title: str, titles: dict[str, str]) -> str:
    if row["trigger"] == TRIGGER_NIGHT_SLEEP_SEARCH:
        return f"You searched for “{row['query']}” tonight: {title} can help you drift off."
    if row["trigger"] == TRIGGER_TOP_CHANGED:
        return f"New for you after your latest session: {title}."
    finished = titles.get(row["trigger_item_id"], row["trigger_item_id"])
    return f"You just finished {finished}. Keep going with {title}."


def plan_pushes(
    store: OnlineStore, selected: pl.DataFrame, items: pl.DataFrame | None = None, rules: PushRules | None = None
) -> tuple[list[PushMessage], int]:
    """The message for each selected user (their top allowed recommendation) and how many were skipped."""
    rules = rules or PushRules()
    titles: dict[str, str] = {}
    if items is not None and items.height:
        titles = dict(items.select("item_id", pl.col("title").fill_null(pl.col("item_id"))).iter_rows())
    messages: list[PushMessage] = []
    skipped = 0
    for row in selected.iter_rows(named=True):  # a few users per run; each is one online-store read
        recs = recommend(store, row["user_id"], k=rules.candidates_k)
        prefer = SLEEP_CONTENT_TYPES if row["trigger"] == TRIGGER_NIGHT_SLEEP_SEARCH else ()
        excluded = set(row["exclude_item_ids"] or ()) | {row["trigger_item_id"]}
        item = _pick(recs.items, excluded, prefer)
        if item is None:
            skipped += 1
            logger.info("no recommendation left to push to user %s (%s)", row["user_id"], recs.source)
            continue
        title = titles.get(item.item_id, item.item_id)
        messages.append(
            PushMessage(
                user_id=row["user_id"],
                item_id=item.item_id,
                reason=_reason(row, title, titles),
                dedup_key=dedup_key(row["user_id"], row["local_date"]),
                title=title,
                model_version=recs.model_version,
                data={
                    "trigger": row["trigger"],
                    "trigger_time": row["trigger_time"].isoformat(),
                    "slot": recs.slot,
                    "source": recs.source,
                    "rank": item.rank,
                    "score": item.score,
                },
            )
        )
    return messages, skipped


def schedule_pushes(
    store: OnlineStore,
    queue: PushQueue,
    events: pl.DataFrame | pl.LazyFrame,
    users: pl.DataFrame,
    as_of: datetime,
    items: pl.DataFrame | None = None,
    rules: PushRules | None = None,
    top_changed: Sequence[str] = (),
) -> PushBatch:
    """Select users, plan their push from the active slot and enqueue it (idempotently per user and day);
    `top_changed`: users whose top recommendation a near-real-time refresh just changed."""
    selected = select_push_users(events, users, as_of, rules, top_changed)
    messages, skipped = plan_pushes(store, selected, items, rules)
    flags = queue.enqueue_many(messages)
    frame = pl.DataFrame(
        {
            "user_id": [m.user_id for m in messages],
            "item_id": [m.item_id for m in messages],
            "reason": [m.reason for m in messages],
            "trigger": [m.data["trigger"] for m in messages],
            "dedup_key": [m.dedup_key for m in messages],
            "model_version": [m.model_version for m in messages],
            "enqueued": flags,
        },
        schema=PUSH_NOTIFICATION_SCHEMA,
    )
    logger.info(
        "push run as of %s: %d users selected, %d enqueued, %d duplicates, %d skipped",
        as_of.isoformat(),
        selected.height,
        sum(flags),
        len(flags) - sum(flags),
        skipped,
    )
    return PushBatch(frame, selected.height, skipped)
