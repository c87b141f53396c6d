"""The resources and the default executor the environment selects (the embedded default or the
production profile; see deploy/ENVIRONMENT.md)."""

from __future__ import annotations

from dataclasses import asdict

import dagster as dg
from dagster_aws.s3 import S3Resource

from assets.pools import POOL_TAG
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


# What the multiprocess executor's forkserver imports once per run; each step's process is then forked from it with
# these already loaded, instead of a new interpreter importing Dagster, the definitions and the model code (about 5 s
# per step on 2 cores, ~30 steps in a training_cycle). Each step still runs in its own process, so its memory is
# returned when it ends. Importing these starts a few library threads (OpenBLAS's pool, polars' allocator and spill
# cleaner) that hold no lock while the server waits; the pools that do a step's work start in the forked process.
# tests/test_executor.py runs polars' streaming engine, BLAS and LightGBM's OpenMP threads in forked steps.
FORKSERVER_PRELOAD: tuple[str, ...] = (
    "dagster",
    "orchestration.definitions",
    "recsys_platform.model.procedure",
    "recsys_platform.model.registry",
)


def multiprocess_executor(max_concurrent: int | None = None, pool_limit: int = 1) -> dg.ExecutorDefinition:
    """Dagster's multiprocess executor, each step forked from a server that preloaded FORKSERVER_PRELOAD, at most
    `pool_limit` steps of each pool at a time (0: no limit).

    The limit is the production instance's pool limit within a run: the embedded instance limits no pool, and a run
    launched from the UI runs a step per core, so at 1M users two history steps overlapped (interactions beside
    session_signals) and the run peaked at 12.8 GiB (10.3 GiB with the limit). At 10k users the limit makes that run
    slower (173 s against 135 s: `holdouts` no longer runs beside the ranker's steps), hence RECSYS_POOL_LIMIT."""
    start = {"forkserver": {"preload_modules": list(FORKSERVER_PRELOAD)}}
    config: dict = {"max_concurrent": max_concurrent, "start_method": start}
    if pool_limit:
        config["tag_concurrency_limits"] = [
            {"key": POOL_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": pool_limit}
        ]
    return dg.multiprocess_executor.configured(config)


def executor_from_env(settings: Settings | None = None) -> dg.ExecutorDefinition:
    """Default executor of every job from RECSYS_EXECUTOR (unset: Dagster's multiprocess executor, each step forked
    from a preloaded server: `multiprocess_executor`), as `settings` (default: the environment's) read it.

    Jobs that name their own executor (the near-real-time refresh and its contracts run in-process) keep it, and
    `execute_in_process` (CLI, tests) always runs in-process. See deploy/ENVIRONMENT.md."""
    choice = executor_settings((settings or Settings.from_env()).executor)
    if choice.kind == "in_process":
        return dg.in_process_executor
    if choice.kind in ("multiprocess", "default"):
        return multiprocess_executor(choice.max_concurrent, choice.pool_limit)
    if choice.kind == "celery":
        from dagster_celery import celery_executor

        return celery_executor.configured(choice.celery)
    if choice.kind == "k8s":
        from dagster_k8s import k8s_job_executor  # installed in the k8s image (deploy/k8s/)

        return k8s_job_executor
    raise AssertionError(f"unhandled executor {choice.kind!r}")  # executor_settings accepts only the kinds above
