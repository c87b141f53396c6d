"""Run a job of the Definitions in-process for the CLI: progress, console log level, one clean error."""

from __future__ import annotations

import os
import signal
import socket
import threading
import uuid
from collections.abc import Callable

import dagster as dg

from sensors.stuck_runs import HOST_TAG, PID_TAG


def partition_range_tags(first: str, last: str) -> dict[str, str]:
    """Run tags that make one run cover a range of partitions, first to last (single-run backfill)."""
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


def console_log_config(log_level: str = "INFO") -> dict[str, object]:
    """Run config that sets the level of Dagster's console logger (its default is DEBUG)."""
    return {"loggers": {"console": {"config": {"log_level": log_level}}}}


def _interruptible() -> None:
    """Give SIGINT its default handler when the process started with it ignored (a background job of a
    non-interactive shell: `recsys quickstart &` in a script, a CI runner). Dagster maps SIGTERM to SIGINT's
    handler while it runs a job, so an ignored SIGINT made SIGTERM ignored too, in this process and in every
    subprocess it started: the `tail -F` of Dagster's compute-log capture then outlived its terminate(), a failed
    run's error became "TimeoutExpired: tail -F ... 30 seconds", and the CLI could no longer be stopped by a
    plain `kill`. A background job never receives the terminal's Ctrl-C, so nothing else changes. SIGTERM is
    given back its default too when it is ignored: an earlier in-process run of Dagster in this process (with
    SIGINT ignored at the time) leaves it ignored after the run."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def execute_job(
    job_name: str,
    tags: dict[str, str] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    log_level: str = "INFO",
    definitions: dg.Definitions | None = None,
) -> dg.ExecuteInProcessResult:
    """Run a job of `definitions` (default the root's `defs`) in-process on the instance at DAGSTER_HOME,
    logging to the console at `log_level` and reporting (steps done, steps) as it goes; JobRunFailed when a
    step fails."""
    if definitions is None:
        from orchestration import definitions as root  # read at call time: building it loads every asset

        definitions = root.defs
    job = definitions.resolve_job_def(job_name)
    instance = dg.DagsterInstance.get()
    _interruptible()
    run_id = str(uuid.uuid4())
    n_steps = len(job.graph.node_defs)
    outcome: dict[str, object] = {}

    # This process executes the run: its pid lets the orphaned-run sweeper fail the run if it is killed.
    own = {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}

    def target() -> None:
        try:
            outcome["result"] = job.execute_in_process(
                run_config=console_log_config(log_level), instance=instance, run_id=run_id, tags={**own, **(tags or {})}
            )
        except Exception as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.5)
        if on_progress and instance.has_run(run_id):
            on_progress(len(instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_SUCCESS)), n_steps)
    if "error" in outcome:
        failures = (
            instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE) if instance.has_run(run_id) else []
        )
        step = failures[0].step_key if failures else None
        raise JobRunFailed(job_name, run_id, step, outcome["error"]) from None  # type: ignore[arg-type]
    if on_progress:
        on_progress(n_steps, n_steps)
    return outcome["result"]  # type: ignore[return-value]
