"""The single source of truth for every table's columns, types and vocabularies."""

from __future__ import annotations

import polars as pl

# --- vocabularies -----------------------------------------------------------------

EVENT_TYPES: tuple[str, ...] = (
    "app_open",
    "search",
    "content_start",
    "content_complete",
    "content_exit",
    "favorite",
    "biometric",
)
CONTENT_EVENT_TYPES: tuple[str, ...] = (
    "content_start",
    "content_complete",
    "content_exit",
    "favorite",
)
CONTENT_TYPES: tuple[str, ...] = (
    "meditation",
    "sleep_story",
    "music",
    "soundscape",
    "kids",
    "movement",
    "focus",
)
LEVELS: tuple[str, ...] = ("beginner", "intermediate", "advanced")
DAYPARTS: tuple[str, ...] = ("morning", "afternoon", "evening", "night")
HOUSEHOLD_TYPES: tuple[str, ...] = ("single", "couple", "family_with_kids")
SUBSCRIPTION_STATUSES: tuple[str, ...] = ("trial", "subscriber", "lapsed")

# Night in the user's local time: from NIGHT_START_HOUR to before NIGHT_END_HOUR (features, sessions).
NIGHT_START_HOUR: int = 21
NIGHT_END_HOUR: int = 5
# Content for falling asleep (the sleep share of users, sleep sessions, what a night sleep search pushes).
SLEEP_CONTENT_TYPES: tuple[str, ...] = ("sleep_story", "soundscape")

# A play shorter than this many seconds counts as a bounce (negative signal).
BOUNCE_SECONDS: float = 30.0


# Topic-keyword vocabulary of search terms (the offline fallback for a sentence embedding).
TOPIC_KEYWORDS: dict[str, tuple[str, ...]] = {
    "sleep": ("sleep", "bedtime", "insomnia", "night", "story", "stories", "rain", "dream", "nap", "white", "noise"),
    "movement": ("yoga", "stretch", "stretching", "walk", "walking", "run", "running", "workout", "move", "exercise"),
    "focus": ("focus", "work", "study", "concentrate", "concentration", "productivity", "deep"),
    "meditation": (
        "meditation",
        "meditate",
        "calm",
        "anxiety",
        "stress",
        "breathe",
        "breathing",
        "mindful",
        "gratitude",
    ),
    "music": ("music", "piano", "ambient", "lofi", "classical", "song", "songs"),
    "kids": ("kids", "kid", "children", "child", "lullaby"),
}
# Which content types each search topic points at.
TOPIC_CONTENT_TYPES: dict[str, tuple[str, ...]] = {
    "sleep": SLEEP_CONTENT_TYPES,
    "movement": ("movement",),
    "focus": ("focus",),
    "meditation": ("meditation",),
    "music": ("music",),
    "kids": ("kids",),
}


def is_night(local_hour: pl.Expr) -> pl.Expr:
    """Whether a local hour is night (NIGHT_START_HOUR to before NIGHT_END_HOUR)."""
    return (local_hour >= NIGHT_START_HOUR) | (local_hour < NIGHT_END_HOUR)


def is_sleep_content(content_type: pl.Expr) -> pl.Expr:
    """Whether a content type is for falling asleep (SLEEP_CONTENT_TYPES)."""
    return content_type.is_in(list(SLEEP_CONTENT_TYPES))


def is_bounce(event_type: pl.Expr, seconds_listened: pl.Expr) -> pl.Expr:
    """Whether an event is a bounce: a content exit before BOUNCE_SECONDS (no time listened counts as none)."""
    return (event_type == "content_exit") & (seconds_listened.fill_null(0.0) < BOUNCE_SECONDS)


# Relevance of a content event as a ranker label and a held-out truth (`model.windows`: a pair's best event in
# its window): a favourite above a completion above a play or an exit.
EVENT_RELEVANCE: dict[str, int] = {"favorite": 3, "content_complete": 2, "content_start": 1, "content_exit": 1}
# Interaction weights: complete > favorite > start; bounces are negative.
EVENT_WEIGHTS: dict[str, float] = {
    "content_complete": 3.0,
    "favorite": 2.0,
    "content_start": 1.0,
    "content_exit": 0.0,  # replaced by BOUNCE_WEIGHT when it is a bounce
}
BOUNCE_WEIGHT: float = -1.0

# One rule for user and item ids on every path (events API, file ingestion, import, serving): what a URL path
# segment, a Redis key and a file name carry without escaping. An id the serving API would refuse is refused
# at the door, so no user is trained on who can never be served.
ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
ID_RULE = "1-64 characters of A-Z a-z 0-9 _ . : -"

# The segment of popularity lists for everyone (beside one list per cold-start segment).
GLOBAL_SEGMENT = "__global__"

# --- raw tables (landing zone) ----------------------------------------------------

RAW_EVENT_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "user_id": pl.String(),
    "event_type": pl.String(),
    "event_time": pl.Datetime("us", "UTC"),
    "session_id": pl.String(),
    "item_id": pl.String(),
    "seconds_listened": pl.Float64(),
    "query": pl.String(),
    "steps": pl.Int64(),
    "heart_rate": pl.Float64(),
}
REQUIRED_EVENT_FIELDS: tuple[str, ...] = ("event_id", "user_id", "event_type", "event_time")

# Columns added by ingestion: where and when a row arrived.
LINEAGE_SCHEMA: dict[str, pl.DataType] = {
    "arrival_time": pl.Datetime("us", "UTC"),
    "source_file": pl.String(),
    "source_row": pl.Int64(),
}
EVENT_SCHEMA: dict[str, pl.DataType] = {**RAW_EVENT_SCHEMA, **LINEAGE_SCHEMA}

QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "reason": pl.String(),
    "detail": pl.String(),
    "source_file": pl.String(),
    "source_row": pl.Int64(),
    "raw": pl.String(),
    "partition_key": pl.String(),
    "quarantined_at": pl.Datetime("us", "UTC"),
}

ITEM_SCHEMA: dict[str, pl.DataType] = {
    "item_id": pl.String(),
    "title": pl.String(),
    "content_type": pl.String(),
    "topic": pl.String(),
    "narrator": pl.String(),
    "duration_seconds": pl.Int64(),
    "level": pl.String(),
    "series_id": pl.String(),
    "series_position": pl.Int64(),
    "language": pl.String(),
    "release_date": pl.Date(),
    "is_kids": pl.Boolean(),
}

USER_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "signup_date": pl.Date(),
    "country": pl.String(),
    "language": pl.String(),
    "utc_offset_hours": pl.Int64(),
    "preferred_daypart": pl.String(),
    "experience_level": pl.String(),
    "household_type": pl.String(),
    "subscription_status": pl.String(),
    # The user turned push notifications off (push.selection sends them none); null: not recorded, not opted out.
    "push_opt_out": pl.Boolean(),
}

# --- modelled tables ---------------------------------------------------------------

INTERACTION_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "user_id": pl.String(),
    "item_id": pl.String(),
    "event_type": pl.String(),
    "event_time": pl.Datetime("us", "UTC"),
    "seconds_listened": pl.Float64(),
    "completion_ratio": pl.Float64(),
    "is_bounce": pl.Boolean(),
    "weight": pl.Float64(),
}

RECOMMENDATION_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "rank": pl.Int64(),
    "item_id": pl.String(),
    "score": pl.Float64(),
    "model_version": pl.String(),
    "generated_at": pl.Datetime("us", "UTC"),
}


# What each near-real-time refresh wrote into the active slot: one row per item of a refreshed list.
REALTIME_RECOMMENDATION_SCHEMA: dict[str, pl.DataType] = {
    **RECOMMENDATION_SCHEMA,
    "slot": pl.String(),
    "partition_key": pl.String(),  # the arrival hour whose events triggered the refresh
}


# The events of a session that are not content interactions, as the ranker's session features read them
# (lake table session_signals; `model.signals`): searches and biometric readings.
SIGNAL_EVENT_TYPES: tuple[str, ...] = ("search", "biometric")
SESSION_SIGNAL_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "user_id": pl.String(),
    "event_time": pl.Datetime("us", "UTC"),
    "event_type": pl.String(),
    "query": pl.String(),
    "steps": pl.Float64(),
    "heart_rate": pl.Float64(),
}

# --- tables of the batch, push and experiment paths ----------------------------------

# Session features of the near-real-time path (lake table session_features, one row per user and window).
SEARCH_COLUMNS: tuple[str, ...] = tuple(f"search_{t}" for t in TOPIC_KEYWORDS)

SESSION_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "window_start": pl.Datetime("us", "UTC"),
    "window_end": pl.Datetime("us", "UTC"),
    "last_event_time": pl.Datetime("us", "UTC"),
    "sess_events": pl.UInt32(),
    "sess_starts": pl.UInt32(),
    "sess_completes": pl.UInt32(),
    "sess_sleep_starts": pl.UInt32(),
    "sess_sleep_bounces": pl.UInt32(),
    "sess_sleep_bounce_rate": pl.Float64(),
    "sess_started_items": pl.List(pl.String()),
    "sess_completed_items": pl.List(pl.String()),
    "search_terms": pl.List(pl.String()),
    **{c: pl.Float64() for c in SEARCH_COLUMNS},
    "steps_trend": pl.Float64(),
    "heart_rate_trend": pl.Float64(),
    "local_hour": pl.Int64(),
    "is_night": pl.Boolean(),
}
BATCH_SCORE_SCHEMA: dict[str, pl.DataType] = {
    "shard": pl.String(),
    "user_id": pl.String(),
    "rank": pl.Int64(),
    "item_id": pl.String(),
    "score": pl.Float64(),
    "model_version": pl.String(),
    "generated_at": pl.Datetime("us", "UTC"),
}
RECOMMENDATION_SET_SCHEMA: dict[str, pl.DataType] = {
    "set_name": pl.String(),
    "user_id": pl.String(),
    "rank": pl.Int64(),
    "item_id": pl.String(),
    "entity_type": pl.String(),
    "content_type": pl.String(),
    "score": pl.Float64(),
    "context": pl.String(),
    "model_version": pl.String(),
    "generated_at": pl.Datetime("us", "UTC"),
}
RULE_COUNT_SCHEMA: dict[str, pl.DataType] = {
    "set_name": pl.String(),
    "step": pl.Int64(),
    "rule": pl.String(),
    "rows_in": pl.Int64(),
    "removed": pl.Int64(),
    "moved": pl.Int64(),
}
SELECTION_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "trigger": pl.String(),
    "trigger_time": pl.Datetime("us", "UTC"),
    "local_date": pl.Date(),
    "trigger_item_id": pl.String(),
    "query": pl.String(),
    "exclude_item_ids": pl.List(pl.String()),
}
PUSH_NOTIFICATION_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "item_id": pl.String(),
    "reason": pl.String(),
    "trigger": pl.String(),
    "dedup_key": pl.String(),
    "model_version": pl.String(),
    "enqueued": pl.Boolean(),
}
# What was served: one row per list the API returned or the batch export wrote (recsys_platform.serve.served_log).
SERVED_LOG_SCHEMA: dict[str, pl.DataType] = {
    "served_at": pl.Datetime("us", "UTC"),
    "request_id": pl.String(),
    "surface": pl.String(),
    "user_id": pl.String(),
    "experiment": pl.String(),
    "arm": pl.String(),
    "source": pl.String(),
    "model_version": pl.String(),
    "slot": pl.String(),
    "item_ids": pl.List(pl.String()),
}

EXPOSURE_SCHEMA: dict[str, pl.DataType] = {
    "experiment": pl.String(),
    "user_id": pl.String(),
    "arm": pl.String(),
    "surface": pl.String(),
    "exposed_at": pl.Datetime("us", "UTC"),
}
ANALYSIS_SCHEMA: dict[str, pl.DataType] = {
    "experiment": pl.String(),
    "metric": pl.String(),
    "arm": pl.String(),
    "n": pl.Int64(),
    "mean": pl.Float64(),
    "ci_low": pl.Float64(),
    "ci_high": pl.Float64(),
    "diff_vs_control": pl.Float64(),
    "diff_ci_low": pl.Float64(),
    "diff_ci_high": pl.Float64(),
    "p_value": pl.Float64(),
    "test": pl.String(),
    "significant": pl.Boolean(),
    "mde": pl.Float64(),  # the smallest difference vs control this n detects at 80% power (absolute)
    "srm_p_value": pl.Float64(),  # sample-ratio mismatch: chi-square of the arms' sizes against their weights
}


def empty_frame(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Return an empty DataFrame with the given schema."""
    return pl.DataFrame(schema=schema)


def conform(df: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Select and cast `df` to exactly `schema`, adding missing columns as nulls."""
    return df.select(
        [
            (pl.col(name) if name in df.columns else pl.lit(None)).cast(dtype).alias(name)
            for name, dtype in schema.items()
        ]
    )
