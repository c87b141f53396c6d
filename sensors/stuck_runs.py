"""Runs whose process is gone are marked failed: the gap Dagster's run monitoring leaves on a single host.

Dagster's run monitoring (enabled in deploy/dagster.yaml and the Helm values) fails a run whose worker died only
when the run launcher can check the worker (Kubernetes can; DefaultRunLauncher, the local and systemd launcher,
cannot), so a `kill -9` of a run worker, or of a `recsys train` running a job in its own process, left the run
STARTED forever. This sensor finds, for each STARTED run, the process that executes it: the pid in the engine
event Dagster writes when a launched run's process starts, or the `recsys/pid` tag the CLI's runner sets. When
that process was on this host and no longer exists, the run is reported failed, with the reason, and the
run_failure_alerts sensor reports it like any failure.
"""

import os
import socket
import time

import dagster as dg

PID_TAG = "recsys/pid"
HOST_TAG = "recsys/host"
GRACE_SECONDS = 60.0


def run_worker_pid(instance: dg.DagsterInstance, run: dg.DagsterRun) -> int | None:
    """The pid of the process executing `run` on this host, if known."""
    if run.tags.get(PID_TAG):
        return int(run.tags[PID_TAG]) if run.tags.get(HOST_TAG) == socket.gethostname() else None
    for record in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        event = record.dagster_event
        data = event.event_specific_data if event is not None else None
        pid = getattr(data, "metadata", {}).get("pid") if data is not None else None
        if pid is not None and "Started process for run" in (record.message or ""):
            return int(pid.value)
    return None


def process_exists(pid: int) -> bool:
    """Whether a process with `pid` exists on this host (signal 0: nothing is sent)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def fail_orphaned_runs(instance: dg.DagsterInstance, now: float | None = None) -> list[str]:
    """Report failed every STARTED run (older than GRACE_SECONDS) whose process on this host is gone."""
    from dagster._core.storage.dagster_run import RunsFilter

    now = now or time.time()
    failed = []
    for record in instance.get_run_records(RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        if record.start_time is None or now - record.start_time < GRACE_SECONDS:
            continue
        run = record.dagster_run
        pid = run_worker_pid(instance, run)
        if pid is None or process_exists(pid):
            continue
        instance.report_run_failed(run, f"the process executing this run (pid {pid}) is gone (killed?)")
        failed.append(run.run_id)
    return failed


@dg.sensor(
    name="orphaned_run_sweeper",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Marks failed each STARTED run whose process on this host is gone (kill -9, OOM kill), which "
    "Dagster's run monitoring cannot see with the local run launcher; run_failure_alerts then reports it.",
)
def orphaned_run_sweeper(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    failed = fail_orphaned_runs(context.instance)
    return dg.SkipReason(f"marked failed: {failed}" if failed else "no orphaned run")
