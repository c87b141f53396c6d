"""Session features on event time: sliding windows (10 min, sliding by 5 min) with a watermark.

For each user the *current session window* is the sliding window that ends at the first
5-minute boundary after the user's latest event, so it covers the 5-10 minutes up to that
event. Events older than the watermark (latest event time seen minus `watermark_minutes`)
minus one window are late for session purposes: they still reach the batch features through
`interactions`, but they cannot reopen a closed session window.

Features per user (columns of `schemas.SESSION_SCHEMA`): content started / completed in the window,
the current-session sleep bounce rate, the recent search terms and their topic-keyword
vector (`search_<topic>` shares), step-count and heart-rate trends (least-squares slopes per
minute over the biometric readings in the window), and whether it is night for the user.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import polars as pl

from recsys_platform import schemas

WINDOW = timedelta(minutes=10)
SLIDE = timedelta(minutes=5)
MAX_SEARCH_TERMS = 5
SLEEP_TYPES = schemas.SLEEP_CONTENT_TYPES  # kept for the tests that import it from here

_WORD = re.compile(r"[a-z]+")


def keyword_vector(text: str | None) -> dict[str, float]:
    """Topic shares (summing to 1, or all 0) of the keywords in a search text."""
    counts = dict.fromkeys(schemas.TOPIC_KEYWORDS, 0.0)
    for word in _WORD.findall((text or "").lower()):
        for topic, words in schemas.TOPIC_KEYWORDS.items():
            if word in words:
                counts[topic] += 1.0
    total = sum(counts.values())
    return {t: (c / total if total else 0.0) for t, c in counts.items()}


def _duration(td: timedelta) -> str:
    return f"{int(td.total_seconds())}s"


def _slope(y: str) -> pl.Expr:
    """Least-squares slope of `y` per minute of event time (null with fewer than two readings)."""
    x = pl.col("_minute").filter(pl.col(y).is_not_null())
    v = pl.col(y).filter(pl.col(y).is_not_null()).cast(pl.Float64)
    return pl.when(x.count() >= 2).then(pl.cov(x, v) / x.var()).otherwise(None)


def session_features(
    events: pl.DataFrame | pl.LazyFrame,
    users: pl.DataFrame,
    items: pl.DataFrame,
    watermark_minutes: int,
    user_ids: list[str] | None = None,
) -> pl.DataFrame:
    """The current session window's features for every user in `events` (or only `user_ids`)."""
    lf = events.lazy()
    latest = lf.select(pl.col("event_time").max()).collect().item()
    if user_ids is not None:
        lf = lf.filter(pl.col("user_id").is_in(user_ids))
    columns = ("event_id", "user_id", "event_type", "event_time", "item_id", "seconds_listened", "query")
    ev = lf.select(*columns, "steps", "heart_rate").unique(subset="event_id", keep="first").collect()
    if ev.height == 0 or latest is None:
        return pl.DataFrame(schema=schemas.SESSION_SCHEMA)
    # The watermark follows the newest event time of the whole stream, not of these users.
    watermark = latest - timedelta(minutes=watermark_minutes)
    ev = ev.filter(pl.col("event_time") >= pl.lit(watermark - WINDOW, dtype=pl.Datetime("us", "UTC")))
    ev = ev.join(items.select("item_id", "content_type"), on="item_id", how="left")
    # All sliding windows per user (every 5 min, 10 min long), then keep the current one.
    windows = (
        ev.sort("user_id", "event_time")
        .with_columns(_minute=(pl.col("event_time") - pl.col("event_time").min()).dt.total_seconds() / 60.0)
        .group_by_dynamic(
            "event_time",
            every=_duration(SLIDE),
            period=_duration(WINDOW),
            offset=f"-{_duration(SLIDE)}",
            group_by="user_id",
            closed="left",
            label="left",
            start_by="window",
            include_boundaries=True,
        )
        .agg(_aggregations())
    )
    last = ev.group_by("user_id").agg(last_event_time=pl.col("event_time").max())
    current_end = pl.col("last_event_time").dt.truncate(_duration(SLIDE)) + pl.duration(seconds=SLIDE.total_seconds())
    out = (
        windows.join(last, on="user_id")
        .filter(pl.col("_upper_boundary") == current_end)
        .rename({"_lower_boundary": "window_start", "_upper_boundary": "window_end"})
        .join(users.select("user_id", "utc_offset_hours"), on="user_id", how="left")
        .with_columns(
            local_hour=(
                pl.col("last_event_time").dt.hour().cast(pl.Int64) + pl.col("utc_offset_hours").fill_null(0)
            ).mod(24),
            sess_sleep_bounce_rate=pl.when(pl.col("sess_sleep_starts") > 0).then(
                (pl.col("sess_sleep_bounces") / pl.col("sess_sleep_starts")).clip(0.0, 1.0)
            ),
        )
        .with_columns(is_night=schemas.is_night(pl.col("local_hour")))
    )
    vectors = [keyword_vector(" ".join(terms)) for terms in out["search_terms"].to_list()]
    out = out.with_columns(
        [pl.Series(f"search_{t}", [v[t] for v in vectors], dtype=pl.Float64) for t in schemas.TOPIC_KEYWORDS]
    )
    return out.select([pl.col(c).cast(t) for c, t in schemas.SESSION_SCHEMA.items()]).sort("user_id")


def _aggregations() -> list[pl.Expr]:
    etype = pl.col("event_type")
    sleep = schemas.is_sleep_content(pl.col("content_type"))
    bounce = schemas.is_bounce(etype, pl.col("seconds_listened"))
    search = pl.col("query").filter((etype == "search") & pl.col("query").is_not_null())
    return [
        pl.len().alias("sess_events"),
        (etype == "content_start").sum().alias("sess_starts"),
        (etype == "content_complete").sum().alias("sess_completes"),
        ((etype == "content_start") & sleep).sum().alias("sess_sleep_starts"),
        (bounce & sleep).sum().alias("sess_sleep_bounces"),
        pl.col("item_id").filter(etype == "content_start").unique(maintain_order=True).alias("sess_started_items"),
        pl.col("item_id").filter(etype == "content_complete").unique(maintain_order=True).alias("sess_completed_items"),
        search.reverse().head(MAX_SEARCH_TERMS).alias("search_terms"),
        _slope("steps").alias("steps_trend"),
        _slope("heart_rate").alias("heart_rate_trend"),
    ]


def current_window(last_event_time: datetime) -> tuple[datetime, datetime]:
    """The current session window [start, end) for a latest event time."""
    epoch = datetime(1970, 1, 1, tzinfo=last_event_time.tzinfo)
    slides = (last_event_time - epoch) // SLIDE
    end = epoch + (slides + 1) * SLIDE
    return end - WINDOW, end
