"""Writing and reading landed event files (Parquet, JSON lines) into raw frames that keep their line/row numbers.

The happy path is vectorized: a whole JSON-lines file is parsed by polars in one call. Only a file
that polars refuses (a malformed line, invalid UTF-8, blank lines shifting the line numbers) is
re-read line by line, so the bad lines can be named and quarantined while the good ones proceed.
Both paths produce the same frame: every known event column as a String (typing happens later, the
same way for both), unknown columns kept as Strings, plus `source_row` (1-based line or row number).
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field

import polars as pl

from recsys_platform import schemas

logger = logging.getLogger(__name__)

MAX_RAW_CHARS = 10_000  # how much of a rejected line is kept in quarantine
ROW_COLUMN = "source_row"
_WHITESPACE = b" \t\r\n"
_BLANK_HINTS = (b"\n\n", b"\n ", b"\n\t", b"\n\r")  # a blank line must start with one of these
_JSON_AS_STRING = {name: pl.String for name in schemas.RAW_EVENT_SCHEMA}


class FileFormatError(ValueError):
    """A landed file cannot be parsed at all (truncated, not the format its name says)."""


@dataclass
class BadLine:
    """A line of a JSON-lines file that is not a JSON object."""

    line: int
    reason: str  # malformed_json | invalid_utf8
    detail: str
    raw: str


@dataclass
class RawFile:
    """The rows of one landed file before typing, and the lines that could not be parsed."""

    frame: pl.DataFrame
    bad_lines: list[BadLine] = field(default_factory=list)

    @property
    def rows_in(self) -> int:
        """Rows the file holds: parsed rows plus unparsable lines."""
        return self.frame.height + len(self.bad_lines)


def _content_end(data: bytes) -> int:
    """Index just past the last non-whitespace byte (no copy of the data)."""
    end = len(data)
    while end and data[end - 1] in _WHITESPACE:
        end -= 1
    return end


def _nonblank_line_numbers(data: bytes, end: int) -> list[int] | None:
    """1-based numbers of the non-blank lines of data[:end], or None when no line is blank (the usual case)."""
    if end and data[0] not in _WHITESPACE and all(data.find(h, 0, end) == -1 for h in _BLANK_HINTS):
        return None
    return [i for i, line in enumerate(data[:end].split(b"\n"), start=1) if line.strip()]


def count_jsonl_rows(data: bytes) -> int:
    """Rows of a JSON-lines file as ingestion counts them: its non-blank lines."""
    end = _content_end(data)
    if end == 0:
        return 0
    numbers = _nonblank_line_numbers(data, end)
    return data.count(b"\n", 0, end) + 1 if numbers is None else len(numbers)


def count_parquet_rows(data: bytes) -> int:
    """Rows of a Parquet file, from its footer."""
    try:
        return int(pl.scan_parquet(io.BytesIO(data)).select(pl.len()).collect().item())
    except Exception as exc:
        raise FileFormatError(f"not a readable Parquet file: {type(exc).__name__}: {exc}") from exc


def read_parquet(data: bytes) -> RawFile:
    """Read a Parquet event file; row numbers are 1-based positions in the file."""
    try:
        df = pl.read_parquet(io.BytesIO(data))
    except Exception as exc:  # truncated footer, wrong magic bytes, corrupt pages, invalid UTF-8
        raise FileFormatError(f"not a readable Parquet file: {type(exc).__name__}: {str(exc)[:300]}") from exc
    return RawFile(df.with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias(ROW_COLUMN)))


def read_jsonl(data: bytes) -> RawFile:
    """Read a JSON-lines event file: vectorized when polars parses it whole, line by line otherwise."""
    end = _content_end(data)
    if end == 0:
        return RawFile(pl.DataFrame({ROW_COLUMN: pl.Series([], dtype=pl.Int64)}))
    try:
        # Known columns as String, so both paths type values the same way; inferring the rest names extras.
        df = pl.read_ndjson(io.BytesIO(data), schema_overrides=_JSON_AS_STRING, infer_schema_length=None)
    except Exception as exc:  # a bad line somewhere: find it below
        logger.debug("vectorized JSON-lines read failed (%s); parsing line by line", exc)
        return _read_jsonl_lines(data[:end])
    n_lines = data.count(b"\n", 0, end) + 1
    # polars skips blank lines: without any, row i is line i; with some, map rows to non-blank lines.
    numbers = range(1, n_lines + 1) if df.height == n_lines else _nonblank_line_numbers(data, end)
    if numbers is None or len(numbers) != df.height:
        return _read_jsonl_lines(data[:end])
    return RawFile(_stringify(df).with_columns(pl.Series(ROW_COLUMN, numbers, dtype=pl.Int64)))


def _stringify(df: pl.DataFrame) -> pl.DataFrame:
    """Cast every column to String (nested values as JSON), as the line-level path produces them."""
    exprs = []
    for name, dtype in df.schema.items():
        if dtype == pl.String:
            continue
        if isinstance(dtype, pl.Struct | pl.List | pl.Array):
            # Only columns outside the event schema can be nested here (known ones are read as String).
            encoded = pl.struct(pl.col(name).alias("v")).struct.json_encode().str.slice(5).str.head(-1)
            exprs.append(pl.when(pl.col(name).is_not_null()).then(encoded).alias(name))
        else:
            exprs.append(pl.col(name).cast(pl.String))
    return df.with_columns(exprs) if exprs else df


def _json_value_as_string(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # polars writes 5.0 as "5"; both then type the same way
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value)  # the same text polars gives a nested value read as String


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _read_jsonl_lines(body: bytes) -> RawFile:
    """Parse line by line, naming each line that is not a JSON object."""
    columns: dict[str, list[str | None]] = {}
    rows: list[int] = []
    bad: list[BadLine] = []
    for line_no, line in enumerate(body.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            shown = line.decode("utf-8", errors="replace")
            bad.append(BadLine(line_no, "invalid_utf8", f"byte {exc.start}: {exc.reason}", shown[:MAX_RAW_CHARS]))
            continue
        try:
            obj = json.loads(text, parse_constant=_reject_constant)
        except ValueError as exc:
            bad.append(BadLine(line_no, "malformed_json", str(exc)[:200], text[:MAX_RAW_CHARS]))
            continue
        if not isinstance(obj, dict):
            kind = type(obj).__name__
            bad.append(
                BadLine(line_no, "malformed_json", f"line is a JSON {kind}, not an object", text[:MAX_RAW_CHARS])
            )
            continue
        n = len(rows)
        for key, value in obj.items():
            col = columns.setdefault(str(key), [None] * n)
            col.append(_json_value_as_string(value))
        rows.append(line_no)
        for col in columns.values():
            if len(col) < len(rows):
                col.append(None)
    frame = pl.DataFrame(
        {
            **{k: pl.Series(k, v, dtype=pl.String) for k, v in columns.items()},
            ROW_COLUMN: pl.Series(rows, dtype=pl.Int64),
        }
    )
    return RawFile(frame, bad)


def encode_frame(df: pl.DataFrame, fmt: str) -> bytes:
    """Serialize a frame as a landing file: Parquet or JSON lines."""
    buf = io.BytesIO()
    if fmt == ".parquet":
        df.write_parquet(buf)
    elif fmt == ".jsonl":
        df.write_ndjson(buf)
    else:
        raise ValueError(f"unknown landing file format {fmt!r}; use .parquet or .jsonl")
    return buf.getvalue()
