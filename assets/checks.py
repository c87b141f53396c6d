"""Asset checks: the Great Expectations suites in expectations/ and the row reconciliation of raw_events.

Blocking checks (raw_events, recommendations) stop downstream assets in the same run when they fail,
so bad events never reach features and a bad list is never deployed. Every GX check reports the
failed expectations with unexpected counts and example values; frames larger than the validation
sample are validated on a seeded random sample, and the metadata says so.
"""

import random
from dataclasses import replace
from typing import Any

import dagster as dg
import polars as pl

from assets.partitions import arrival_hours
from assets.pools import HISTORY_POOL, in_pool
from recsys_platform.analytics.reporting import frame_preview_markdown
from recsys_platform.ingest.landing import FILE_FORMATS, partition_key_of
from recsys_platform.ingest.quality import QualityResult, load_suite, validate_frame
from recsys_platform.ingest.reconciliation import reconcile_files
from resources import LandingZoneResource

MAX_PARTITIONS_VALIDATED = 24  # GX costs ~0.3 s per hour; a month-long backfill validates a sample of hours


def quality_check_result(result: QualityResult, extra: dict[str, Any] | None = None) -> dg.AssetCheckResult:
    """Turn a GX validation into a check result whose metadata lists the failed expectations."""
    metadata: dict[str, Any] = {
        "suite": result.suite,
        "expectations_evaluated": result.evaluated,
        "expectations_failed": result.failed,
        "rows": result.rows,
        "rows_validated": result.rows_validated,
        "sampled": result.sampled,
        **(extra or {}),
    }
    if result.failures:
        metadata["failed_expectations"] = dg.MetadataValue.md(result.failures_markdown())
        metadata["failures"] = dg.MetadataValue.json([f.__dict__ for f in result.failures])
    scope = f"a random sample of {result.rows_validated:,} of {result.rows:,} rows" if result.sampled else "all rows"
    summary = "; ".join(f.summary() for f in result.failures[:3])
    description = (
        f"{result.failed} of {result.evaluated} expectations failed on {scope}: {summary}"
        if result.failures
        else f"{result.evaluated} expectations passed on {scope}"
    )
    return dg.AssetCheckResult(
        passed=result.success, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata, description=description[:1000]
    )


PARTITION_COLUMN = "arrival_partition"


def _keyed(df: pl.DataFrame) -> pl.DataFrame:
    """Stored events with their arrival hour (the hour folder of their source file) as a column."""
    keys = {f: partition_key_of(f) or "" for f in df["source_file"].unique().to_list()}
    return df.with_columns(pl.col("source_file").replace_strict(keys, return_dtype=pl.String).alias(PARTITION_COLUMN))


def _by_partition(keyed: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """Split keyed events by arrival hour."""
    return {k: part.drop(PARTITION_COLUMN) for (k,), part in keyed.partition_by(PARTITION_COLUMN, as_dict=True).items()}


def _suite_over_hours(spec: dict[str, Any]) -> dict[str, Any]:
    """The raw_events suite for several arrival hours in one frame: the partition column is expected too,
    and what is unique within an hour (event_id) is unique per (partition, value)."""
    expectations = []
    for exp in spec["expectations"]:
        kwargs = exp["kwargs"]
        if exp["type"] == "expect_table_columns_to_match_set":
            exp = {**exp, "kwargs": {**kwargs, "column_set": [*kwargs["column_set"], PARTITION_COLUMN]}}
        elif exp["type"] == "expect_column_values_to_be_unique":
            column_list = [PARTITION_COLUMN, kwargs["column"]]
            exp = {**exp, "type": "expect_compound_columns_to_be_unique", "kwargs": {"column_list": column_list}}
        expectations.append(exp)
    return {**spec, "expectations": expectations}


def _validate_hours(parts: dict[str, pl.DataFrame]) -> dict[str, QualityResult]:
    """Validate arrival hours one by one; above MAX_PARTITIONS_VALIDATED, the latest plus a seeded sample."""
    keys = sorted(parts)
    if len(keys) > MAX_PARTITIONS_VALIDATED:
        rng = random.Random(0)
        keys = sorted([*rng.sample(keys[:-1], MAX_PARTITIONS_VALIDATED - 1), keys[-1]])
    return {key: validate_frame(parts[key], "raw_events") for key in keys}


@dg.asset_check(asset="raw_events", blocking=True, partitions_def=arrival_hours)
def raw_events_expectations(context: dg.AssetCheckExecutionContext, raw_events: pl.DataFrame) -> dg.AssetCheckResult:
    """GX suite expectations/raw_events.json on the run's arrival hours (blocking). A run over several
    hours is validated in one GX call over a seeded sample of all its rows, event_id unique per hour;
    only when that fails are hours validated one by one (the latest plus a seeded sample of
    MAX_PARTITIONS_VALIDATED when there are more) to name the partitions that fail."""
    keyed = _keyed(raw_events) if raw_events.height else None
    hours = sorted(keyed[PARTITION_COLUMN].unique().to_list()) if keyed is not None else []
    batch = validate_frame(keyed, _suite_over_hours(load_suite("raw_events"))) if len(hours) > 1 else None
    if batch is not None and batch.success:
        extra = {
            "partitions_in_run": len(hours),
            "partitions_validated": len(hours),
            "partitions_failed": dg.MetadataValue.json([]),
        }
        return quality_check_result(replace(batch, suite="raw_events"), {**extra, "validation": "one call, all hours"})
    parts = _by_partition(keyed) if keyed is not None else {context.partition_keys[-1]: raw_events}
    results = _validate_hours(parts)
    failures = [replace(f, kwargs={**f.kwargs, "partition": k}) for k, r in results.items() for f in r.failures]
    merged = QualityResult(
        suite="raw_events",
        success=all(r.success for r in results.values()),
        evaluated=sum(r.evaluated for r in results.values()),
        failed=len(failures),
        rows=raw_events.height,
        rows_validated=sum(r.rows_validated for r in results.values()),
        failures=failures,
    )
    extra = {
        "partitions_in_run": len(parts),
        "partitions_validated": len(results),
        "partitions_failed": dg.MetadataValue.json(sorted(k for k, r in results.items() if not r.success)),
    }
    return quality_check_result(merged, extra)


@dg.asset_check(
    asset="raw_events",
    blocking=True,
    partitions_def=arrival_hours,
    additional_ins={"quarantined_events": dg.AssetIn()},
)
def raw_events_reconciliation(
    context: dg.AssetCheckExecutionContext,
    landing: LandingZoneResource,
    raw_events: pl.DataFrame,
    quarantined_events: pl.DataFrame,
) -> dg.AssetCheckResult:
    """Re-counts the rows of every landed file of the run's arrival hours: landed rows must equal
    valid + quarantined + duplicates stored for that file. Files landed after the materialization
    (not ingested yet) warn; any other difference is an error."""
    zone = landing.zone()
    by_partition = zone.files_by_partition(context.partition_keys)
    files = [f for key in sorted(by_partition) for f in by_partition[key] if f.key.endswith(FILE_FORMATS)]
    rec = reconcile_files(zone, files, raw_events, quarantined_events)
    bad = rec.files.filter(~pl.col("status").is_in(["ok", "file_quarantined"]))
    only_new_files = bad.height > 0 and (bad["status"] == "not_ingested").all()
    metadata: dict[str, Any] = {**rec.totals, "reconciled": rec.ok}
    if bad.height:
        metadata["unreconciled_files"] = dg.MetadataValue.md(frame_preview_markdown(bad, rows=50))
    t = rec.totals
    return dg.AssetCheckResult(
        passed=rec.ok,
        severity=dg.AssetCheckSeverity.WARN if only_new_files else dg.AssetCheckSeverity.ERROR,
        metadata=metadata,
        description=f"rows_in {t['rows_in']} = valid {t['valid']} + quarantined {t['quarantined']} "
        f"+ duplicates {t['duplicates']}" + ("" if rec.ok else f"; {bad.height} file(s) do not reconcile"),
    )


@dg.asset_check(asset="interactions", **in_pool(HISTORY_POOL))
def interactions_expectations(interactions: pl.DataFrame) -> dg.AssetCheckResult:
    """GX suite expectations/interactions.json."""
    return quality_check_result(validate_frame(interactions, "interactions"))


@dg.asset_check(asset="user_features")
def user_features_expectations(user_features: pl.DataFrame) -> dg.AssetCheckResult:
    """GX suite expectations/user_features.json."""
    return quality_check_result(validate_frame(user_features, "user_features"))


@dg.asset_check(asset="item_features")
def item_features_expectations(item_features: pl.DataFrame) -> dg.AssetCheckResult:
    """GX suite expectations/item_features.json."""
    return quality_check_result(validate_frame(item_features, "item_features"))


@dg.asset_check(asset="recommendations", blocking=True)
def recommendations_expectations(recommendations: pl.DataFrame) -> dg.AssetCheckResult:
    """GX suite expectations/recommendations.json (blocking: a bad list is never deployed)."""
    return quality_check_result(validate_frame(recommendations, "recommendations"))


ALL_CHECKS = [
    raw_events_expectations,
    raw_events_reconciliation,
    interactions_expectations,
    user_features_expectations,
    item_features_expectations,
    recommendations_expectations,
]
