"""Reading an interactions file and deciding what becomes of each of its rows, before the import
(`recsys_platform.ingest.importer`) turns the usable ones into native events.

A row is kept, merged (an exact duplicate of an earlier row: identical in every column, so it carries
nothing the first copy does not) or refused with the first reason of `REFUSAL_REASONS` it meets.
Refused rows come back as QUARANTINE_SCHEMA records (reason, detail, source file, row number from 1
with the header not counted, the row as JSON) so the import can keep them next to its manifest. A file
that cannot be imported at all (unreadable, empty, a missing column, no value of the timestamp column is
a time) raises `DatasetImportError` with one message naming the problem.

Timestamps may be epoch seconds, milliseconds, microseconds or nanoseconds (the unit read per value by
magnitude), ISO 8601 text with or without an offset (naive times are UTC), or datetime columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from recsys_platform import schemas
from recsys_platform.ingest.ingestion import parse_event_times

EVENT_METADATA_COLUMNS = ("session_id", "seconds_listened", "query")
# Why an interaction row is refused, in the order the checks apply (a row gets the first that matches).
REFUSAL_REASONS = (
    "missing_user_id",
    "missing_item_id",
    "invalid_user_id",
    "invalid_item_id",
    "missing_timestamp",
    "unparsable_timestamp",
    "missing_event_type",
    "missing_weight",
    "unparsable_weight",
)
# An epoch number's unit, read from its magnitude: below 1e11 seconds (1e11 s is the year 5138), below 1e14
# milliseconds, below 1e17 microseconds, else nanoseconds. Per value, so one odd value cannot rescale a column.
_EPOCH_TO_MICROS = ((1e11, 1e6), (1e14, 1e3), (1e17, 1.0))
_ROW = "__source_row"


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
class ScreenedRows:
    """Interaction rows split into the usable ones (ids as strings, times parsed, exact duplicates merged)
    and the refused ones (QUARANTINE_SCHEMA records with their reason, source row and content)."""

    rows: pl.DataFrame
    refused: pl.DataFrame
    rows_in: int
    merged: int
    warnings: list[str]

    def refused_by_reason(self) -> dict[str, int]:
        """{reason: rows refused for it}, in REFUSAL_REASONS order."""
        counts = dict(self.refused.group_by("reason").len().iter_rows())
        return {r: counts[r] for r in REFUSAL_REASONS if r in counts}


def read_table(path: Path) -> pl.DataFrame:
    """Read a CSV (.csv, .tsv, .txt) or Parquet file."""
    path = Path(path)
    if not path.exists():
        raise DatasetImportError(f"{path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pl.read_parquet(path)
        if suffix in (".csv", ".tsv", ".txt"):
            return _read_csv(path, "\t" if suffix == ".tsv" else ",")
    except pl.exceptions.NoDataError as exc:
        raise DatasetImportError(f"{path} is empty") from exc
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DatasetImportError(f"cannot read {path}: {str(exc).splitlines()[0]}") from exc
    raise DatasetImportError(f"{path}: expected .csv, .tsv or .parquet")


def _read_csv(path: Path, separator: str) -> pl.DataFrame:
    try:
        return pl.read_csv(path, separator=separator, infer_schema_length=10_000, encoding="utf8-lossy")
    except pl.exceptions.ComputeError:
        # A value past the first 10,000 rows that does not fit the inferred type (e.g. "n/a" in a column of
        # epochs): read the columns as text; the import types them and refuses the rows that do not fit.
        return pl.read_csv(path, separator=separator, infer_schema=False, encoding="utf8-lossy")


def require_columns(df: pl.DataFrame, columns: list[str], what: str) -> None:
    """Refuse a table that lacks any of `columns`, naming the ones it has."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DatasetImportError(f"{what} has no column {', '.join(missing)} (columns: {', '.join(df.columns)})")


def _from_epoch(f: pl.Expr) -> pl.Expr:
    """Epoch numbers (unit by magnitude, see _EPOCH_TO_MICROS) to UTC datetimes; NaN and overflow become null."""
    micros = pl.when(f.abs() < _EPOCH_TO_MICROS[0][0]).then(f * _EPOCH_TO_MICROS[0][1])
    for bound, scale in _EPOCH_TO_MICROS[1:]:
        micros = micros.when(f.abs() < bound).then(f * scale)
    micros = micros.when(f.is_finite()).then(f / 1e3)
    return micros.round().cast(pl.Int64, strict=False).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")


def parse_times(s: pl.Series) -> pl.Series:
    """Epoch numbers, ISO strings (or epoch numbers as text) and datetimes to UTC datetimes; values that
    are not a time become null."""
    if isinstance(s.dtype, pl.Datetime):
        out = s.dt.replace_time_zone("UTC") if s.dtype.time_zone is None else s.dt.convert_time_zone("UTC")
        return out.dt.cast_time_unit("us")
    if s.dtype == pl.Date:
        return s.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    if s.dtype.is_numeric():
        return pl.select(_from_epoch(pl.lit(s).cast(pl.Float64))).to_series().alias(s.name)
    if s.dtype == pl.String:
        text = s.str.strip_chars()
        epochs = pl.select(_from_epoch(pl.lit(text).cast(pl.Float64, strict=False))).to_series()
        return pl.select(pl.coalesce(parse_event_times(text), epochs)).to_series().alias(s.name)
    raise DatasetImportError(f"timestamp column of type {s.dtype} is not a datetime, an epoch or an ISO string")


def to_datetime(s: pl.Series) -> pl.Series:
    """`parse_times`, refusing a column with any value that is not a time."""
    parsed = parse_times(s)
    bad = parsed.is_null() & s.is_not_null()
    if bad.any():
        raise DatasetImportError(f"timestamps not understood, e.g. {s.filter(bad).head(3).to_list()}")
    return parsed


def check_mapping(interactions: pl.DataFrame, mapping: ColumnMapping) -> None:
    """Refuse a mapping whose columns the interactions lack, or whose event metadata has no native column."""
    cols = [mapping.user_id, mapping.item_id, mapping.timestamp, *mapping.event_columns.values()]
    cols += [c for c in (mapping.event_type, mapping.weight) if c]
    require_columns(interactions, cols, "the interactions file")
    bad = sorted(set(mapping.event_columns) - set(EVENT_METADATA_COLUMNS))
    if bad:
        raise DatasetImportError(f"event metadata can map onto {EVENT_METADATA_COLUMNS}, not {bad}")


def _is_blank(col: str, dtype: pl.DataType) -> pl.Expr:
    c = pl.col(col)
    return c.is_null() | (c.str.strip_chars() == "") if dtype == pl.String else c.is_null()


def event_type_text(column: str, dtype: pl.DataType) -> pl.Expr:
    """An event type column as text, empty values as null."""
    return pl.when(~_is_blank(column, dtype)).then(pl.col(column).cast(pl.String))


def weight_value(column: str) -> pl.Expr:
    """A weight column as a number; text that is not a number, and NaN, become null."""
    w = pl.col(column).cast(pl.Float64, strict=False)
    return pl.when(~w.is_nan()).then(w)


def _refusal(interactions: pl.DataFrame, mapping: ColumnMapping) -> tuple[pl.Expr, pl.Expr]:
    """(reason, detail) of the first REFUSAL_REASONS check a row fails; null reason for a usable row.
    Needs the parsed time in column `__time`."""
    schema = interactions.schema
    text = {c: pl.col(c).cast(pl.String).str.head(60) for c in (mapping.timestamp, mapping.weight) if c}
    checks = [
        ("missing_user_id", _is_blank(mapping.user_id, schema[mapping.user_id]), pl.lit(f"{mapping.user_id} is empty")),
        ("missing_item_id", _is_blank(mapping.item_id, schema[mapping.item_id]), pl.lit(f"{mapping.item_id} is empty")),
        *(
            (
                f"invalid_{what}",
                ~pl.col(column).cast(pl.String).str.contains(schemas.ID_PATTERN),
                pl.format(f"{column}={{}} is not {schemas.ID_RULE}", pl.col(column).cast(pl.String).str.head(60)),
            )
            for what, column in (("user_id", mapping.user_id), ("item_id", mapping.item_id))
        ),
        (
            "missing_timestamp",
            _is_blank(mapping.timestamp, schema[mapping.timestamp]),
            pl.lit(f"{mapping.timestamp} is empty"),
        ),
        (
            "unparsable_timestamp",
            pl.col("__time").is_null(),
            pl.format(
                f"{mapping.timestamp}={{}} is not epoch seconds/milliseconds or ISO 8601", text[mapping.timestamp]
            ),
        ),
    ]
    no_type = (
        event_type_text(mapping.event_type, schema[mapping.event_type]).is_null()
        if mapping.event_type
        else pl.lit(True)
    )
    if mapping.weight:  # a row without an event type is typed by its weight
        missing_weight = _is_blank(mapping.weight, schema[mapping.weight])
        if mapping.event_type:
            about = f"{mapping.event_type} and {mapping.weight} are empty"
            checks.append(("missing_event_type", no_type & missing_weight, pl.lit(about)))
        else:
            checks.append(("missing_weight", missing_weight, pl.lit(f"{mapping.weight} is empty")))
        checks.append(
            (
                "unparsable_weight",
                no_type & weight_value(mapping.weight).is_null(),
                pl.format(f"{mapping.weight}={{}} is not a number", text[mapping.weight]),
            )
        )
    elif mapping.event_type:
        checks.append(("missing_event_type", no_type, pl.lit(f"{mapping.event_type} is empty")))
    reason = pl.when(checks[0][1]).then(pl.lit(checks[0][0]))
    detail = pl.when(checks[0][1]).then(checks[0][2])
    for name, cond, about in checks[1:]:
        reason, detail = reason.when(cond).then(pl.lit(name)), detail.when(cond).then(about)
    return reason, detail


def screen_interactions(
    interactions: pl.DataFrame, mapping: ColumnMapping, source: str, partition_key: str
) -> ScreenedRows:
    """Refuse the rows that cannot become events (REFUSAL_REASONS) and merge exact duplicate rows."""
    check_mapping(interactions, mapping)
    raw_time = interactions[mapping.timestamp]
    times = parse_times(raw_time)
    if times.is_null().all():
        given = raw_time.drop_nulls().cast(pl.String).head(3).to_list()
        if not given or not any(str(v).strip() for v in given):
            raise DatasetImportError(f"the timestamp column {mapping.timestamp!r} is empty")
        raise DatasetImportError(
            f"no value of the timestamp column {mapping.timestamp!r} is a time, e.g. {given}: expected epoch "
            "seconds or milliseconds, ISO 8601 text (e.g. 2026-03-01T10:00:00+01:00) or a datetime column"
        )
    source_columns = interactions.columns
    reason, detail = _refusal(interactions, mapping)
    flagged = interactions.with_columns(
        __time=times, **{_ROW: pl.int_range(1, pl.len() + 1, dtype=pl.Int64)}
    ).with_columns(__reason=reason, __detail=detail)
    refused_rows = flagged.filter(pl.col("__reason").is_not_null())
    payload = pl.struct(
        [pl.col(c) if interactions.schema[c].is_nested() else pl.col(c).cast(pl.String) for c in source_columns]
    ).struct.json_encode()
    refused = refused_rows.select(
        reason=pl.col("__reason"),
        detail=pl.col("__detail").str.head(500),
        source_file=pl.lit(source),
        source_row=pl.col(_ROW),
        raw=payload,
        partition_key=pl.lit(partition_key),
        quarantined_at=pl.lit(datetime.now(UTC), dtype=schemas.QUARANTINE_SCHEMA["quarantined_at"]),
    )
    usable = flagged.filter(pl.col("__reason").is_null())
    rows = usable.unique(subset=source_columns, keep="first", maintain_order=True)
    rows = rows.with_columns(pl.col("__time").alias(mapping.timestamp)).drop("__time", "__reason", "__detail")
    warnings = []
    if mapping.event_type and mapping.weight:
        both = rows.select(
            (
                event_type_text(mapping.event_type, interactions.schema[mapping.event_type]).is_not_null()
                & weight_value(mapping.weight).is_not_null()
            ).sum()
        ).item()
        if both:
            warnings.append(
                f"{both:,} rows have both an event type ({mapping.event_type}) and a weight ({mapping.weight}): "
                "the event type decides, their weights are not used"
            )
    return ScreenedRows(rows.drop(_ROW), refused, interactions.height, usable.height - rows.height, warnings)
