"""The composition root: the single Definitions that `dagster dev`, the CLI and the tests load."""

from __future__ import annotations

from dataclasses import asdict

import dagster as dg
from dagster_aws.s3 import S3Resource

from assets import features, ingestion, serving, training
from recsys_platform.config import Settings
from resources import (
    LakeIOManager,
    LandingZoneResource,
    MlflowResource,
    OnlineStoreResource,
    PipelineResource,
)
from sensors.landing import landing_sensor_for
from sensors.registry import champion_sensor_for
from sensors.schedules import retrain_schedule_for

ALL_ASSETS = dg.load_assets_from_modules([ingestion, features, training, serving])

INGESTION_ASSETS = ("items", "users", "raw_events", "quarantined_events")

ingest_job = dg.define_asset_job(
    "ingest_events",
    selection=dg.AssetSelection.assets(*INGESTION_ASSETS),
    description="Ingest the catalog, the profiles and the event files of one or more arrival hours "
    "(what the landing sensor runs).",
)
training_cycle_job = dg.define_asset_job(
    "training_cycle",
    selection=dg.AssetSelection.all() - dg.AssetSelection.assets(*INGESTION_ASSETS),
    description="Features, training, evaluation and gate, batch recommendations, blue-green deploy, catalog.",
)
deploy_job = dg.define_asset_job(
    "deploy_champion",
    selection=dg.AssetSelection.assets("recommendations", "feature_store_snapshot", "analyst_catalog"),
    description="Re-score with the current champion and deploy it to the standby slot, then flip.",
)


def build_resources(settings: Settings) -> dict[str, object]:
    """Resources for a profile, all from settings (environment variables)."""
    s3 = S3Resource(endpoint_url=settings.s3_endpoint_url) if settings.s3_endpoint_url else S3Resource()
    return {
        "io_manager": LakeIOManager(base_url=settings.lake_url, s3_endpoint_url=settings.s3_endpoint_url),
        "landing": LandingZoneResource(url=settings.landing_url, s3=s3),
        "online_store": OnlineStoreResource(url=settings.online_store_url),
        "mlflow": MlflowResource(tracking_uri=settings.mlflow_tracking_uri, artifact_uri=settings.mlflow_artifact_uri),
        "pipeline": PipelineResource(
            lake_url=settings.lake_url, catalog_path=str(settings.catalog_path), **asdict(settings.params)
        ),
    }


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    """Build the Definitions for the given (default: environment) settings."""
    settings = settings or Settings.from_env()
    settings.ensure_local_dirs()
    return dg.Definitions(
        assets=ALL_ASSETS,
        jobs=[ingest_job, training_cycle_job, deploy_job],
        sensors=[landing_sensor_for(ingest_job), champion_sensor_for(deploy_job)],
        schedules=[retrain_schedule_for(training_cycle_job)],
        resources=build_resources(settings),
    )


defs = build_definitions()
