"""The deployment profile: which backend serves each concern and which executor runs the jobs.

Everything comes from environment variables (see deploy/ENVIRONMENT.md) that `Settings` reads; nothing here
imports Dagster. `orchestration/environment.py` turns `ExecutorSettings` into a Dagster
executor, the Celery workers read `celery_app_settings()` through `deploy/dagster_celery_config.py`,
and the lake IO manager and the analyst catalog take their S3 options from here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from recsys_platform.config import (
    CELERY_KEY_PREFIX_ENV,
    EXECUTOR_ENV,
    MAX_CONCURRENT_ENV,
    POOL_LIMIT_ENV,
    ExecutorEnv,
    Settings,
)

EXECUTORS = ("default", "multiprocess", "in_process", "celery", "k8s")
DEFAULT_CELERY_BROKER = "pyamqp://guest:guest@127.0.0.1:5672//"
DEFAULT_CELERY_BACKEND = "rpc://"
CELERY_QUEUE = "dagster"  # dagster-celery's default queue: steps are routed to it, workers listen on it


class ProfileError(ValueError):
    """A profile setting (environment variable) has a value the platform cannot use."""


@dataclass(frozen=True)
class ExecutorSettings:
    """The executor every job uses unless it names its own (the near-real-time job runs in-process)."""

    kind: str = "default"
    max_concurrent: int | None = None
    celery: dict[str, Any] = field(default_factory=dict)
    # Steps of each pool at once within a multiprocess run (`orchestration.environment.multiprocess_executor`);
    # 0: no limit.
    pool_limit: int = 1


def celery_app_settings(env: ExecutorEnv) -> dict[str, Any]:
    """Broker, result backend and Celery settings shared by the executor and its workers."""
    broker = env.celery_broker_url or DEFAULT_CELERY_BROKER
    backend = env.celery_backend_url or DEFAULT_CELERY_BACKEND
    # Same retry settings dagster-celery ships with; the key prefix lets several deployments
    # (or test runs) share one Redis broker without taking each other's tasks.
    transport: dict[str, Any] = {"max_retries": 3, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}
    source: dict[str, Any] = {
        "worker_prefetch_multiplier": 1,
        "task_default_priority": 5,
        # One queue per deployment lets several share a broker (RabbitMQ vhost or Redis db) without
        # taking each other's steps; the workers must be started with `-Q` on the same name.
        "task_default_queue": env.celery_queue or CELERY_QUEUE,
        "broker_transport_options": transport,
    }
    prefix = env.celery_key_prefix
    if prefix:
        if not broker.startswith(("redis://", "rediss://")):
            raise ProfileError(f"{CELERY_KEY_PREFIX_ENV} needs a Redis broker, got {broker!r}")
        transport["global_keyprefix"] = prefix
        if backend.startswith(("redis://", "rediss://")):
            source["result_backend_transport_options"] = {"global_keyprefix": prefix}
    return {"broker": broker, "backend": backend, "config_source": source}


def executor_settings(env: ExecutorEnv) -> ExecutorSettings:
    """The executor RECSYS_EXECUTOR (default|multiprocess|in_process|celery|k8s) names, with its options."""
    kind = (env.kind or "default").lower().replace("-", "_")
    if kind not in EXECUTORS:
        raise ProfileError(f"{EXECUTOR_ENV}={kind!r} is not one of {', '.join(EXECUTORS)}")
    max_concurrent = _integer(MAX_CONCURRENT_ENV, env.max_concurrent, minimum=1)
    pool_limit = _integer(POOL_LIMIT_ENV, env.pool_limit, minimum=0, default=ExecutorSettings.pool_limit)
    celery = celery_app_settings(env) if kind == "celery" else {}
    return ExecutorSettings(kind, max_concurrent, celery, pool_limit)


def _integer(name: str, raw: str, minimum: int, default: int | None = None) -> int | None:
    """The integer environment variable `name` as written (`raw`), `default` when unset; ProfileError below
    `minimum`."""
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ProfileError(f"{name}={raw!r} is not an integer") from exc
    if value < minimum:
        raise ProfileError(f"{name} must be >= {minimum}, got {value}")
    return value


def executor_settings_from_env() -> ExecutorSettings:
    """`executor_settings` of the environment's `Settings`."""
    return executor_settings(Settings.from_env().executor)


def is_s3(url: str) -> bool:
    """Whether a landing/lake URL points at S3 (or an S3-compatible server)."""
    return url.startswith(("s3://", "s3a://"))


def fsspec_s3_options(endpoint_url: str | None) -> dict[str, Any]:
    """s3fs/UPath options for the lake (credentials come from the usual AWS variables or roles)."""
    # No listings cache: long-lived workers must see files other processes wrote since their last listing.
    opts: dict[str, Any] = {"use_listings_cache": False}
    if endpoint_url:
        opts["endpoint_url"] = endpoint_url
    return opts


def polars_s3_options(endpoint_url: str | None) -> dict[str, str]:
    """polars (object_store) storage options for reading Parquet from the lake on S3."""
    opts: dict[str, str] = {}
    if endpoint_url:
        opts["aws_endpoint_url"] = endpoint_url
        if endpoint_url.startswith("http://"):
            opts["aws_allow_http"] = "true"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        opts["aws_region"] = region
    return opts


def _backend_of(url: str) -> str:
    if is_s3(url):
        return "s3"
    scheme = url.split("://", 1)[0] if "://" in url else "local"
    return {"postgresql": "postgresql", "postgres": "postgresql", "rediss": "redis", "file": "local"}.get(
        scheme.split("+", 1)[0], scheme
    )


def describe_profile(settings: Settings) -> dict[str, str]:
    """Which backend serves each concern (for logs, run metadata and the benchmark report)."""
    instance_yaml = settings.dagster_home / "dagster.yaml"
    instance = "sqlite"
    if instance_yaml.exists() and "postgres" in instance_yaml.read_text():
        instance = "postgresql"
    return {
        "dagster_instance": instance,
        "landing": _backend_of(settings.landing_url),
        "lake": _backend_of(settings.lake_url),
        "online_store": _backend_of(settings.online_store_url),
        "push_queue": _backend_of(settings.push_queue_url),
        "mlflow_tracking": _backend_of(settings.mlflow_tracking_uri),
        "mlflow_artifacts": _backend_of(settings.mlflow_artifact_uri),
        "executor": executor_settings(settings.executor).kind,
    }


def s3_filesystem(endpoint_url: str | None) -> Any:
    """An s3fs filesystem for the lake (DuckDB reads s3:// through it when httpfs is not available)."""
    import s3fs

    return s3fs.S3FileSystem(**fsspec_s3_options(endpoint_url))
