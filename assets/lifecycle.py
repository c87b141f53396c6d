"""Data lifecycle: retention per table (config/retention.yaml), run daily by `data_retention_daily`."""

from datetime import UTC, datetime

import dagster as dg

from assets import groups
from recsys_platform.lifecycle import apply_retention, load_retention
from resources import LandingZoneResource, PipelineResource
from resources.recommendation_sets import RecommendationSetsResource


@dg.asset(group_name=groups.LIFECYCLE, kinds={"parquet"})
def data_retention(
    context: dg.AssetExecutionContext,
    landing: LandingZoneResource,
    pipeline: PipelineResource,
    set_config: RecommendationSetsResource,
) -> dg.MaterializeResult:
    """Deletes what is past its retention (config/retention.yaml, days from the arrival hour): landed event files
    and raw-event, quarantine and session partitions, biometric rows sooner than the rest, old exports. What it
    removed, per table, is in the metadata."""
    days = load_retention()
    report = apply_retention(landing.zone(), pipeline.lake_url, set_config.exports, days, datetime.now(UTC))
    return dg.MaterializeResult(
        metadata={
            "retention_days": dg.MetadataValue.json(days),
            "cutoffs": dg.MetadataValue.json(report.cutoffs),
            "files_deleted": dg.MetadataValue.json(report.files_deleted),
            "rows_removed": dg.MetadataValue.json(report.rows_removed),
        }
    )
