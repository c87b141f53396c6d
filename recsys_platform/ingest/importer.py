"""Bring your own data: import interactions (required), items and users (optional) into the landing zone.

Like a managed recommender's three datasets, each is a CSV or Parquet file whose columns are mapped
onto the platform's (user id, item id, timestamp, event type or weight, metadata). The import writes
native files into the landing zone (events/dt=.../hr=.../, items/, users/), so the imported data flows
through the same assets, checks and models as events from the app; rows that break the event rules
are quarantined by ingestion like any others. Built-in readers cover MovieLens: GroupLens `u.data` /
`ratings.csv` and RecBole atomic files (`.inter`, `.item`, `.user`).

Event ids are derived from the content (dataset, user, item, time, occurrence), so importing the same
file twice lands the same ids and the second copy is deduplicated downstream.

What each interaction row becomes:
- a weight (rating) column only: >= complete_at a completion, >= start_at a start, below a bounce;
  completions and bounces get the start they imply (`WeightThresholds`);
- neither an event type nor a weight column (implicit feedback): every row is a play (`content_start`);
- both: the event type decides (through the `event_types` mapping); the weight decides only the rows
  whose event type is empty, as in a ratings file; weights on rows with an event type are not used
  (counted in a warning).

Nothing is dropped silently: each source row is kept, merged as an exact duplicate or refused with a
reason (`recsys_platform.ingest.import_rows`). Refused rows are written with their reason, row number and
content next to the import's manifest (imports/<import-id>/, see `recsys_platform.ingest.landing.ImportManifest`)
rather than landed as events: they have no usable id or time to land under, and an events/ partition
reconciles exactly the rows that landed in it. The manifest also records the earliest event time landed;
ingestion accepts the import's events back to it in every later process
(`recsys_platform.ingest.ingestion.imported_event_floors`), so historical data needs no RECSYS_APP_LAUNCH.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from recsys_platform import schemas
from recsys_platform.ingest.event_files import encode_frame
from recsys_platform.ingest.import_rows import (
    ColumnMapping,
    DatasetImportError,
    check_mapping,
    event_type_text,
    read_table,
    require_columns,
    screen_interactions,
    to_datetime,
    weight_value,
)
from recsys_platform.ingest.ingestion import app_launch
from recsys_platform.ingest.landing import (
    IMPORTS_PREFIX,
    ITEMS_PREFIX,
    PARTITION_KEY_FORMAT,
    USERS_PREFIX,
    ImportManifest,
    LandingZone,
    event_file_key,
    new_batch_id,
)
from recsys_platform.ingest.movielens import load_movielens

logger = logging.getLogger(__name__)

VOCABULARIES: dict[str, tuple[str, ...]] = {
    "content_type": schemas.CONTENT_TYPES,
    "level": schemas.LEVELS,
    "preferred_daypart": schemas.DAYPARTS,
    "experience_level": schemas.LEVELS,
    "household_type": schemas.HOUSEHOLD_TYPES,
    "subscription_status": schemas.SUBSCRIPTION_STATUSES,
}
DEFAULT_MAPPING = ColumnMapping()  # user_id, item_id, timestamp; every row a play
MOVIELENS_ITEM_COLUMNS = {"title": "movie_title", "topic": "genres", "release_date": "release_year"}


@dataclass(frozen=True)
class WeightThresholds:
    """How a weight or rating becomes an event: >= complete_at a completion, >= start_at a start,
    below that a bounce (an exit after 0 s, a negative signal)."""

    complete_at: float = 4.0
    start_at: float = 3.0


@dataclass
class ImportResult:
    """What an import landed, and what became of each source row (rows_in = kept + merged + refused)."""

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
    rows_in: int = 0
    kept: int = 0
    merged: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    earliest_event_time: datetime | None = None
    manifest_key: str | None = None
    refused_file: str | None = None


def parse_pairs(pairs: list[str] | None, what: str = "mapping") -> dict[str, str]:
    """Parse ["a=b", ...] options into {"a": "b"}."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise DatasetImportError(f"{what} {pair!r} is not of the form name=value")
        out[key.strip()] = value.strip()
    return out


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
    require_columns(df, [key_col, *mapping.values()], "the file")
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
    """Native raw events (RAW_EVENT_SCHEMA) from an interactions table (screened: see `screen_interactions`)."""
    check_mapping(interactions, mapping)
    from_weight: pl.Expr = pl.lit(False)
    if mapping.weight:
        w = weight_value(mapping.weight)
        by_weight = (
            pl.when(w >= thresholds.complete_at)
            .then(pl.lit("content_complete"))
            .when(w >= thresholds.start_at)
            .then(pl.lit("content_start"))
            .when(w.is_not_null())
            .then(pl.lit("content_exit"))
        )
    if mapping.event_type:
        kind = event_type_text(mapping.event_type, interactions.schema[mapping.event_type])
        if event_types:
            kind = kind.replace(event_types)  # unmapped values pass through; ingestion quarantines unknown ones
        if mapping.weight:  # the weight types the rows without an event type
            from_weight = kind.is_null() & by_weight.is_not_null()
            kind = pl.coalesce(kind, by_weight)
    elif mapping.weight:
        kind, from_weight = by_weight, by_weight.is_not_null()
    else:
        kind = pl.lit("content_start")  # implicit feedback: every row is a play
    frame = interactions.select(
        user_id=pl.col(mapping.user_id).cast(pl.String),
        item_id=pl.col(mapping.item_id).cast(pl.String),
        event_time=to_datetime(interactions[mapping.timestamp]),
        event_type=kind,
        _from_weight=from_weight,
        **{native: pl.col(src) for native, src in mapping.event_columns.items()},
    )
    if mapping.weight:
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
    """A completion or a bounce read from a weight implies the play started: add that start, as the app
    would have sent it (rows typed by an event type column are taken as given)."""
    outcomes = pl.col("event_type").is_in(["content_complete", "content_exit"]) & pl.col("_from_weight")
    if bounce_seconds:
        bounce = (pl.col("event_type") == "content_exit") & pl.col("_from_weight")
        frame = frame.with_columns(seconds_listened=pl.when(bounce).then(pl.lit(0.0)))
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
    keep_history: bool = False,
    fmt: str = ".parquet",
    arrival: datetime | None = None,
    rows_per_file: int = 1_000_000,
    source: str | None = None,
) -> ImportResult:
    """Convert the three tables to the native layout and write them, with the import's manifest and its
    refused rows, into the landing zone.

    Events older than the app launch (`recsys_platform.ingest.ingestion.app_launch`) need a decision, else
    nothing lands: `keep_history` keeps their times (the manifest's earliest event time is what ingestion
    then accepts for this import's files), `rebase_time` shifts the timeline to end a minute before the
    import. `source` names the interactions file in the refused rows (default: the dataset name)."""
    arrival = arrival or datetime.now(UTC)
    partition_key = f"{arrival:{PARTITION_KEY_FORMAT}}"
    if interactions.height == 0:
        raise DatasetImportError("the interactions file has no rows")
    screened = screen_interactions(interactions, mapping, source or dataset, partition_key)
    refused = screened.refused_by_reason()
    if screened.rows.height == 0:
        first = screened.refused.row(0, named=True)
        raise DatasetImportError(
            f"none of the {screened.rows_in:,} interaction rows can be imported ({_counts_text(refused)}); "
            f"e.g. row {first['source_row']}: {first['detail']}"
        )
    events = to_events(screened.rows, mapping, dataset, event_types, thresholds)
    shift = None
    if rebase_time:  # keep the order and the gaps, end one minute before the import
        shift = (arrival - timedelta(minutes=1)) - events["event_time"].max()
        events = events.with_columns(pl.col("event_time") + shift)
    launch = app_launch()
    early = events.filter(pl.col("event_time") < launch).height
    if early and not keep_history:
        raise DatasetImportError(
            f"{early:,} of {events.height:,} events are before {launch:%Y-%m-%d}, the earliest time ingestion "
            "accepts from the app (RECSYS_APP_LAUNCH). Import with keep_history (--keep-history, the default) "
            "to keep their times (ingestion then accepts this import's events back to its earliest one), or with "
            "rebase_time (--rebase-time) to shift the timeline to end now."
        )
    item_meta, item_warn = _map_columns(items, "item_id", mapping.item_id, mapping.item_columns, schemas.ITEM_SCHEMA)
    user_meta, user_warn = _map_columns(users, "user_id", mapping.user_id, mapping.user_columns, schemas.USER_SCHEMA)
    if shift is not None:  # dates in the metadata move with the timeline
        item_meta = _shift_dates(item_meta, "release_date", shift)
        user_meta = _shift_dates(user_meta, "signup_date", shift)
    item_table, user_table = _derived_items(events, item_meta), _derived_users(events, user_meta)
    import_id = new_batch_id(arrival)
    tables = {f"{ITEMS_PREFIX}{new_batch_id(arrival)}{fmt}": item_table}
    tables[f"{USERS_PREFIX}{new_batch_id(arrival)}{fmt}"] = user_table
    chunks: dict[str, pl.DataFrame] = {}
    for n, start in enumerate(range(0, events.height, rows_per_file)):
        batch_id = new_batch_id(arrival + timedelta(microseconds=n))
        chunks[event_file_key(arrival, fmt, batch_id)] = events.slice(start, rows_per_file)
    refused_file = f"{IMPORTS_PREFIX}{import_id}/refused{fmt}" if screened.refused.height else None
    warnings = screened.warnings + item_warn + user_warn
    manifest = ImportManifest(
        import_id=import_id,
        dataset=dataset,
        source=source or dataset,
        status="landing",
        imported_at=arrival.isoformat(),
        partition_key=partition_key,
        earliest_event_time=events["event_time"].min().isoformat(),
        latest_event_time=events["event_time"].max().isoformat(),
        rows={
            "in": screened.rows_in,
            "kept": screened.rows.height,
            "merged": screened.merged,
            "refused": len(screened.refused),
        },
        refused_by_reason=refused,
        events=events.height,
        items=item_table.height,
        users=user_table.height,
        event_files=list(chunks),
        table_files=list(tables),
        refused_file=refused_file,
        time_shift_seconds=shift.total_seconds() if shift is not None else None,
        warnings=warnings,
        user_column=mapping.user_id,
    )
    # The manifest lands before the events: a landing sensor may ingest an event file as soon as it is
    # visible, and must find the import's earliest time already there. Catalog and profiles land next,
    # so the events' items are known when the hour is ingested; "landed" marks the import complete.
    if refused_file:
        zone.write_bytes(refused_file, encode_frame(screened.refused, fmt))
    zone.write_bytes(manifest.key, manifest.to_json())
    for key, frame in (tables | chunks).items():
        zone.write_bytes(key, encode_frame(frame, fmt))
    zone.write_bytes(manifest.key, replace(manifest, status="landed").to_json())
    for w in warnings:
        logger.warning("import %s: %s", dataset, w)
    logger.info(
        "imported %s: %d rows in, %d kept, %d merged, %d refused %s; %d events, %d items, %d users",
        dataset,
        screened.rows_in,
        screened.rows.height,
        screened.merged,
        len(screened.refused),
        refused,
        events.height,
        item_table.height,
        user_table.height,
    )
    return ImportResult(
        dataset=dataset,
        events=events.height,
        items=item_table.height,
        users=user_table.height,
        partition_key=partition_key,
        files=[*tables, *chunks],
        derived_items=items is None,
        derived_users=users is None,
        time_shift=shift,
        warnings=warnings,
        rows_in=screened.rows_in,
        kept=screened.rows.height,
        merged=screened.merged,
        refused=refused,
        earliest_event_time=events["event_time"].min(),
        manifest_key=manifest.key,
        refused_file=refused_file,
    )


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n:,} {reason}" for reason, n in counts.items())


def import_files(
    zone: LandingZone,
    interactions: Path,
    mapping: ColumnMapping = DEFAULT_MAPPING,
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
        source=str(interactions),
        **options,  # type: ignore[arg-type]
    )


def import_movielens(zone: LandingZone, path: Path, dataset: str | None = None, **options: object) -> ImportResult:
    """Import MovieLens: GroupLens u.data / ratings.csv, or a RecBole directory / .inter file (with .item/.user)."""
    path = Path(path)
    try:
        data = load_movielens(path)
    except FileNotFoundError as exc:
        raise DatasetImportError(str(exc)) from exc
    except (pl.exceptions.PolarsError, ValueError) as exc:
        raise DatasetImportError(f"cannot read MovieLens files at {path}: {str(exc).splitlines()[0]}") from exc
    item_columns = {}
    if data.items is not None:
        item_columns = {k: v for k, v in MOVIELENS_ITEM_COLUMNS.items() if v in data.items.columns}
    mapping = ColumnMapping(weight="rating", item_columns=item_columns)
    name = dataset or (path.name if path.is_dir() else path.stem if path.suffix == ".inter" else path.parent.name)
    options.setdefault("source", str(path))
    return import_frames(zone, data.ratings, mapping, name, items=data.items, users=data.users, **options)  # type: ignore[arg-type]
