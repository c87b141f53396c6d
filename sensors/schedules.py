"""Cadence: full retraining on a schedule (default every 2 days)."""

from typing import Any

import dagster as dg


def retrain_schedule_for(job: Any, cron: str = "0 3 */2 * *") -> dg.ScheduleDefinition:
    """Full training cycle on `cron` (UTC)."""
    return dg.ScheduleDefinition(
        name="retrain_every_2_days",
        job=job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Retrain the ranker and the popularity baseline, evaluate, gate and redeploy.",
    )


def retention_schedule_for(job: Any, cron: str = "30 4 * * *") -> dg.ScheduleDefinition:
    """Retention daily on `cron` (UTC), on by default: data past its retention is deleted without anyone
    having to remember to switch it on."""
    return dg.ScheduleDefinition(
        name="data_retention_daily",
        job=job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Delete what is past its retention (config/retention.yaml).",
    )


def served_log_schedule_for(job: Any) -> dg.ScheduleDefinition:
    """Each arrival hour of the served log, loaded 5 minutes after the hour ends, on by default."""
    return dg.build_schedule_from_partitioned_job(
        job,
        name="served_log_hourly",
        minute_of_hour=5,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Load the hour that just ended of the served log into the lake (served_log).",
    )
