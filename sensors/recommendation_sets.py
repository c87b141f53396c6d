"""Cadence of the batch recommendation sets: every shard every 2 days (and on demand via the job)."""

from typing import Any

import dagster as dg


def batch_sets_schedule_for(job: Any, shard_keys: list[str], cron: str = "0 5 */2 * *") -> dg.ScheduleDefinition:
    """Request one run per user shard of `job` on `cron` (UTC); shards run in parallel."""

    @dg.schedule(
        name="recommendation_sets_every_2_days",
        job=job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Batch-score every eligible user with the champion, apply the set rules and export, "
        "one run per user shard.",
    )
    def recommendation_sets_every_2_days(context: dg.ScheduleEvaluationContext):
        stamp = context.scheduled_execution_time.strftime("%Y%m%dT%H%M")
        for key in shard_keys:
            yield dg.RunRequest(run_key=f"{stamp}-{key}", partition_key=key)

    return recommendation_sets_every_2_days
