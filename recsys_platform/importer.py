"""Bring your own data: import interactions (required), items and users (optional) into the landing zone.

Like a managed recommender's three datasets, each is a CSV or Parquet file whose columns are mapped
onto the platform's (user id, item id, timestamp, event type or weight, metadata). The import writes
native files into the landing zone (events/dt=.../hr=.../, items/, users/), so the imported data flows
through the same assets, checks and models as events from the app; rows that break the event rules
are quarantined by ingestion like any others. Built-in readers cover MovieLens: GroupLens `u.data` /
`ratings.csv` and RecBole atomic files (`.inter`, `.item`, `.user`).

Event ids are derived from the content (dataset, user, item, time, occurrence), so importing the same
file twice lands the same ids and the second copy is deduplicated downstream.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from recsys_platform import schemas
from recsys_platform.generator import encode_frame
from recsys_platform.ingestion import app_launch, parse_event_times
from recsys_platform.landing import (
    ITEMS_PREFIX,
    PARTITION_KEY_FORMAT,
    USERS_PREFIX,
    LandingZone,
    event_file_key,
    new_batch_id,
)
from recsys_platform.movielens import load_movielens

logger = logging.getLogger(__name__)

EVENT_METADATA_COLUMNS = ("session_id", "seconds_listened", "query")
VOCABULARIES: dict[str, tuple[str, ...]] = {
    "content_type": schemas.CONTENT_TYPES,
    "level": schemas.LEVELS,
    "preferred_daypart": schemas.DAYPARTS,
    "experience_level": schemas.LEVELS,
    "household_type": schemas.HOUSEHOLD_TYPES,
    "subscription_status": schemas.SUBSCRIPTION_STATUSES,
}
MOVIELENS_ITEM_COLUMNS = {"title": "movie_title", "topic": "genres", "release_date": "release_year"}


class DatasetImportError(ValueError):
    """The dataset cannot be imported as given (missing column, bad mapping, unusable timestamps)."""


@dataclass(frozen=True)
class ColumnMapping:
    """Which source column holds each platform column. `item_columns`, `user_columns` and
    `event_columns` map platform column -> source column for metadata (e.g. {"title": "movie_title"})."""

    user_id: str = "user_id"
    item_id: str = "item_id"
    timestamp: str = "timestamp"
    event_type: str | None = None
    weight: str | None = None
    event_columns: dict[str, str] = field(default_factory=dict)
    item_columns: dict[str, str] = field(default_factory=dict)
    user_columns: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WeightThresholds:
    """How a weight or rating becomes an event: >= complete_at a completion, >= start_at a start,
    below that a bounce (an exit after 0 s, a negative signal)."""

    complete_at: float = 4.0
    start_at: float = 3.0


@dataclass
class ImportResult:
    """What an import landed."""

    dataset: str
    events: int
    items: int
    users: int
    partition_key: str
    files: list[str]
    derived_items: bool
    derived_users: bool
    time_shift: timedelta | None
    warnings: list[str] = field(default_factory=list)


def parse_pairs(pairs: list[str] | None, what: str = "mapping") -> dict[str, str]:
    """Parse ["a=b", ...] options into {"a": "b"}."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise DatasetImportError(f"{what} {pair!r} is not of the form name=value")
        out[key.strip()] = value.strip()
    return out


def read_table(path: Path) -> pl.DataFrame:
    """Read a CSV (.csv, .tsv, .txt) or Parquet file."""
    path = Path(path)
    if not path.exists():
        raise DatasetImportError(f"{path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pl.read_parquet(path)
    if suffix in (".csv", ".tsv", ".txt"):
        sep = "\t" if suffix == ".tsv" else ","
        return pl.read_csv(path, separator=sep, infer_schema_length=10_000, encoding="utf8-lossy")
    raise DatasetImportError(f"{path}: expected .csv, .tsv or .parquet")


def _require(df: pl.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DatasetImportError(f"{what} has no column {', '.join(missing)} (columns: {', '.join(df.columns)})")


def _to_datetime(s: pl.Series) -> pl.Series:
    """Epoch seconds or milliseconds (numbers), ISO strings or datetimes to UTC datetimes."""
    if isinstance(s.dtype, pl.Datetime):
        return s.dt.replace_time_zone("UTC") if s.dtype.time_zone is None else s.dt.convert_time_zone("UTC")
    if s.dtype.is_numeric():
        f = s.cast(pl.Float64)
        millis = f.abs().max() is not None and f.abs().max() > 1e11  # after year 5138 in seconds: milliseconds
        us = (f * (1_000 if millis else 1_000_000)).round().cast(pl.Int64)
        return us.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    if s.dtype == pl.String:
        parsed = parse_event_times(s)
        if (parsed.is_null() & s.is_not_null()).any():
            bad = s.filter(parsed.is_null() & s.is_not_null()).head(3).to_list()
            raise DatasetImportError(f"timestamps not understood, e.g. {bad}")
        return parsed
    raise DatasetImportError(f"timestamp column of type {s.dtype} is not a datetime, an epoch or an ISO string")


def _first(col: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """List-valued metadata (e.g. a genre list) contributes its first element."""
    return col.list.first() if isinstance(dtype, pl.List) else col


def _to_date(col: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    if dtype.is_integer() or dtype == pl.String:
        year = col.cast(pl.Int32, strict=False)
        as_year = pl.when(year.is_between(1000, 3000)).then(pl.date(year, 1, 1))
        return as_year if dtype.is_integer() else pl.coalesce(as_year, col.str.to_date(strict=False))
    return col.cast(pl.Date, strict=False)


def _map_columns(
    df: pl.DataFrame | None, key: str, key_col: str, mapping: dict[str, str], schema: dict[str, pl.DataType]
) -> tuple[pl.DataFrame | None, list[str]]:
    """Select the key and mapped metadata columns, typed to `schema`; values outside a vocabulary become null."""
    if df is None:
        return None, []
    unknown = sorted(set(mapping) - set(schema))
    if unknown:
        raise DatasetImportError(f"cannot map onto unknown platform columns {unknown}; known: {list(schema)}")
    _require(df, [key_col, *mapping.values()], "the file")
    exprs = [pl.col(key_col).cast(pl.String).alias(key)]
    warnings = []
    for native, source in mapping.items():
        dtype, src = schema[native], df.schema[source]
        col = _first(pl.col(source), src)
        inner = src.inner if isinstance(src, pl.List) else src
        expr = _to_date(col, inner) if dtype == pl.Date else col.cast(dtype, strict=False)
        if native in VOCABULARIES:
            outside = df.select(expr.is_not_null() & ~expr.is_in(list(VOCABULARIES[native]))).to_series().sum()
            if outside:
                warnings.append(f"{outside} {native} values are not in {VOCABULARIES[native]}: set to null")
            expr = pl.when(expr.is_in(list(VOCABULARIES[native]))).then(expr)
        exprs.append(expr.alias(native))
    return df.select(exprs).unique(subset=key, keep="last", maintain_order=True), warnings


def to_events(
    interactions: pl.DataFrame,
    mapping: ColumnMapping,
    dataset: str,
    event_types: dict[str, str] | None = None,
    thresholds: WeightThresholds = WeightThresholds(),
) -> pl.DataFrame:
    """Native raw events (RAW_EVENT_SCHEMA) from an interactions table."""
    cols = [mapping.user_id, mapping.item_id, mapping.timestamp, *mapping.event_columns.values()]
    cols += [c for c in (mapping.event_type, mapping.weight) if c]
    _require(interactions, cols, "the interactions file")
    bad = sorted(set(mapping.event_columns) - set(EVENT_METADATA_COLUMNS))
    if bad:
        raise DatasetImportError(f"event metadata can map onto {EVENT_METADATA_COLUMNS}, not {bad}")
    if mapping.event_type:
        kind = pl.col(mapping.event_type).cast(pl.String)
        if event_types:
            kind = kind.replace(event_types)  # unmapped values pass through; ingestion quarantines unknown ones
    elif mapping.weight:
        w = pl.col(mapping.weight).cast(pl.Float64, strict=False)
        kind = (
            pl.when(w >= thresholds.complete_at)
            .then(pl.lit("content_complete"))
            .when(w >= thresholds.start_at)
            .then(pl.lit("content_start"))
            .when(w.is_not_null())
            .then(pl.lit("content_exit"))
        )
    else:
        kind = pl.lit("content_start")  # implicit feedback: every row is a play
    frame = interactions.select(
        user_id=pl.col(mapping.user_id).cast(pl.String),
        item_id=pl.col(mapping.item_id).cast(pl.String),
        event_time=_to_datetime(interactions[mapping.timestamp]),
        event_type=kind,
        **{native: pl.col(src) for native, src in mapping.event_columns.items()},
    )
    if mapping.weight and not mapping.event_type:
        frame = _with_implied_starts(frame, bounce_seconds="seconds_listened" not in mapping.event_columns)
    stamp = pl.col("event_time").dt.epoch("us").cast(pl.String)
    occurrence = pl.int_range(pl.len()).over("user_id", "item_id", "event_time", "event_type").cast(pl.String)
    event_id = pl.concat_str([pl.lit(dataset), "user_id", "item_id", stamp, "event_type", occurrence], separator=":")
    # Metadata columns keep their source types: ingestion types them and quarantines values that do not fit.
    return frame.with_columns(event_id=event_id).select(
        (pl.col(c) if c in frame.columns or c == "event_id" else pl.lit(None, dtype=t)).alias(c)
        for c, t in schemas.RAW_EVENT_SCHEMA.items()
    )


def _with_implied_starts(frame: pl.DataFrame, bounce_seconds: bool) -> pl.DataFrame:
    """A completion or a bounce implies the play started: add that start, as the app would have sent it."""
    outcomes = pl.col("event_type").is_in(["content_complete", "content_exit"])
    if bounce_seconds:
        frame = frame.with_columns(seconds_listened=pl.when(pl.col("event_type") == "content_exit").then(pl.lit(0.0)))
    starts = frame.filter(outcomes).with_columns(
        event_type=pl.lit("content_start"), seconds_listened=pl.lit(None, dtype=frame.schema["seconds_listened"])
    )
    both = pl.concat([starts.with_columns(_o=pl.lit(0)), frame.with_columns(_o=pl.lit(1))])
    return both.sort("event_time", "user_id", "item_id", "_o", maintain_order=True).drop("_o")


def _derived_items(events: pl.DataFrame, given: pl.DataFrame | None) -> pl.DataFrame:
    """Items table: the given metadata plus every interacted item; release date defaults to first interaction."""
    seen = events.group_by("item_id").agg(_first_seen=pl.col("event_time").min().dt.date())
    base = seen if given is None else given.join(seen, on="item_id", how="full", coalesce=True)
    release = [pl.col("release_date")] if "release_date" in base.columns else []
    base = base.with_columns(
        release_date=pl.coalesce([*release, pl.col("_first_seen")]),
        is_kids=pl.col("is_kids").fill_null(False) if "is_kids" in base.columns else pl.lit(False),
    )
    return schemas.conform(base.drop("_first_seen"), schemas.ITEM_SCHEMA).sort("item_id")


def _derived_users(events: pl.DataFrame, given: pl.DataFrame | None) -> pl.DataFrame:
    """Users table: the given profiles plus every interacting user; signup defaults to first interaction."""
    seen = events.group_by("user_id").agg(_first_seen=pl.col("event_time").min().dt.date())
    base = seen if given is None else given.join(seen, on="user_id", how="full", coalesce=True)
    signup = [pl.col("signup_date")] if "signup_date" in base.columns else []
    base = base.with_columns(signup_date=pl.coalesce([*signup, pl.col("_first_seen")]))
    return schemas.conform(base.drop("_first_seen"), schemas.USER_SCHEMA).sort("user_id")


def _shift_dates(df: pl.DataFrame | None, column: str, shift: timedelta) -> pl.DataFrame | None:
    if df is None or column not in df.columns:
        return df
    return df.with_columns(pl.col(column) + pl.duration(days=round(shift.total_seconds() / 86400)))


def import_frames(
    zone: LandingZone,
    interactions: pl.DataFrame,
    mapping: ColumnMapping,
    dataset: str,
    items: pl.DataFrame | None = None,
    users: pl.DataFrame | None = None,
    event_types: dict[str, str] | None = None,
    thresholds: WeightThresholds = WeightThresholds(),
    rebase_time: bool = False,
    fmt: str = ".parquet",
    arrival: datetime | None = None,
    rows_per_file: int = 1_000_000,
) -> ImportResult:
    """Convert the three tables to the native layout and write them into the landing zone."""
    arrival = arrival or datetime.now(UTC)
    events = to_events(interactions, mapping, dataset, event_types, thresholds)
    if events.height == 0:
        raise DatasetImportError("the interactions file has no rows")
    shift = None
    if rebase_time:  # keep the order and the gaps, end one minute before the import
        shift = (arrival - timedelta(minutes=1)) - events["event_time"].max()
        events = events.with_columns(pl.col("event_time") + shift)
    floor = app_launch()
    early = events.filter(pl.col("event_time") < floor).height
    if early:
        raise DatasetImportError(
            f"{early:,} of {events.height:,} events are before {floor:%Y-%m-%d}, the earliest event time ingestion "
            "accepts (RECSYS_APP_LAUNCH); they would all be quarantined. Import with rebase_time (--rebase-time) to "
            f"shift the timeline to end now, or set RECSYS_APP_LAUNCH (e.g. {events['event_time'].min():%Y-%m-%d}) "
            "for the import and for Dagster."
        )
    item_meta, item_warn = _map_columns(items, "item_id", mapping.item_id, mapping.item_columns, schemas.ITEM_SCHEMA)
    user_meta, user_warn = _map_columns(users, "user_id", mapping.user_id, mapping.user_columns, schemas.USER_SCHEMA)
    if shift is not None:  # dates in the metadata move with the timeline
        item_meta = _shift_dates(item_meta, "release_date", shift)
        user_meta = _shift_dates(user_meta, "signup_date", shift)
    item_table, user_table = _derived_items(events, item_meta), _derived_users(events, user_meta)
    files = [
        f"{ITEMS_PREFIX}{new_batch_id(arrival)}{fmt}",
        f"{USERS_PREFIX}{new_batch_id(arrival)}{fmt}",
    ]
    zone.write_bytes(files[0], encode_frame(item_table, fmt))
    zone.write_bytes(files[1], encode_frame(user_table, fmt))
    # Catalog and profiles land first, so the events' items are known when the hour is ingested.
    for n, start in enumerate(range(0, events.height, rows_per_file)):
        key = event_file_key(arrival, fmt, new_batch_id(arrival + timedelta(microseconds=n)))
        zone.write_bytes(key, encode_frame(events.slice(start, rows_per_file), fmt))
        files.append(key)
    warnings = item_warn + user_warn
    for w in warnings:
        logger.warning("import %s: %s", dataset, w)
    logger.info(
        "imported %s: %d events, %d items, %d users", dataset, events.height, item_table.height, user_table.height
    )
    return ImportResult(
        dataset=dataset,
        events=events.height,
        items=item_table.height,
        users=user_table.height,
        partition_key=f"{arrival:{PARTITION_KEY_FORMAT}}",
        files=files,
        derived_items=items is None,
        derived_users=users is None,
        time_shift=shift,
        warnings=warnings,
    )


def import_files(
    zone: LandingZone,
    interactions: Path,
    mapping: ColumnMapping = ColumnMapping(),
    items: Path | None = None,
    users: Path | None = None,
    dataset: str | None = None,
    **options: object,
) -> ImportResult:
    """Import CSV/Parquet files with a column mapping (see `import_frames` for the options)."""
    return import_frames(
        zone,
        read_table(interactions),
        mapping,
        dataset or Path(interactions).stem,
        items=read_table(items) if items else None,
        users=read_table(users) if users else None,
        **options,  # type: ignore[arg-type]
    )


def import_movielens(zone: LandingZone, path: Path, dataset: str | None = None, **options: object) -> ImportResult:
    """Import MovieLens: GroupLens u.data / ratings.csv, or a RecBole directory / .inter file (with .item/.user)."""
    path = Path(path)
    try:
        data = load_movielens(path)
    except FileNotFoundError as exc:
        raise DatasetImportError(str(exc)) from exc
    item_columns = {}
    if data.items is not None:
        item_columns = {k: v for k, v in MOVIELENS_ITEM_COLUMNS.items() if v in data.items.columns}
    mapping = ColumnMapping(weight="rating", item_columns=item_columns)
    name = dataset or (path.name if path.is_dir() else path.stem if path.suffix == ".inter" else path.parent.name)
    return import_frames(zone, data.ratings, mapping, name, items=data.items, users=data.users, **options)  # type: ignore[arg-type]
