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

# A play shorter than this many seconds counts as a bounce (negative signal).
BOUNCE_SECONDS: float = 30.0

# Interaction weights: complete > favorite > start; bounces are negative.
EVENT_WEIGHTS: dict[str, float] = {
    "content_complete": 3.0,
    "favorite": 2.0,
    "content_start": 1.0,
    "content_exit": 0.0,  # replaced by BOUNCE_WEIGHT when it is a bounce
}
BOUNCE_WEIGHT: float = -1.0

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
