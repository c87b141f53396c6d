"""The resources and the default executor the environment selects (the embedded default or the
production profile; see deploy/ENVIRONMENT.md)."""

from __future__ import annotations

from dataclasses import asdict

import dagster as dg
from dagster_aws.s3 import S3Resource

from recsys_platform.config import Settings
from recsys_platform.deploy_profile import executor_settings
from resources import (
    LakeIOManager,
    LandingZoneResource,
    MlflowResource,
    OnlineStoreResource,
    PipelineResource,
)
from resources.push import PushQueueResource
from resources.recommendation_sets import RecommendationSetsResource


def build_resources(settings: Settings) -> dict[str, object]:
    """Resources for a profile, all from settings (environment variables)."""
    s3 = S3Resource(endpoint_url=settings.s3_endpoint_url) if settings.s3_endpoint_url else S3Resource()
    return {
        "io_manager": LakeIOManager(base_url=settings.lake_url, s3_endpoint_url=settings.s3_endpoint_url),
        "landing": LandingZoneResource(url=settings.landing_url, s3=s3),
        "online_store": OnlineStoreResource(url=settings.online_store_url),
        "push_queue": PushQueueResource(url=settings.push_queue_url),
        "mlflow": MlflowResource(tracking_uri=settings.mlflow_tracking_uri, artifact_uri=settings.mlflow_artifact_uri),
        "pipeline": PipelineResource(
            lake_url=settings.lake_url, catalog_path=str(settings.catalog_path), **asdict(settings.params)
        ),
        "set_config": RecommendationSetsResource(
            config_path=str(settings.recommendation_sets_path), exports_dir=str(settings.exports_dir)
        ),
    }


def executor_from_env(settings: Settings | None = None) -> dg.ExecutorDefinition | None:
    """Default executor of every job from RECSYS_EXECUTOR (unset: Dagster's multiprocess default), as `settings`
    (default: the environment's) read it.

    Jobs that name their own executor (the near-real-time refresh runs in-process) keep it, and
    `execute_in_process` (CLI, tests) always runs in-process. See deploy/ENVIRONMENT.md."""
    choice = executor_settings((settings or Settings.from_env()).executor)
    if choice.kind == "in_process":
        return dg.in_process_executor
    if choice.kind == "multiprocess" or (choice.kind == "default" and choice.max_concurrent):
        return dg.multiprocess_executor.configured({"max_concurrent": choice.max_concurrent})
    if choice.kind == "celery":
        from dagster_celery import celery_executor

        return celery_executor.configured(choice.celery)
    if choice.kind == "k8s":
        from dagster_k8s import k8s_job_executor  # installed in the k8s image (deploy/k8s/)

        return k8s_job_executor
    return None
