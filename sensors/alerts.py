"""Run-failure alerts: every failed run of this code location goes to the operators' notifier
(`recsys_platform.alerts`: RECSYS_ALERT_URL = Slack webhook, email or a file; unset, an ERROR log line)."""

import dagster as dg

from recsys_platform.alerts import Alert, notify


def alert_for(run: dg.DagsterRun, failure: dg.DagsterEvent | None, instance: dg.DagsterInstance | None = None) -> Alert:
    """The alert for a failed run: the job, the first failed step and its error's first line (else the run's
    failure message)."""
    message = (failure.message if failure is not None else None) or "the run failed"
    facts = {"run_id": run.run_id, "job": run.job_name}
    step_failures = (
        instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE) if instance is not None else []
    )
    for record in step_failures[:1]:
        event = record.dagster_event
        error = getattr(event.event_specific_data, "error", None) if event is not None else None
        facts["step"] = event.step_key if event is not None else None
        while error is not None and error.cause is not None:  # Dagster wraps the user's error: report the cause
            error = error.cause
        if error is not None:
            message = f"{facts['step']}: {error.message.strip().splitlines()[0]}"  # "ValueError: ..." already
    partition = run.tags.get("dagster/partition")
    if partition:
        facts["partition"] = partition
    return Alert(title=f"Dagster run of {run.job_name} failed", text=message.strip().splitlines()[0], facts=facts)


@dg.run_failure_sensor(
    name="run_failure_alerts",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Sends each failed run (job, step, error, run id) to RECSYS_ALERT_URL: a Slack webhook, "
    "smtp:// email or a file:// JSON-lines log; without it, an ERROR log line in the daemon.",
)
def run_failure_alerts(context: dg.RunFailureSensorContext) -> None:
    alert = alert_for(context.dagster_run, context.failure_event, context.instance)
    if not notify(alert):
        context.log.warning("alert for run %s was not delivered (see the daemon log)", context.dagster_run.run_id)
