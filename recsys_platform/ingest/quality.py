"""Data quality: run a Great Expectations suite (JSON in expectations/) against a polars frame.

Each validation uses an ephemeral GX context (nothing written to disk) and a pandas batch of the
frame, or of a seeded random sample when the frame is larger than `max_rows`; the result says
which expectations failed, how many values were unexpected and shows examples of them.
Great Expectations is imported inside the functions: it takes seconds to import.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import polars as pl

from recsys_platform.config import EXPECTATIONS_DIR

logger = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = 200_000
MAX_EXAMPLES = 5


@dataclass(frozen=True)
class ExpectationFailure:
    """One failed expectation: what was expected, how many values broke it, and examples."""

    expectation: str
    column: str | None
    kwargs: dict[str, Any]
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    examples: list[Any] = field(default_factory=list)
    observed_value: Any = None
    error: str | None = None

    def summary(self) -> str:
        """One line for logs and check descriptions."""
        target = f"{self.column}: " if self.column else ""
        if self.error:
            return f"{target}{self.expectation} raised {self.error}"
        if self.unexpected_count is not None:
            return f"{target}{self.expectation}: {self.unexpected_count} unexpected, e.g. {self.examples[:3]}"
        return f"{target}{self.expectation}: observed {self.observed_value}"


@dataclass(frozen=True)
class QualityResult:
    """The outcome of validating one frame against one suite."""

    suite: str
    success: bool
    evaluated: int
    failed: int
    rows: int
    rows_validated: int
    failures: list[ExpectationFailure]

    @property
    def sampled(self) -> bool:
        """Whether only a random sample of the rows was validated."""
        return self.rows_validated < self.rows

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable form (for metadata and reports)."""
        return {**asdict(self), "sampled": self.sampled}

    def failures_markdown(self) -> str:
        """A markdown table of the failed expectations (empty string when none failed)."""
        if not self.failures:
            return ""
        lines = ["| expectation | column | unexpected | % | examples / observed |", "|---|---|---|---|---|"]
        for f in self.failures:
            shown = f.error or (", ".join(map(str, f.examples)) if f.examples else str(f.observed_value))
            pct = "" if f.unexpected_percent is None else f"{f.unexpected_percent:.2f}"
            count = "" if f.unexpected_count is None else str(f.unexpected_count)
            lines.append(f"| {f.expectation} | {f.column or ''} | {count} | {pct} | {shown.replace('|', '/')[:200]} |")
        return "\n".join(lines)


def suite_path(name: str, directory: Path = EXPECTATIONS_DIR) -> Path:
    """Path of the suite JSON for a table."""
    return Path(directory) / f"{name}.json"


def suite_names(directory: Path = EXPECTATIONS_DIR) -> list[str]:
    """Names of the suites stored in the expectations directory."""
    return sorted(p.stem for p in Path(directory).glob("*.json"))


def load_suite(name: str, directory: Path = EXPECTATIONS_DIR) -> dict[str, Any]:
    """Read a suite JSON ({"name", "expectations": [{"type", "kwargs", "meta"}], "meta"})."""
    path = suite_path(name, directory)
    try:
        suite = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"no expectation suite {name!r} at {path}") from exc
    if not isinstance(suite, dict) or not isinstance(suite.get("expectations"), list):
        raise ValueError(f"{path} is not a GX suite: expected an object with an 'expectations' list")
    suite.setdefault("name", name)
    return suite


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy / pandas scalars
        try:
            return _jsonable(value.item())
        except (TypeError, ValueError):
            pass
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _gx_context() -> Any:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _failure(result: Any) -> ExpectationFailure:
    config = result.expectation_config
    kwargs = {k: _jsonable(v) for k, v in config.kwargs.items() if k != "batch_id"}
    info = result.exception_info or {}
    error = info.get("exception_message") if info.get("raised_exception") else None
    body = result.result or {}
    counted = body.get("partial_unexpected_counts") or []  # distinct values, most frequent first
    examples = [c["value"] for c in counted] if counted else body.get("partial_unexpected_list") or []
    return ExpectationFailure(
        expectation=config.type,
        column=kwargs.get("column"),
        kwargs=kwargs,
        unexpected_count=body.get("unexpected_count"),
        unexpected_percent=_jsonable(body.get("unexpected_percent")),
        examples=_jsonable(list(examples)[:MAX_EXAMPLES]),
        observed_value=_jsonable(body.get("observed_value")),
        error=error,
    )


def validate_frame(
    df: pl.DataFrame | pl.LazyFrame,
    suite: str | dict[str, Any],
    max_rows: int = DEFAULT_MAX_ROWS,
    seed: int = 0,
    directory: Path = EXPECTATIONS_DIR,
) -> QualityResult:
    """Validate a frame (or a seeded sample of `max_rows` of it) against a GX suite."""
    import great_expectations as gx

    frame = df.collect() if isinstance(df, pl.LazyFrame) else df
    spec = load_suite(suite, directory) if isinstance(suite, str) else suite
    sample = frame.sample(n=max_rows, seed=seed) if frame.height > max_rows else frame
    context = _gx_context()
    batch_definition = (
        context.data_sources.add_pandas("polars")
        .add_dataframe_asset(spec["name"])
        .add_batch_definition_whole_dataframe("frame")
    )
    gx_suite = context.suites.add(
        gx.ExpectationSuite(name=spec["name"], expectations=spec["expectations"], meta=spec.get("meta") or {})
    )
    batch = batch_definition.get_batch(batch_parameters={"dataframe": sample.to_pandas()})
    outcome = batch.validate(gx_suite, result_format={"result_format": "SUMMARY", "partial_unexpected_count": 20})
    failures = [_failure(r) for r in outcome.results if not r.success]
    result = QualityResult(
        suite=spec["name"],
        success=bool(outcome.success),
        evaluated=len(outcome.results),
        failed=len(failures),
        rows=frame.height,
        rows_validated=sample.height,
        failures=failures,
    )
    for f in failures:
        logger.warning("suite %s: %s", spec["name"], f.summary())
    return result
