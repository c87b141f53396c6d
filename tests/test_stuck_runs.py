"""A run whose process is killed (kill -9) is marked failed by the orphaned-run sweeper instead of staying
STARTED forever; a run whose process lives is left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg

from orchestration.definitions import defs
from recsys_platform.config import PROJECT_ROOT
from sensors.stuck_runs import GRACE_SECONDS, fail_orphaned_runs

SLOW_JOB = textwrap.dedent(
    """
    import time
    import dagster as dg
    from orchestration.runner import execute_job

    @dg.op
    def sleepy() -> None:
        time.sleep(300)

    @dg.job
    def slow() -> None:
        sleepy()

    execute_job("slow", definitions=dg.Definitions(jobs=[slow]))
    """
)


def test_a_killed_run_is_marked_failed_and_a_live_one_is_not(tmp_path: Path, monkeypatch) -> None:
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_JOB], env=env, cwd=PROJECT_ROOT, start_new_session=True)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    try:
        with dg.DagsterInstance.get() as instance:
            deadline = time.monotonic() + 90
            runs = []
            while time.monotonic() < deadline:
                runs = [r for r in instance.get_runs() if r.status == dg.DagsterRunStatus.STARTED]
                if runs:
                    break
                time.sleep(0.3)
            assert runs, "the slow run never started"
            later = time.time() + GRACE_SECONDS + 1
            assert fail_orphaned_runs(instance, now=later) == []  # its process is alive
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            assert instance.get_run_by_id(runs[0].run_id).status == dg.DagsterRunStatus.STARTED  # what Dagster leaves
            assert fail_orphaned_runs(instance, now=later) == [runs[0].run_id]
            run = instance.get_run_by_id(runs[0].run_id)
            assert run.status == dg.DagsterRunStatus.FAILURE
            [failure] = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
            assert f"pid {proc.pid}" in failure.message and "is gone" in failure.message
            assert fail_orphaned_runs(instance, now=later) == []  # done once
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_the_sweeper_is_in_the_definitions_and_on_by_default() -> None:
    assert defs.resolve_sensor_def("orphaned_run_sweeper").default_status == dg.DefaultSensorStatus.RUNNING
