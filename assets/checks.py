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
from recsys_platform.landing import EVENTS_PREFIX, FILE_FORMATS, partition_key_of
from recsys_platform.quality import QualityResult, validate_frame
from recsys_platform.reconciliation import reconcile_files
from recsys_platform.reporting import frame_preview_markdown
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


def _by_partition(df: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """Split stored events by arrival hour (the hour folder of their source file)."""
    keys = {f: partition_key_of(f) or "" for f in df["source_file"].unique().to_list()}
    keyed = df.with_columns(_partition=pl.col("source_file").replace_strict(keys, return_dtype=pl.String))
    return {k: part.drop("_partition") for (k,), part in keyed.partition_by("_partition", as_dict=True).items()}


@dg.asset_check(asset="raw_events", blocking=True, partitions_def=arrival_hours)
def raw_events_expectations(context: dg.AssetCheckExecutionContext, raw_events: pl.DataFrame) -> dg.AssetCheckResult:
    """GX suite expectations/raw_events.json on each arrival hour of the run (blocking). event_id is
    unique within an hour, so hours are validated one by one; a run over more than
    MAX_PARTITIONS_VALIDATED hours validates the latest one plus a seeded sample of the others."""
    parts = _by_partition(raw_events) if raw_events.height else {context.partition_keys[-1]: raw_events}
    keys = sorted(parts)
    if len(keys) > MAX_PARTITIONS_VALIDATED:
        rng = random.Random(0)
        keys = sorted([*rng.sample(keys[:-1], MAX_PARTITIONS_VALIDATED - 1), keys[-1]])
    results = {key: validate_frame(parts[key], "raw_events") for key in keys}
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
    wanted = set(context.partition_keys)
    files = [
        f for f in zone.list_files(EVENTS_PREFIX) if f.key.endswith(FILE_FORMATS) and partition_key_of(f.key) in wanted
    ]
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


@dg.asset_check(asset="interactions")
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
