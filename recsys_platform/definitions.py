"""The composition root: the single Definitions that `dagster dev`, the CLI and the tests load."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict

import dagster as dg
from dagster_aws.s3 import S3Resource

from assets import features, ingestion, realtime, serving, training
from assets import push as push_assets
from assets import recommendation_sets as recommendation_set_assets
from assets.checks import ALL_CHECKS as QUALITY_CHECKS
from recsys_platform.config import Settings
from recsys_platform.profiles import executor_settings_from_env
from resources import (
    LakeIOManager,
    LandingZoneResource,
    MlflowResource,
    OnlineStoreResource,
    PipelineResource,
)
from resources.push import PushQueueResource
from resources.recommendation_sets import RecommendationSetsResource
from sensors.landing import landing_sensor_for
from sensors.recommendation_sets import batch_sets_schedule_for
from sensors.registry import champion_sensor_for
from sensors.schedules import retrain_schedule_for

ALL_ASSETS = dg.load_assets_from_modules([ingestion, features, training, serving, push_assets, realtime])
SET_ASSETS = dg.load_assets_from_modules([recommendation_set_assets])

INGESTION_ASSETS = ("items", "users", "raw_events", "quarantined_events")

ingest_job = dg.define_asset_job(
    "ingest_events",
    selection=dg.AssetSelection.assets(*INGESTION_ASSETS),
    description="Ingest the catalog, the profiles and the event files of one or more arrival hours "
    "(what the landing sensor runs).",
)
training_cycle_job = dg.define_asset_job(
    "training_cycle",
    selection=dg.AssetSelection.all()
    - dg.AssetSelection.assets(*INGESTION_ASSETS)
    - dg.AssetSelection.assets(*realtime.REALTIME_ASSETS)
    - dg.AssetSelection.assets(*recommendation_set_assets.SHARDED_ASSETS),
    description="Features, training, evaluation and gate, batch recommendations, blue-green deploy, catalog.",
)
deploy_job = dg.define_asset_job(
    "deploy_champion",
    selection=dg.AssetSelection.assets("recommendations", "feature_store_snapshot", "analyst_catalog"),
    description="Re-score with the current champion and deploy it to the standby slot, then flip.",
)
push_job = dg.define_asset_job(
    "enqueue_pushes",
    selection=dg.AssetSelection.assets("push_notifications"),
    description="Enqueue push notifications for users who just completed a session or searched for sleep "
    "content at night (delivered by `recsys push-worker`).",
)

recommendation_sets_job = dg.define_asset_job(
    "recommendation_sets_batch",
    # the catalog is rebuilt too, so analysts get views over the sets as soon as the first shard lands
    selection=dg.AssetSelection.assets(*recommendation_set_assets.SHARDED_ASSETS, "analyst_catalog"),
    partitions_def=recommendation_set_assets.user_shards,
    description="Batch-score one user shard with the champion, apply the recommendation-set rules, export "
    "JSON lines, refresh the analyst catalog (on demand: launch or backfill shards; scheduled every 2 days).",
)


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


def executor_from_env() -> dg.ExecutorDefinition | None:
    """Default executor of every job from RECSYS_EXECUTOR (unset: Dagster's multiprocess default).

    Jobs that name their own executor (the near-real-time refresh runs in-process) keep it, and
    `execute_in_process` (CLI, tests) always runs in-process. See deploy/ENVIRONMENT.md."""
    choice = executor_settings_from_env()
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


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    """Build the Definitions for the given (default: environment) settings."""
    settings = settings or Settings.from_env()
    settings.ensure_local_dirs()
    return dg.Definitions(
        assets=[*ALL_ASSETS, *SET_ASSETS],
        asset_checks=QUALITY_CHECKS,
        jobs=[
            ingest_job,
            training_cycle_job,
            deploy_job,
            push_job,
            realtime.refresh_realtime_job,
            recommendation_sets_job,
        ],
        sensors=[landing_sensor_for(realtime.refresh_realtime_job), champion_sensor_for(deploy_job)],
        schedules=[
            retrain_schedule_for(training_cycle_job),
            batch_sets_schedule_for(recommendation_sets_job, recommendation_set_assets.SHARD_KEYS),
        ],
        resources=build_resources(settings),
        executor=executor_from_env(),
    )


defs = build_definitions()


def partition_range_tags(first: str, last: str) -> dict[str, str]:
    """Run tags that make one run cover a range of arrival-hour partitions (single-run backfill)."""
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    return {ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last}


class JobRunFailed(RuntimeError):
    """A run of `execute_job` failed: the job, the run id, the failed step and its error in the message.

    Raised without an exception chain: Dagster re-raises a step's error with the step-error wrapper as its
    context and the error as the wrapper's cause, a cycle on which rich's traceback (the CLI's) never ends.
    The original error is kept as `error`."""

    def __init__(self, job_name: str, run_id: str, step: str | None, error: BaseException) -> None:
        where = f" at step {step}" if step else ""
        super().__init__(
            f"run {run_id} of {job_name} failed{where}: {type(error).__name__}: {error} (logs: the Dagster UI)"
        )
        self.job_name, self.run_id, self.step, self.error = job_name, run_id, step, error


def console_log_config(log_level: str = "INFO") -> dict[str, object]:
    """Run config that sets the level of Dagster's console logger (its default is DEBUG)."""
    return {"loggers": {"console": {"config": {"log_level": log_level}}}}


def execute_job(
    job_name: str,
    tags: dict[str, str] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    log_level: str = "INFO",
    definitions: dg.Definitions | None = None,
) -> dg.ExecuteInProcessResult:
    """Run a job of `definitions` (default `defs`) in-process on the instance at DAGSTER_HOME, logging to
    the console at `log_level` and reporting (steps done, steps) as it goes; JobRunFailed when a step fails."""
    job = (definitions or defs).resolve_job_def(job_name)
    instance = dg.DagsterInstance.get()
    run_id = str(uuid.uuid4())
    n_steps = len(job.graph.node_defs)
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["result"] = job.execute_in_process(
                run_config=console_log_config(log_level), instance=instance, run_id=run_id, tags=tags or {}
            )
        except Exception as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.5)
        if on_progress and instance.has_run(run_id):
            on_progress(len(instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_SUCCESS)), n_steps)
    if "error" in outcome:
        failures = (
            instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE) if instance.has_run(run_id) else []
        )
        step = failures[0].step_key if failures else None
        raise JobRunFailed(job_name, run_id, step, outcome["error"]) from None  # type: ignore[arg-type]
    if on_progress:
        on_progress(n_steps, n_steps)
    return outcome["result"]  # type: ignore[return-value]
