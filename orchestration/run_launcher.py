"""A run launcher that starts the runs of small, frequent jobs in a warm worker instead of a new Python process.

Dagster's `DefaultRunLauncher` asks the code server to start each run, and the code server spawns a new
interpreter that imports the code location again: at 5147d40 that was 2.3 s of the near-real-time refresh's median
3.3 s (the import of `orchestration.definitions` alone takes 1.7 s in a fresh process). `WarmRunLauncher` hands the
runs of the jobs it is configured with to a worker process (`orchestration.run_worker`) that loaded the code
location once and forks a child per run; every other job, and any run the worker cannot take, goes to the default
launcher. A warm run is an ordinary Dagster run: the daemon dequeues it, the child executes it with Dagster's own
entry point, and its status, logs and materializations show in the UI as any run's do.

Failure handling:
- no worker yet, or one still loading the code location: the run goes to the default launcher (the first run after
  the daemon starts does; the worker starts with it);
- the worker died before it was sent the run, or could not fork, or the code location's files changed since it
  loaded them: this run goes to the default launcher and a new worker is started for the next ones;
- the worker took the run but did not answer within `ack_timeout_seconds`: the worker is stopped and the launch
  fails, so the daemon marks the run failed (Dagster's run retries re-execute it) rather than risk a second
  execution;
- a child that dies before its run finished has its run reported failed by the worker at once, and the run's
  `recsys/pid` tag lets the orphaned-run sweeper (sensors/stuck_runs.py) catch what the worker cannot (both gone);
- terminating a warm run interrupts its child (SIGINT, as Dagster's own run termination does).

Selected by the project's `dagster.yaml` (`recsys_platform.cli` writes it into the local DAGSTER_HOME):

    run_launcher:
      module: orchestration.run_launcher
      class: WarmRunLauncher
      config:
        jobs: [refresh_realtime]
        sensor_loop_seconds: 0.5   # the daemon's sensor loop: orchestration.sensor_loop
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from dagster import Array, Field, Noneable
from dagster._core.errors import DagsterLaunchFailedError
from dagster._core.launcher import DefaultRunLauncher, LaunchRunContext
from dagster._core.origin import RepositoryPythonOrigin
from dagster._serdes import ConfigurableClassData, serialize_value

from orchestration.sensor_loop import set_sensor_loop_seconds
from sensors.stuck_runs import HOST_TAG, PID_TAG

log = logging.getLogger("recsys.run_launcher")

WORKER_TAG = "recsys/warm_worker"  # the pid of the warm worker that forked the run's process
RESTART_BACKOFF_SECONDS = 30.0  # a worker that died while loading the code location is not restarted sooner


class WorkerUnavailable(RuntimeError):
    """The worker could not be sent the run (it is gone); nothing was started."""


class WorkerUnresponsive(RuntimeError):
    """The worker was sent the run and did not say whether it started it."""


class WarmWorker:
    """One `orchestration.run_worker` process for one code location, and the pipe to it."""

    def __init__(
        self,
        origin: RepositoryPythonOrigin,
        jobs: Sequence[str],
        command: Sequence[str] | None = None,
        preload_modules: Sequence[str] = (),
    ) -> None:
        cwd = getattr(origin.code_pointer, "working_directory", None) or os.getcwd()
        self.process = subprocess.Popen(
            list(command or [origin.executable_path, "-m", "orchestration.run_worker"]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=cwd,
        )
        self.started = time.monotonic()
        self.ready = False
        self._messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._send_lock = threading.Lock()
        threading.Thread(target=self._read, name=f"warm-worker-{self.process.pid}", daemon=True).start()
        self._write({"origin": serialize_value(origin), "jobs": list(jobs), "preload_modules": list(preload_modules)})

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                self._messages.put(json.loads(line))
            except ValueError:
                log.warning("warm worker %s wrote a line that is not JSON: %r", self.pid, line[:200])
        self._messages.put(None)  # EOF: the worker is gone

    def _write(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(message) + "\n").encode())
        self.process.stdin.flush()

    def alive(self) -> bool:
        return self.process.poll() is None

    def is_ready(self) -> bool:
        """Whether the worker has loaded the code location (takes in its `ready` message if it came)."""
        while not self.ready:
            try:
                message = self._messages.get_nowait()
            except queue.Empty:
                return False
            if message is None:
                return False
            self.ready = "ready" in message
        return self.alive()

    def submit(self, run_id: str, instance_ref: str, timeout: float) -> int:
        """Have the worker fork a process for the run; its pid. WorkerUnavailable when nothing was sent,
        WorkerUnresponsive when the run was sent and no answer came."""
        with self._send_lock:
            try:
                self._write({"run_id": run_id, "instance_ref": instance_ref})
            except (BrokenPipeError, OSError, ValueError) as exc:
                raise WorkerUnavailable(f"warm worker {self.pid} is gone: {exc}") from exc
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                try:
                    message = self._messages.get(timeout=left)
                except queue.Empty:
                    break
                if message is None:
                    raise WorkerUnresponsive(f"warm worker {self.pid} exited after it was sent run {run_id}")
                if message.get("run_id") != run_id:
                    continue
                if "error" in message:
                    raise WorkerUnavailable(f"warm worker {self.pid} could not start run {run_id}: {message['error']}")
                return int(message["pid"])
            raise WorkerUnresponsive(f"warm worker {self.pid} did not answer for run {run_id} within {timeout:.0f} s")

    def stop(self, timeout: float = 5.0) -> None:
        """Close the worker's stdin (it exits at EOF); kill it if it has not exited within `timeout`."""
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()
            self.process.wait(timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait(timeout=timeout)


class WarmRunLauncher(DefaultRunLauncher):
    """DefaultRunLauncher, except that runs of `jobs` are forked from a warm worker (see the module docstring)."""

    def __init__(
        self,
        jobs: Sequence[str] = (),
        ack_timeout_seconds: float = 10.0,
        sensor_loop_seconds: float | None = None,
        preload_modules: Sequence[str] = (),
        inst_data: ConfigurableClassData | None = None,
    ) -> None:
        super().__init__(inst_data=inst_data)
        if sensor_loop_seconds is not None:
            set_sensor_loop_seconds(sensor_loop_seconds)
        self.jobs = frozenset(jobs)
        self.preload_modules = tuple(preload_modules)
        self.ack_timeout_seconds = ack_timeout_seconds
        self._workers: dict[str, WarmWorker] = {}
        self._failed_start: dict[str, float] = {}
        self._lock = threading.Lock()

    @classmethod
    def config_type(cls) -> dict[str, Field]:
        return {
            "jobs": Field(Array(str), is_required=False, default_value=[], description="Jobs whose runs are warm."),
            "ack_timeout_seconds": Field(float, is_required=False, default_value=10.0),
            "sensor_loop_seconds": Field(
                Noneable(float),
                is_required=False,
                default_value=None,
                description="Period of the daemon's sensor loop (Dagster's is 5 s): orchestration.sensor_loop.",
            ),
            "preload_modules": Field(
                Array(str),
                is_required=False,
                default_value=[],
                description="Modules the worker imports before its first fork, beside the code location: what the "
                "warm jobs' steps import lazily and would otherwise import again in every run's process.",
            ),
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]) -> WarmRunLauncher:
        return cls(inst_data=inst_data, **config_value)

    def _ready_worker(self, origin: RepositoryPythonOrigin) -> WarmWorker | None:
        """The ready worker of `origin`, starting one if there is none (then None: it is still loading)."""
        key = serialize_value(origin)
        with self._lock:
            worker = self._workers.get(key)
            if worker is not None and not worker.alive():
                log.warning("warm worker %s exited (code %s)", worker.pid, worker.process.returncode)
                if not worker.ready:  # died while loading the code location: do not retry at every launch
                    self._failed_start[key] = time.monotonic()
                del self._workers[key]
                worker = None
            if worker is None:
                if time.monotonic() - self._failed_start.get(key, -RESTART_BACKOFF_SECONDS) < RESTART_BACKOFF_SECONDS:
                    return None
                try:
                    self._workers[key] = self.start_worker(origin)
                except OSError:
                    log.exception("could not start a warm run worker")
                    self._failed_start[key] = time.monotonic()
                return None
            return worker if worker.is_ready() else None

    def start_worker(self, origin: RepositoryPythonOrigin) -> WarmWorker:
        """A new worker process for the code location of `origin`."""
        return WarmWorker(origin, sorted(self.jobs), preload_modules=self.preload_modules)

    def _drop(self, worker: WarmWorker) -> None:
        with self._lock:
            for key, known in list(self._workers.items()):
                if known is worker:
                    del self._workers[key]
        worker.stop(timeout=1.0)

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        origin = run.job_code_origin
        if run.job_name not in self.jobs or origin is None:
            return super().launch_run(context)
        worker = self._ready_worker(origin.repository_origin)
        if worker is None:
            self._instance.report_engine_event(
                "No warm run worker is ready (one is loading the code location, or the last one failed to start): "
                "this run is launched by the default run launcher.",
                run,
            )
            return super().launch_run(context)
        try:
            pid = worker.submit(run.run_id, serialize_value(self._instance.get_ref()), self.ack_timeout_seconds)
        except WorkerUnavailable as exc:
            self._drop(worker)
            self._instance.report_engine_event(f"{exc}; this run is launched by the default run launcher.", run)
            return super().launch_run(context)
        except WorkerUnresponsive as exc:
            self._drop(worker)
            raise DagsterLaunchFailedError(f"{exc}; the run is failed rather than started twice") from exc
        self._instance.add_run_tags(
            run.run_id, {WORKER_TAG: str(worker.pid), PID_TAG: str(pid), HOST_TAG: socket.gethostname()}
        )
        self._run_ids.add(run.run_id)
        return None

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id) if self.has_instance else None
        if run is None or run.is_finished or WORKER_TAG not in run.tags:
            return super().terminate(run_id)
        if run.tags.get(HOST_TAG) != socket.gethostname():
            return False
        self._instance.report_run_canceling(run)
        try:
            os.kill(int(run.tags[PID_TAG]), signal.SIGINT)  # what Dagster's run termination sends its run process
        except ProcessLookupError:
            return False
        return True

    def dispose(self) -> None:
        with self._lock:
            workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            worker.stop()
        super().dispose()


# The dagster.yaml block that selects this launcher for the near-real-time refresh and the raw-events contracts that
# follow each refresh (the CLI adds it to the local instance; the jobs' names are checked against the definitions by
# tests/test_warm_runs.py). The contracts' steps import Great Expectations (about 5 s in a new process): the worker
# imports it once, before its first fork. implicit's compiled solver was preloaded for the iALS source's user step (84
# ms to import after the refresh's own modules); since 0eded55 that step is numpy (`model.sources.Factors`) and a
# refresh no longer imports implicit. It stays in the block, so that instances which have it keep a block the CLI
# recognises as its own; it costs the worker that import once.
WARM_LAUNCHER_YAML = """\
run_launcher:
  module: orchestration.run_launcher
  class: WarmRunLauncher
  config:
    jobs: [refresh_realtime, raw_events_contracts]
    preload_modules: [great_expectations, implicit.cpu._als]
    sensor_loop_seconds: 0.5
"""

# Earlier versions of the block above, which the CLI replaces with it where an instance still has one verbatim (an
# instance's own launcher settings are never touched).
EARLIER_WARM_LAUNCHER_YAML = (
    """\
run_launcher:
  module: orchestration.run_launcher
  class: WarmRunLauncher
  config:
    jobs: [refresh_realtime]
    sensor_loop_seconds: 0.5
""",
    """\
run_launcher:
  module: orchestration.run_launcher
  class: WarmRunLauncher
  config:
    jobs: [refresh_realtime, raw_events_contracts]
    preload_modules: [great_expectations]
    sensor_loop_seconds: 0.5
""",
)
