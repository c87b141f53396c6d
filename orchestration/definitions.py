"""The composition root: the single Definitions that `dagster dev`, the CLI and the tests load."""

from __future__ import annotations

import dagster as dg

from assets import features, ingestion, lifecycle, push, realtime, recommendation_sets, serving, training
from assets.checks import ALL_CHECKS
from assets.partitions import settings_at_load
from orchestration.environment import build_resources, executor_from_env
from orchestration.jobs import (
    JOBS,
    SHARD_KEYS,
    deploy_job,
    raw_events_contracts_job,
    recommendation_sets_job,
    refresh_realtime_job,
    retention_job,
    served_log_job,
    training_cycle_job,
)
from recsys_platform.config import Settings
from sensors.alerts import run_failure_alerts
from sensors.contracts import contracts_after_refresh_for
from sensors.landing import WAIT_SECONDS as LANDING_WAIT_SECONDS
from sensors.landing import landing_sensor_for
from sensors.recommendation_sets import batch_sets_schedule_for
from sensors.registry import champion_sensor_for
from sensors.schedules import retention_schedule_for, retrain_schedule_for, served_log_schedule_for
from sensors.stuck_runs import orphaned_run_sweeper

ASSETS = dg.load_assets_from_modules(
    [ingestion, features, training, serving, push, realtime, recommendation_sets, lifecycle]
)


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    """Build the Definitions for the given (default: environment) settings."""
    settings = settings or Settings.from_env()
    settings.ensure_local_dirs()
    return dg.Definitions(
        assets=ASSETS,
        asset_checks=ALL_CHECKS,
        jobs=JOBS,
        sensors=[
            landing_sensor_for(
                refresh_realtime_job, wait_seconds=LANDING_WAIT_SECONDS, running=settings.landing_sensor_running
            ),
            champion_sensor_for(deploy_job),
            run_failure_alerts,
            orphaned_run_sweeper,
            contracts_after_refresh_for(refresh_realtime_job, raw_events_contracts_job),
        ],
        schedules=[
            retrain_schedule_for(training_cycle_job),
            batch_sets_schedule_for(recommendation_sets_job, SHARD_KEYS),
            retention_schedule_for(retention_job),
            served_log_schedule_for(served_log_job),
        ],
        resources=build_resources(settings),
        executor=executor_from_env(settings),
    )


# The code location's Settings: the same read that fixed the partitions (assets/partitions.py).
defs = build_definitions(settings_at_load())
