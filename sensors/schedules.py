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
