"""Contracts on the near-real-time path: after each successful refresh run, the raw-events checks of its hour."""

from typing import Any

import dagster as dg

from recsys_platform.realtime import PARTITION_TAG


def contracts_after_refresh_for(refresh_job: Any, contracts_job: Any) -> dg.RunStatusSensorDefinition:
    """A sensor that requests `contracts_job` for the arrival hour of every successful `refresh_job` run."""

    @dg.run_status_sensor(
        name="raw_events_contracts_after_refresh",
        run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=[refresh_job],
        request_job=contracts_job,
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=5,
        description="Runs the raw-events contracts (GX suite, reconciliation) of the hour each refresh_realtime "
        "run ingested, in their own run so they cost the refresh no latency; a failure alerts through "
        "run_failure_alerts.",
    )
    def raw_events_contracts_after_refresh(context: dg.RunStatusSensorContext):
        run = context.dagster_run
        partition = run.tags.get(PARTITION_TAG) or run.tags.get("dagster/partition")
        if not partition:
            return dg.SkipReason(f"run {run.run_id} names no arrival hour")
        # The hour as the run's partition tag, not `partition_key`: a checks-only job has no asset to resolve
        # a partitions definition from, and the checks read the hour's partition of raw_events from the tag.
        return dg.RunRequest(
            run_key=f"contracts-{run.run_id}",
            tags={"dagster/partition": partition, PARTITION_TAG: partition, "recsys/after_run": run.run_id},
        )

    return raw_events_contracts_after_refresh
