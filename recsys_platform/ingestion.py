"""Ingestion: read landed files, validate rows, quarantine the bad ones with a reason.

Every input row ends up in exactly one of: valid events, quarantined rows, duplicates.
Files that cannot be read at all become one quarantined-file record each. Nothing is
silently dropped: `IngestResult.stats` reconciles rows_in = valid + quarantined + duplicates.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import polars as pl

from recsys_platform import schemas
from recsys_platform.landing import LandedFile, LandingZone, arrival_time_of

logger = logging.getLogger(__name__)

APP_LAUNCH = datetime(2019, 1, 1, tzinfo=UTC)
MAX_FUTURE = timedelta(hours=1)  # event time may lead arrival time by clock skew only
MAX_SECONDS_LISTENED = 6 * 3600.0
MAX_FIELD_CHARS = 512
MAX_HEART_RATE = 250.0
MAX_STEPS = 100_000


@dataclass
class IngestResult:
    """Valid events, quarantined rows and the reconciliation counts of one ingestion."""

    events: pl.DataFrame
    quarantined: pl.DataFrame
    stats: dict[str, int] = field(default_factory=dict)


def _quarantine_rows(raw: pl.DataFrame, reason: str, detail: str | pl.Expr, partition_key: str) -> pl.DataFrame:
    """Turn rejected raw rows into QUARANTINE_SCHEMA records."""
    now = datetime.now(UTC)
    payload_cols = [c for c in raw.columns if c not in ("source_file", "source_row", "arrival_time", "_raw")]
    raw_json = (
        pl.col("_raw")
        if "_raw" in raw.columns
        else pl.struct([pl.col(c).cast(pl.String) for c in payload_cols]).struct.json_encode()
    )
    detail_expr = pl.lit(detail) if isinstance(detail, str) else detail
    return raw.select(
        reason=pl.lit(reason),
        detail=detail_expr.cast(pl.String),
        source_file=pl.col("source_file"),
        source_row=pl.col("source_row"),
        raw=raw_json,
        partition_key=pl.lit(partition_key),
        quarantined_at=pl.lit(now, dtype=pl.Datetime("us", "UTC")),
    )


def _file_record(f: LandedFile, reason: str, detail: str, partition_key: str) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "reason": [reason],
            "detail": [detail[:500]],
            "source_file": [f.key],
            "source_row": [None],
            "raw": [None],
            "partition_key": [partition_key],
            "quarantined_at": [datetime.now(UTC)],
        },
        schema=schemas.QUARANTINE_SCHEMA,
    )


def _read_jsonl(data: bytes) -> tuple[pl.DataFrame, list[tuple[int, str, str]]]:
    """Parse JSON lines; return string-typed rows and (line, reason, raw) for unparsable lines."""
    rows: list[dict[str, object]] = []
    bad: list[tuple[int, str, str]] = []
    for line_no, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            bad.append((line_no, "invalid_utf8", line.decode("utf-8", errors="replace")[:1000]))
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            bad.append((line_no, "malformed_json", f"{exc.msg}: {text[:1000]}"))
            continue
        if not isinstance(obj, dict):
            bad.append((line_no, "malformed_json", f"not an object: {text[:1000]}"))
            continue
        row = {k: (json.dumps(v) if isinstance(v, dict | list) else v) for k, v in obj.items()}
        row["source_row"] = line_no
        row["_raw"] = text
        rows.append(row)
    if not rows:
        return pl.DataFrame(), bad
    df = pl.DataFrame(rows, infer_schema_length=None, strict=False)
    return df.with_columns(pl.exclude("source_row").cast(pl.String, strict=False)), bad


def _read_parquet(data: bytes) -> pl.DataFrame:
    df = pl.read_parquet(io.BytesIO(data))
    return df.with_columns(source_row=pl.int_range(1, pl.len() + 1, dtype=pl.Int64))


def _coerce(df: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Cast raw columns to RAW_EVENT_SCHEMA; return (typed, rows whose values failed to cast)."""
    exprs, failed = [], []
    for name, dtype in schemas.RAW_EVENT_SCHEMA.items():
        if name not in df.columns:
            exprs.append(pl.lit(None, dtype=dtype).alias(name))
            continue
        col = pl.col(name)
        if dtype == pl.Datetime("us", "UTC"):
            src = df.schema[name]
            if src == pl.String:
                cast = col.str.to_datetime(time_zone="UTC", strict=False, time_unit="us")
            elif isinstance(src, pl.Datetime):
                cast = col.dt.replace_time_zone("UTC") if src.time_zone is None else col.dt.convert_time_zone("UTC")
                cast = cast.dt.cast_time_unit("us")
            else:
                cast = pl.lit(None, dtype=dtype)
        else:
            cast = col.cast(dtype, strict=False)
        exprs.append(cast.alias(name))
        failed.append(col.is_not_null() & cast.is_null())
    typed = df.with_columns(exprs)
    bad_type = pl.any_horizontal(failed) if failed else pl.lit(False)
    return typed.filter(~bad_type), df.filter(bad_type)


def validate_events(
    typed: pl.DataFrame, known_items: set[str] | None, partition_key: str
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Apply row rules in order; return (valid rows, quarantined records with reason codes)."""
    item_list = sorted(known_items) if known_items is not None else None
    content = pl.col("event_type").is_in(list(schemas.CONTENT_EVENT_TYPES))
    text_too_long = pl.any_horizontal(
        [pl.col(c).str.len_chars() > MAX_FIELD_CHARS for c in ("event_id", "user_id", "item_id", "query", "session_id")]
    )
    rules: list[tuple[str, pl.Expr, pl.Expr]] = [
        (
            "missing_required_field",
            pl.any_horizontal([pl.col(c).is_null() for c in schemas.REQUIRED_EVENT_FIELDS]),
            pl.concat_str(
                [pl.when(pl.col(c).is_null()).then(pl.lit(c)) for c in schemas.REQUIRED_EVENT_FIELDS],
                separator=",",
                ignore_nulls=True,
            ),
        ),
        (
            "oversized_field",
            text_too_long.fill_null(False),
            pl.lit(f"a text field exceeds {MAX_FIELD_CHARS} chars"),
        ),
        ("unknown_event_type", ~pl.col("event_type").is_in(list(schemas.EVENT_TYPES)), pl.col("event_type")),
        ("missing_item_id", content & pl.col("item_id").is_null(), pl.col("event_type")),
        (
            "unknown_item_id",
            (content & ~pl.col("item_id").is_in(item_list)) if item_list is not None else pl.lit(False),
            pl.col("item_id"),
        ),
        (
            "invalid_duration",
            (pl.col("seconds_listened") < 0) | (pl.col("seconds_listened") > MAX_SECONDS_LISTENED),
            pl.col("seconds_listened").cast(pl.String),
        ),
        (
            "invalid_biometric",
            (pl.col("steps") < 0)
            | (pl.col("steps") > MAX_STEPS)
            | (pl.col("heart_rate") <= 20)
            | (pl.col("heart_rate") > MAX_HEART_RATE),
            pl.format("steps={} heart_rate={}", pl.col("steps"), pl.col("heart_rate")),
        ),
        (
            "timestamp_before_app_launch",
            pl.col("event_time") < pl.lit(APP_LAUNCH, dtype=pl.Datetime("us", "UTC")),
            pl.col("event_time").cast(pl.String),
        ),
        (
            "timestamp_in_future",
            pl.col("event_time") > pl.col("arrival_time") + pl.duration(seconds=MAX_FUTURE.total_seconds()),
            pl.format("event_time {} after arrival {}", pl.col("event_time"), pl.col("arrival_time")),
        ),
    ]
    rejected: list[pl.DataFrame] = []
    remaining = typed
    for reason, cond, detail in rules:
        mask = remaining.select(cond.fill_null(False).alias("m"))["m"]
        if mask.any():
            bad = remaining.filter(mask)
            rejected.append(_quarantine_rows(bad.with_columns(_d=detail), reason, pl.col("_d"), partition_key))
            remaining = remaining.filter(~mask)
    quarantined = pl.concat(rejected) if rejected else schemas.empty_frame(schemas.QUARANTINE_SCHEMA)
    return remaining, quarantined


def ingest_files(
    zone: LandingZone,
    files: list[LandedFile],
    partition_key: str,
    arrival_time: datetime,
    known_items: set[str] | None = None,
) -> IngestResult:
    """Read, type, validate and deduplicate the given files of one arrival-hour partition."""
    typed_parts: list[pl.DataFrame] = []
    quarantine: list[pl.DataFrame] = []
    rows_in = 0
    unreadable = 0
    for f in files:
        try:
            data = zone.read_bytes(f.key)
        except Exception as exc:  # a file we cannot fetch stays in place and is recorded
            quarantine.append(_file_record(f, "unreadable_file", f"{type(exc).__name__}: {exc}", partition_key))
            unreadable += 1
            continue
        if not data.strip():
            quarantine.append(_file_record(f, "empty_file", "file has no content", partition_key))
            unreadable += 1
            continue
        bad_lines: list[tuple[int, str, str]] = []
        try:
            if f.key.endswith(".parquet"):
                raw = _read_parquet(data)
            else:
                raw, bad_lines = _read_jsonl(data)
        except Exception as exc:
            quarantine.append(_file_record(f, "unreadable_file", f"{type(exc).__name__}: {exc}", partition_key))
            unreadable += 1
            continue
        rows_in += raw.height + len(bad_lines)
        if bad_lines:
            quarantine.append(
                pl.DataFrame(
                    {
                        "reason": [b[1] for b in bad_lines],
                        "detail": [b[2][:200] for b in bad_lines],
                        "source_file": [f.key] * len(bad_lines),
                        "source_row": [b[0] for b in bad_lines],
                        "raw": [b[2] for b in bad_lines],
                        "partition_key": [partition_key] * len(bad_lines),
                        "quarantined_at": [datetime.now(UTC)] * len(bad_lines),
                    },
                    schema=schemas.QUARANTINE_SCHEMA,
                )
            )
        if raw.height == 0:
            continue
        extra = sorted(set(raw.columns) - set(schemas.RAW_EVENT_SCHEMA) - {"source_row", "_raw"})
        if extra:
            logger.warning("%s: ignoring unexpected columns %s", f.key, extra)
        landed_at = arrival_time_of(f.key) or arrival_time
        raw = raw.drop(extra).with_columns(
            source_file=pl.lit(f.key), arrival_time=pl.lit(landed_at, dtype=pl.Datetime("us", "UTC"))
        )
        typed, bad_type = _coerce(raw)
        if bad_type.height:
            quarantine.append(
                _quarantine_rows(bad_type, "wrong_type", "a value does not match the column type", partition_key)
            )
        typed_parts.append(typed)

    all_typed = (
        pl.concat([t.select([*schemas.EVENT_SCHEMA]) for t in typed_parts], how="vertical_relaxed")
        if typed_parts
        else schemas.empty_frame(schemas.EVENT_SCHEMA)
    )
    valid, rejected = validate_events(all_typed, known_items, partition_key)
    quarantine.append(rejected)
    # Dedup by event_id: first by (file key, row) wins, so re-running gives the same rows.
    valid = valid.sort("source_file", "source_row")
    deduped = valid.unique(subset="event_id", keep="first", maintain_order=True)
    quarantined = pl.concat([q.select(list(schemas.QUARANTINE_SCHEMA)) for q in quarantine])
    stats = {
        "files": len(files),
        "unreadable_files": unreadable,
        "rows_in": rows_in,
        "valid": deduped.height,
        "quarantined": quarantined.filter(pl.col("source_row").is_not_null()).height,
        "duplicates": valid.height - deduped.height,
    }
    return IngestResult(events=schemas.conform(deduped, schemas.EVENT_SCHEMA), quarantined=quarantined, stats=stats)


def read_table_updates(zone: LandingZone, prefix: str, schema: dict[str, pl.DataType], key: str) -> pl.DataFrame:
    """Read every catalog/profile file under `prefix`; later files override earlier rows by `key`."""
    frames = []
    for f in zone.list_files(prefix):
        data = zone.read_bytes(f.key)
        if f.key.endswith(".parquet"):
            df = pl.read_parquet(io.BytesIO(data))
        elif f.key.endswith(".jsonl"):
            df = pl.read_ndjson(io.BytesIO(data), infer_schema_length=None)
        else:
            continue
        frames.append(schemas.conform(df, schema))
    if not frames:
        return schemas.empty_frame(schema)
    return pl.concat(frames).unique(subset=key, keep="last", maintain_order=True).sort(key)
