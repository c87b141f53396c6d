"""Ingestion: read landed files, type and validate rows, quarantine the bad ones with a reason code.

Every input row ends up in exactly one of: valid events, quarantined rows (a reason code, the source
file and line/row number, the raw payload) or duplicates of an event_id seen earlier in the partition
(kept in quarantine too, reason `duplicate_event_id`). A file that cannot be read at all becomes one
quarantined-file record (source_row null); so does a notice that a file carried unexpected columns
(its rows are still ingested). `IngestResult.stats` reconciles rows_in = valid + quarantined +
duplicates; `recsys_platform.ingest.reconciliation` re-counts the landed files to check a stored partition.

An event from the app dated before the app launch (`app_launch()`) is quarantined
(`timestamp_before_app_launch`). Events that `recsys import` landed are accepted back to the earliest
event time their import recorded in its manifest (`imported_event_floors`), so historical datasets
ingest in every later process without RECSYS_APP_LAUNCH.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import polars as pl

from recsys_platform import schemas
from recsys_platform.config import Settings
from recsys_platform.ingest.event_files import ROW_COLUMN, FileFormatError, RawFile, read_jsonl, read_parquet
from recsys_platform.ingest.landing import FILE_FORMATS, LandedFile, LandingZone, arrival_time_of, read_import_manifests

logger = logging.getLogger(__name__)

APP_LAUNCH = datetime(2019, 1, 1, tzinfo=UTC)
MAX_FUTURE = timedelta(hours=1)  # event time may lead arrival time by clock skew only
MAX_SECONDS_LISTENED = 6 * 3600.0
MAX_FIELD_CHARS = 512
MIN_HEART_RATE = 20.0
MAX_HEART_RATE = 250.0
MAX_STEPS = 100_000
TEXT_FIELDS = ("event_id", "user_id", "item_id", "query", "session_id")

# Row-level reason codes, in the order the rules are applied (a row gets the first that matches).
ROW_REASONS = (
    "malformed_json",
    "invalid_utf8",
    "missing_column",
    "wrong_type",
    "missing_required_field",
    "oversized_field",
    "invalid_identifier",
    "unknown_event_type",
    "missing_item_id",
    "unknown_item_id",
    "invalid_duration",
    "invalid_biometric",
    "timestamp_before_app_launch",
    "timestamp_in_future",
    "duplicate_event_id",
)
# File-level records (source_row is null): the file was not ingested, or (unexpected_columns) a notice.
FILE_REASONS = ("unreadable_file", "empty_file", "corrupt_file", "unsupported_format", "unexpected_columns")
FILE_NOTICES = ("unexpected_columns",)

_UTC = pl.Datetime("us", "UTC")
_TIME_FORMATS = (
    "%Y-%m-%dT%H:%M:%S%.f%#z",
    "%Y-%m-%d %H:%M:%S%.f%#z",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%d",
)
_LINEAGE = (ROW_COLUMN, "source_file", "arrival_time")


def app_launch() -> datetime:
    """Earliest plausible time of an event from the app: RECSYS_APP_LAUNCH (ISO date, optional) or 2019-01-01 UTC."""
    raw = Settings.from_env().app_launch
    if not raw:
        return APP_LAUNCH
    parsed = datetime.fromisoformat(raw)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def imported_event_floors(zone: LandingZone, partition_keys: Iterable[str] | None = None) -> dict[str, datetime]:
    """{event file key: earliest event time accepted in it} for the files imports landed with history
    older than the app launch, from the manifests of the imports that landed in `partition_keys` (every
    import when None). Read it once per run. Files not in it (the app's own events) keep `app_launch()`."""
    launch = app_launch()
    floors: dict[str, datetime] = {}
    for manifest in read_import_manifests(zone, partition_keys):
        earliest = manifest.earliest()
        if earliest < launch:
            floors.update(dict.fromkeys(manifest.event_files, earliest))
    return floors


@dataclass
class IngestResult:
    """Valid events, quarantined rows/files and the reconciliation counts of one ingestion."""

    events: pl.DataFrame
    quarantined: pl.DataFrame
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def reconciled(self) -> bool:
        """Whether rows_in = valid + quarantined + duplicates."""
        s = self.stats
        return s["rows_in"] == s["valid"] + s["quarantined"] + s["duplicates"]


def _payload_json(columns: list[str]) -> pl.Expr:
    return pl.struct([pl.col(c).cast(pl.String) for c in columns]).struct.json_encode()


def _records(
    rows: pl.DataFrame, reason: str | pl.Expr, detail: pl.Expr, raw: pl.Expr, partition_key: str
) -> pl.DataFrame:
    """Quarantine records (QUARANTINE_SCHEMA) for the given rows."""
    return rows.select(
        reason=pl.lit(reason) if isinstance(reason, str) else reason,
        detail=detail.cast(pl.String).str.head(500),
        source_file=pl.col("source_file"),
        source_row=pl.col(ROW_COLUMN).cast(pl.Int64),
        raw=raw,
        partition_key=pl.lit(partition_key),
        quarantined_at=pl.lit(datetime.now(UTC), dtype=_UTC),
    )


def _file_record(key: str, reason: str, detail: str, partition_key: str, raw: str | None = None) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "reason": [reason],
            "detail": [detail[:500]],
            "source_file": [key],
            "source_row": [None],
            "raw": [raw],
            "partition_key": [partition_key],
            "quarantined_at": [datetime.now(UTC)],
        },
        schema=schemas.QUARANTINE_SCHEMA,
    )


def parse_event_times(s: pl.Series) -> pl.Series:
    """ISO-8601 strings to UTC datetimes (naive ones are taken as UTC); unparsable values become null."""
    parsed = s.str.to_datetime(_TIME_FORMATS[0], time_zone="UTC", strict=False, time_unit="us")
    if (parsed.is_null() & s.is_not_null()).any():
        tries = [s.str.to_datetime(fmt, time_zone="UTC", strict=False, time_unit="us") for fmt in _TIME_FORMATS]
        parsed = pl.select(pl.coalesce(tries)).to_series()
    return parsed


def _cast(s: pl.Series, dtype: pl.DataType) -> pl.Series:
    """Cast one raw column to its schema type, leaving values that do not fit as nulls."""
    src = s.dtype
    if dtype == _UTC:
        if src == pl.String:
            return parse_event_times(s)
        if isinstance(src, pl.Datetime):
            out = s.dt.replace_time_zone("UTC") if src.time_zone is None else s.dt.convert_time_zone("UTC")
            return out.dt.cast_time_unit("us")
        if src == pl.Date:
            return s.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
        return pl.Series(s.name, [None] * s.len(), dtype=dtype)
    if src.is_nested() or (src == pl.Boolean and dtype != pl.String):
        return pl.Series(s.name, [None] * s.len(), dtype=dtype)
    if dtype == pl.Int64 and (src == pl.String or src.is_float()):
        f = s.cast(pl.Float64, strict=False)  # "5", "5.0" and 5.0 are all the integer 5; 5.5 is not
        return pl.select(pl.when(f.is_finite() & (f == f.floor())).then(f).cast(pl.Int64, strict=False)).to_series()
    return s.cast(dtype, strict=False)


def _type_file(raw: pl.DataFrame, partition_key: str) -> tuple[pl.DataFrame, list[pl.DataFrame]]:
    """Type one file's rows to EVENT_SCHEMA; rows of a file missing a column or with a value of
    the wrong type go to quarantine."""
    payload = [c for c in raw.columns if c not in _LINEAGE]
    missing = [c for c in schemas.REQUIRED_EVENT_FIELDS if c not in raw.columns]
    if missing:
        detail = pl.lit(f"file has no column {', '.join(missing)}")
        return schemas.empty_frame(schemas.EVENT_SCHEMA), [
            _records(raw, "missing_column", detail, _payload_json(payload), partition_key)
        ]
    typed_cols, failed = [], []
    for name, dtype in schemas.RAW_EVENT_SCHEMA.items():
        if name not in raw.columns:
            typed_cols.append(pl.Series(name, [None] * raw.height, dtype=dtype))
            continue
        typed = _cast(raw[name], dtype)
        typed_cols.append(typed.alias(name))
        bad = raw[name].is_not_null() & typed.is_null()
        if bad.any():
            failed.append((name, dtype, bad))
    typed_df = pl.DataFrame(typed_cols).hstack(raw.select(_LINEAGE))
    if not failed:
        return typed_df, []
    any_bad = failed[0][2]
    for _, _, mask in failed[1:]:
        any_bad = any_bad | mask
    detail_parts = [
        pl.when(mask).then(pl.format(f"{name}={{}} is not {dtype}", pl.col(name).cast(pl.String).str.head(60)))
        for name, dtype, mask in failed
    ]
    bad_rows = raw.with_columns(_d=pl.concat_str(detail_parts, separator="; ", ignore_nulls=True)).filter(any_bad)
    record = _records(bad_rows, "wrong_type", pl.col("_d"), _payload_json(payload), partition_key)
    return typed_df.filter(~any_bad), [record]


def _blank(col: str) -> pl.Expr:
    c = pl.col(col)
    return c.is_null() | (c.str.strip_chars() == "") if schemas.RAW_EVENT_SCHEMA[col] == pl.String else c.is_null()


def _shown(col: str) -> pl.Expr:
    """A field's value as a quarantine detail shows it: quoted (so spaces show), control characters as '?',
    cut to 80 characters."""
    return pl.format('"{}"', pl.col(col).str.head(80).str.replace_all(r"[\x00-\x1f\x7f]", "?"))


def _earliest_time(floors: Mapping[str, datetime] | None) -> pl.Expr:
    """The earliest event time accepted for each row: its file's import floor, else the app launch."""
    launch = app_launch()
    earlier = {key: floor for key, floor in (floors or {}).items() if floor < launch}
    if not earlier:
        return pl.lit(launch, dtype=_UTC)
    return pl.col("source_file").replace_strict(
        list(earlier), list(earlier.values()), default=pl.lit(launch, dtype=_UTC), return_dtype=_UTC
    )


def _rules(
    known_items: set[str] | None, floors: Mapping[str, datetime] | None = None
) -> list[tuple[str, pl.Expr, pl.Expr]]:
    """(reason, condition, detail) of each row rule, in the order they apply."""
    content = pl.col("event_type").is_in(list(schemas.CONTENT_EVENT_TYPES))
    seconds, hr, steps = pl.col("seconds_listened"), pl.col("heart_rate"), pl.col("steps")
    earliest = _earliest_time(floors)
    too_long = [pl.col(c).str.len_chars() > MAX_FIELD_CHARS for c in TEXT_FIELDS]
    bad_user = ~pl.col("user_id").str.contains(schemas.ID_PATTERN)
    bad_item = pl.col("item_id").is_not_null() & ~pl.col("item_id").str.contains(schemas.ID_PATTERN)
    return [
        (
            "missing_required_field",
            pl.any_horizontal([_blank(c) for c in schemas.REQUIRED_EVENT_FIELDS]),
            pl.concat_str(
                [pl.when(_blank(c)).then(pl.lit(c)) for c in schemas.REQUIRED_EVENT_FIELDS],
                separator=",",
                ignore_nulls=True,
            ),
        ),
        (
            "oversized_field",
            pl.any_horizontal(too_long),
            pl.concat_str(
                [
                    pl.when(t).then(pl.format(f"{c} has {{}} chars (max {MAX_FIELD_CHARS})", pl.col(c).str.len_chars()))
                    for c, t in zip(TEXT_FIELDS, too_long, strict=True)
                ],
                separator="; ",
                ignore_nulls=True,
            ),
        ),
        (
            "invalid_identifier",
            bad_user | bad_item,
            pl.concat_str(
                [
                    pl.when(bad_user).then(pl.format(f"user_id {{}} is not {schemas.ID_RULE}", _shown("user_id"))),
                    pl.when(bad_item).then(pl.format(f"item_id {{}} is not {schemas.ID_RULE}", _shown("item_id"))),
                ],
                separator="; ",
                ignore_nulls=True,
            ),
        ),
        ("unknown_event_type", ~pl.col("event_type").is_in(list(schemas.EVENT_TYPES)), pl.col("event_type")),
        ("missing_item_id", content & _blank("item_id"), pl.format("{} without item_id", pl.col("event_type"))),
        (
            "unknown_item_id",
            (content & ~pl.col("item_id").is_in(sorted(known_items))) if known_items is not None else pl.lit(False),
            pl.format("item_id {} is not in the catalog", pl.col("item_id")),
        ),
        (
            "invalid_duration",
            (seconds < 0) | (seconds > MAX_SECONDS_LISTENED) | seconds.is_nan(),
            pl.format(f"seconds_listened={{}} outside [0, {MAX_SECONDS_LISTENED:.0f}]", seconds),
        ),
        (
            "invalid_biometric",
            (steps < 0) | (steps > MAX_STEPS) | (hr <= MIN_HEART_RATE) | (hr > MAX_HEART_RATE) | hr.is_nan(),
            pl.format("steps={} heart_rate={}", steps, hr),
        ),
        (
            "timestamp_before_app_launch",
            pl.col("event_time") < earliest,
            pl.format("event_time {} before {}", pl.col("event_time"), earliest.dt.strftime("%Y-%m-%d")),
        ),
        (
            "timestamp_in_future",
            pl.col("event_time") > pl.col("arrival_time") + pl.duration(seconds=MAX_FUTURE.total_seconds()),
            pl.format("event_time {} after arrival {}", pl.col("event_time"), pl.col("arrival_time")),
        ),
    ]


def validate_events(
    typed: pl.DataFrame,
    known_items: set[str] | None,
    partition_key: str,
    floors: Mapping[str, datetime] | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Apply the row rules in one pass; return (valid rows, quarantined records with reason codes).
    `floors` ({source file: earliest accepted event time}) lets imported history through."""
    rules = _rules(known_items, floors)
    reason = pl.when(rules[0][1].fill_null(False)).then(pl.lit(rules[0][0]))
    for name, cond, _ in rules[1:]:
        reason = reason.when(cond.fill_null(False)).then(pl.lit(name))
    flagged = typed.with_columns(reason.otherwise(pl.lit(None, dtype=pl.String)).alias("_reason"))
    is_bad = pl.col("_reason").is_not_null()
    if not flagged.select(is_bad.any()).item():
        return typed, schemas.empty_frame(schemas.QUARANTINE_SCHEMA)
    bad = flagged.filter(is_bad)
    detail = pl.when(pl.col("_reason") == rules[0][0]).then(rules[0][2])
    for name, _, expr in rules[1:]:
        detail = detail.when(pl.col("_reason") == name).then(expr.cast(pl.String))
    raw = _payload_json(list(schemas.RAW_EVENT_SCHEMA))
    quarantined = _records(bad, pl.col("_reason"), detail.otherwise(None), raw, partition_key)
    return flagged.filter(~is_bad).drop("_reason"), quarantined


def _split_duplicates(valid: pl.DataFrame, partition_key: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Keep the first row of each event_id (by file key, then row); the others become quarantine records."""
    first = valid.select(pl.col("event_id").is_first_distinct()).to_series()
    if first.all():
        return valid, schemas.empty_frame(schemas.QUARANTINE_SCHEMA)
    payload = pl.struct(list(schemas.RAW_EVENT_SCHEMA)).hash(seed=0)
    dups = valid.filter(~first).with_columns(_h=payload)
    firsts = (
        valid.filter(first)
        .join(dups.select("event_id").unique(), on="event_id")
        .select("event_id", _ff="source_file", _fr=ROW_COLUMN, _fh=payload)
    )
    detail = pl.format(
        "event_id {} first seen in {} row {} ({})",
        pl.col("event_id"),
        pl.col("_ff"),
        pl.col("_fr"),
        pl.when(pl.col("_h") == pl.col("_fh")).then(pl.lit("same payload")).otherwise(pl.lit("different payload")),
    )
    dups = dups.join(firsts, on="event_id", how="left", maintain_order="left")
    records = _records(dups, "duplicate_event_id", detail, _payload_json(list(schemas.RAW_EVENT_SCHEMA)), partition_key)
    return valid.filter(first), records


def _read_landed(zone: LandingZone, f: LandedFile) -> RawFile:
    """Fetch and parse one landed file; raises FileFormatError/OSError-like errors for whole-file problems."""
    data = zone.read_bytes(f.key)
    if not data or data.isspace():
        raise _EmptyFile("file has no content")
    return read_parquet(data) if f.key.endswith(".parquet") else read_jsonl(data)


class _EmptyFile(Exception):
    pass


def _bad_line_records(raw: RawFile, key: str, partition_key: str) -> pl.DataFrame:
    lines = raw.bad_lines
    return pl.DataFrame(
        {
            "reason": [b.reason for b in lines],
            "detail": [b.detail[:500] for b in lines],
            "source_file": [key] * len(lines),
            "source_row": [b.line for b in lines],
            "raw": [b.raw for b in lines],
            "partition_key": [partition_key] * len(lines),
            "quarantined_at": [datetime.now(UTC)] * len(lines),
        },
        schema=schemas.QUARANTINE_SCHEMA,
    )


def _extra_columns_record(raw: pl.DataFrame, key: str, extra: list[str], partition_key: str) -> pl.DataFrame:
    examples = {c: raw[c].drop_nulls().head(3).cast(pl.String).to_list() for c in extra}
    detail = f"ignored columns not in the event schema: {', '.join(extra)}"
    return _file_record(key, "unexpected_columns", detail, partition_key, json.dumps(examples)[:10_000])


def ingest_files(
    zone: LandingZone,
    files: list[LandedFile],
    partition_key: str,
    arrival_time: datetime,
    known_items: set[str] | None = None,
    floors: Mapping[str, datetime] | None = None,
) -> IngestResult:
    """Read, type, validate and deduplicate the given files of one arrival-hour partition. `floors`
    ({file key: earliest accepted event time}, from `imported_event_floors`) is read from the manifests
    of the imports that landed in this hour when not given; pass it when ingesting several hours in one run."""
    files = sorted(files, key=lambda f: f.key)  # key order is arrival order: the first copy of an event wins
    if floors is None:
        floors = imported_event_floors(zone, [partition_key])
    floors = {f.key: floors[f.key] for f in files if f.key in floors}
    typed_parts: list[pl.DataFrame] = []
    quarantine: list[pl.DataFrame] = []
    counts = {"rows_in": 0, "files_quarantined": 0, "files_with_unexpected_columns": 0}
    for f in files:
        if not f.key.endswith(FILE_FORMATS):
            quarantine.append(_file_record(f.key, "unsupported_format", f"expected {FILE_FORMATS}", partition_key))
            counts["files_quarantined"] += 1
            continue
        try:
            raw = _read_landed(zone, f)
        except _EmptyFile as exc:
            quarantine.append(_file_record(f.key, "empty_file", str(exc), partition_key))
            counts["files_quarantined"] += 1
            continue
        except FileFormatError as exc:
            quarantine.append(_file_record(f.key, "corrupt_file", str(exc), partition_key))
            counts["files_quarantined"] += 1
            continue
        except Exception as exc:  # a file we cannot fetch stays in place and is recorded
            quarantine.append(_file_record(f.key, "unreadable_file", f"{type(exc).__name__}: {exc}", partition_key))
            counts["files_quarantined"] += 1
            continue
        counts["rows_in"] += raw.rows_in
        if raw.bad_lines:
            quarantine.append(_bad_line_records(raw, f.key, partition_key))
        frame = raw.frame
        extra = sorted(set(frame.columns) - set(schemas.RAW_EVENT_SCHEMA) - {ROW_COLUMN})
        if extra:
            logger.warning("%s: ignoring columns not in the event schema: %s", f.key, extra)
            quarantine.append(_extra_columns_record(frame, f.key, extra, partition_key))
            counts["files_with_unexpected_columns"] += 1
            frame = frame.drop(extra)
        if frame.height == 0:
            continue
        landed_at = arrival_time_of(f.key) or arrival_time
        frame = frame.with_columns(source_file=pl.lit(f.key), arrival_time=pl.lit(landed_at, dtype=_UTC))
        typed, rejected = _type_file(frame, partition_key)
        quarantine.extend(rejected)
        typed_parts.append(typed.select(list(schemas.EVENT_SCHEMA)))

    typed_all = pl.concat(typed_parts) if typed_parts else schemas.empty_frame(schemas.EVENT_SCHEMA)
    valid, rejected = validate_events(typed_all, known_items, partition_key, floors)
    events, duplicates = _split_duplicates(valid, partition_key)
    quarantined = pl.concat([q.select(list(schemas.QUARANTINE_SCHEMA)) for q in [*quarantine, rejected, duplicates]])
    row_records = quarantined.filter(pl.col("source_row").is_not_null())
    hour_start = pl.lit(arrival_time.replace(minute=0, second=0, microsecond=0), dtype=_UTC)
    stats = {
        "files": len(files),
        **counts,
        "unreadable_files": counts["files_quarantined"],
        "valid": events.height,
        "quarantined": row_records.height - duplicates.height,
        "duplicates": duplicates.height,
        "late_events": events.select((pl.col("event_time") < hour_start).sum()).item() if events.height else 0,
    }
    return IngestResult(schemas.conform(events, schemas.EVENT_SCHEMA), quarantined, stats)


def _conform_table(df: pl.DataFrame, schema: dict[str, pl.DataType], key: str) -> pl.DataFrame:
    """Type a catalog/profile file to `schema` (dates in JSON arrive as strings); misfits become null, logged."""
    exprs = []
    for name, dtype in schema.items():
        if name not in df.columns:
            exprs.append(pl.lit(None, dtype=dtype).alias(name))
            continue
        col, src = pl.col(name), df.schema[name]
        if src == pl.String and dtype == pl.Date:
            typed = col.str.to_date(strict=False)
        elif src == pl.String and isinstance(dtype, pl.Datetime):
            typed = col.str.to_datetime(time_zone="UTC", strict=False, time_unit="us")
        else:
            typed = col.cast(dtype, strict=False)
        exprs.append(typed.alias(name))
        misfits = df.select((col.is_not_null() & typed.is_null()).sum()).item()
        if misfits:
            logger.error("%s: %d %s values are not %s; stored as null", key, misfits, name, dtype)
    return df.select(exprs)


def read_table_updates(zone: LandingZone, prefix: str, schema: dict[str, pl.DataType], key: str) -> pl.DataFrame:
    """Read every catalog/profile file under `prefix`; later files override earlier rows by `key`.

    A file that cannot be read is skipped with an error in the log (it stays in place for a retry)."""
    frames = []
    for f in zone.list_files(prefix):
        if not f.key.endswith(FILE_FORMATS):
            continue
        try:
            data = zone.read_bytes(f.key)
            if f.key.endswith(".parquet"):
                df = read_parquet(data).frame
            else:
                df = pl.read_ndjson(io.BytesIO(data), infer_schema_length=None)
            frames.append(_conform_table(df.filter(pl.col(key).is_not_null()), schema, f.key))
        except Exception as exc:
            logger.error("skipping unreadable %s file %s: %s: %s", prefix.rstrip("/"), f.key, type(exc).__name__, exc)
    if not frames:
        return schemas.empty_frame(schema)
    return pl.concat(frames).unique(subset=key, keep="last", maintain_order=True).sort(key)
