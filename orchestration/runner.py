"""Run a job of the Definitions for the CLI: progress, console log level, one clean error.

Jobs run in-process, except the training cycle, which runs on the job's own executor (the multiprocess one
by default) so that steps that do not depend on each other (the holdout evaluations beside the ranker's
training) use every core, as they do when the daemon or the UI launches the job."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import dagster as dg


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


def training_cycle_job() -> dg.JobDefinition:
    """The training_cycle job of the root Definitions, as a function each step's process can reconstruct."""
    from orchestration.definitions import defs

    return defs.resolve_job_def("training_cycle")


# Jobs run on their executor (subprocesses need a reconstructable job); the rest run in-process.
ON_EXECUTOR: dict[str, Callable[[], dg.JobDefinition]] = {"training_cycle": training_cycle_job}
CLI_RUN_TAG = "recsys/cli_run"


def console_log_config(log_level: str = "INFO") -> dict[str, object]:
    """Run config that sets the level of Dagster's console logger (its default is DEBUG)."""
    return {"loggers": {"console": {"config": {"log_level": log_level}}}}


def execute_job(
    job_name: str,
    tags: dict[str, str] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    log_level: str = "INFO",
    definitions: dg.Definitions | None = None,
) -> dg.ExecuteInProcessResult | None:
    """Run a job of `definitions` (default the root's `defs`) on the instance at DAGSTER_HOME, logging to the
    console at `log_level` and reporting (steps done, steps) as it goes; JobRunFailed when a step fails.
    In-process (the result is returned), except the root's jobs in `ON_EXECUTOR`, which run on their executor
    and return None."""
    on_executor = definitions is None and job_name in ON_EXECUTOR
    if definitions is None:
        from orchestration import definitions as root  # read at call time: building it loads every asset

        definitions = root.defs
    job = definitions.resolve_job_def(job_name)
    instance = dg.DagsterInstance.get()
    n_steps = len(job.graph.node_defs)
    marker = str(uuid.uuid4())
    tags = {**(tags or {}), CLI_RUN_TAG: marker}
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            if on_executor:
                with dg.execute_job(
                    dg.reconstructable(ON_EXECUTOR[job_name]),
                    instance=instance,
                    run_config=console_log_config(log_level),
                    tags=tags,
                    raise_on_error=False,
                ) as result:
                    outcome["result"] = None  # outputs live in the run's step processes; nothing to hand back
                    if not result.success:
                        outcome["error"] = RuntimeError(_failure_message(instance, result.run_id))
            else:
                outcome["result"] = job.execute_in_process(
                    run_config=console_log_config(log_level), instance=instance, run_id=marker, tags=tags
                )
        except Exception as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    run_id = marker if not on_executor else None
    while worker.is_alive():
        worker.join(0.5)
        if run_id is None:
            runs = instance.get_run_records(dg.RunsFilter(tags={CLI_RUN_TAG: marker}), limit=1)
            run_id = runs[0].dagster_run.run_id if runs else None
        if on_progress and run_id and instance.has_run(run_id):
            on_progress(len(instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_SUCCESS)), n_steps)
    if "error" in outcome:
        failures = (
            instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
            if run_id and instance.has_run(run_id)
            else []
        )
        step = failures[0].step_key if failures else None
        raise JobRunFailed(job_name, run_id or marker, step, outcome["error"]) from None  # type: ignore[arg-type]
    if on_progress:
        on_progress(n_steps, n_steps)
    return outcome["result"]  # type: ignore[return-value]


def _failure_message(instance: dg.DagsterInstance, run_id: str) -> str:
    """The first failed step's error message of a run (its event log), or a pointer to the logs."""
    for event in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        data = event.dagster_event.step_failure_data if event.dagster_event else None
        if data and data.error:
            return f"{data.error.cls_name}: {data.error.message.strip()}"
    return "the run failed before any step did"
