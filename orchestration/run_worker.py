"""The warm run worker: a process that loads a code location once and forks one child per run.

`orchestration.run_launcher.WarmRunLauncher` starts it (in the process that launches runs: the Dagster daemon) and
talks to it over its stdin and stdout, one JSON object a line:

    launcher -> worker, first: {"origin": <serialized RepositoryPythonOrigin>, "jobs": [<job name>, ...],
                                "preload_modules": [<module>, ...]}
    worker -> launcher:        {"ready": <worker pid>}   once the code location and the jobs are loaded
    launcher -> worker:        {"run_id": ..., "instance_ref": <serialized InstanceRef>}
    worker -> launcher:        {"run_id": ..., "pid": <child pid>}   right after the fork (or "error": ...)

A worker whose code location's source files changed on disk since it loaded them forks nothing more: it answers
with an error, so the launcher starts the run in a new process (which imports the code as it is now, as the
default launcher's runs do) and replaces the worker.

Each child executes its run as `dagster api execute_run` does (`_execute_run_command_body`, the entry point of
Dagster's container run launchers), so the run writes the same events, logs, status and materializations as one
the default launcher starts; it only skips the new interpreter and the import of the code location (1.7 s of the
2.3 s median run start-up measured at 5147d40). The worker reaps its children: the run of a child that exited
before its run finished (killed, crashed) is reported failed at once. The worker exits when its stdin closes (the
launcher's process is gone); children in flight finish their runs.

Fork safety: before forking, the worker only imports modules and builds definitions. It runs no polars query
(its thread pool would not exist in the child), no OpenMP region and keeps no database connection open (the
instance it opens to report a dead child's run is closed before the next fork).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("recsys.run_worker")

REAP_SECONDS = 0.5  # how often dead children are looked for while no request arrives
# The pipe to the launcher, moved off fd 1 by main() so that what the code location prints goes to stderr.
_protocol = {"fd": 1}


def _send(message: dict[str, Any]) -> None:
    os.write(_protocol["fd"], (json.dumps(message) + "\n").encode())


def warm(origin_json: str, jobs: list[str], preload_modules: Sequence[str] = ()) -> None:
    """Load the code location of `origin_json`, build the definitions of `jobs` and import `preload_modules`.

    A refresh run's steps import 15 more modules lazily, all small (measured on a quickstart home), so they are
    not preloaded; the contracts' Great Expectations is large (the launcher's configuration names it). A module
    that fails to import is logged and left to the runs, which then fail or succeed as in a new process."""
    from dagster._core.origin import RepositoryPythonOrigin
    from dagster._serdes import deserialize_value
    from dagster._utils.hosted_user_process import recon_repository_from_origin

    origin = deserialize_value(origin_json, RepositoryPythonOrigin)
    repository = recon_repository_from_origin(origin).get_definition()
    for name in jobs:
        repository.get_job(name)  # asset jobs are resolved on first use: resolve them once, before any fork
    for module in preload_modules:
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 (a missing optional module must not keep the worker from starting)
            log.exception("warm run worker could not preload %s", module)


def loaded_sources() -> dict[str, int]:
    """Modification times of the source files of the loaded modules outside the interpreter's and the virtual
    environment's libraries: the code location's own code."""
    libraries = tuple({os.path.realpath(p) + os.sep for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)})
    sources = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not path or not path.endswith(".py") or os.path.realpath(path).startswith(libraries):
            continue
        try:
            sources[path] = os.stat(path).st_mtime_ns
        except OSError:
            continue
    return sources


def changed_source(sources: dict[str, int]) -> str | None:
    """The first of `sources` that changed or disappeared since they were recorded, if any."""
    for path, mtime in sources.items():
        try:
            if os.stat(path).st_mtime_ns != mtime:
                return path
        except OSError:
            return path
    return None


def execute_in_child(run_id: str, instance_ref_json: str) -> None:
    """Execute the run in this (forked) process as `dagster api execute_run` does, then exit; never returns."""
    code = 1
    try:
        # the protocol pipes belong to the worker: the launcher must see their EOF when the worker dies
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        if _protocol["fd"] == 1:
            os.dup2(2, 1)
        else:
            os.close(_protocol["fd"])
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from dagster._cli.api import _execute_run_command_body
        from dagster._core.instance import DagsterInstance, InstanceRef
        from dagster._serdes import deserialize_value
        from dagster._utils.interrupts import capture_interrupts

        ref = deserialize_value(instance_ref_json, InstanceRef)
        with capture_interrupts(), DagsterInstance.from_ref(ref) as instance:
            code = _execute_run_command_body(run_id, instance, lambda _event: None, set_exit_code_on_failure=True)
    except BaseException:  # noqa: BLE001 (a child must exit here, whatever happened)
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def fail_unfinished_run(run_id: str, instance_ref_json: str, reason: str) -> None:
    """Report the run failed with `reason` unless it already finished."""
    from dagster._core.instance import DagsterInstance, InstanceRef
    from dagster._serdes import deserialize_value

    with DagsterInstance.from_ref(deserialize_value(instance_ref_json, InstanceRef)) as instance:
        run = instance.get_run_by_id(run_id)
        if run is not None and not run.is_finished:
            instance.report_run_failed(run, reason)


def _exit_reason(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by signal {os.WTERMSIG(status)}"
    return f"exited with code {os.WEXITSTATUS(status)}"


def reap(children: dict[int, tuple[str, str]]) -> None:
    """Collect exited children; fail the run of each that exited with an error before its run finished."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            children.clear()
            return
        if pid == 0:
            return
        if pid not in children:
            continue
        run_id, ref = children.pop(pid)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            continue  # the run finished and succeeded (a failed run exits with 1)
        reason = (
            f"the warm run worker's process for this run (pid {pid}) {_exit_reason(status)} before the run finished"
        )
        try:
            fail_unfinished_run(run_id, ref, reason)
        except Exception:  # noqa: BLE001 (the worker outlives a storage error; the orphaned-run sweeper retries)
            log.exception("could not report run %s failed", run_id)


def serve() -> None:
    """Read the hello line, warm up, then fork a child per run request until stdin closes."""
    fd = sys.stdin.fileno()
    buffer = b""
    children: dict[int, tuple[str, str]] = {}
    sources: dict[str, int] | None = None  # the code location's files as loaded, once warm
    while True:
        readable, _, _ = select.select([fd], [], [], REAP_SECONDS)
        reap(children)
        if not readable:
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return  # the launcher's process is gone
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            message = json.loads(line)
            if sources is None:
                started = time.perf_counter()
                warm(message["origin"], message.get("jobs", []), message.get("preload_modules", []))
                sources = loaded_sources()
                log.info("warm run worker %s ready in %.2f s", os.getpid(), time.perf_counter() - started)
                _send({"ready": os.getpid()})
                continue
            run_id, ref = message["run_id"], message["instance_ref"]
            if (changed := changed_source(sources)) is not None:
                # A new process would run the code on disk: so must this run. The launcher starts a new worker.
                _send({"run_id": run_id, "error": f"{changed} changed since the worker loaded the code location"})
                continue
            try:
                pid = os.fork()
            except OSError as exc:
                _send({"run_id": run_id, "error": f"fork failed: {exc}"})
                continue
            if pid == 0:
                execute_in_child(run_id, ref)
            children[pid] = (run_id, ref)
            _send({"run_id": run_id, "pid": pid})


def main() -> None:
    """Entry point: `python -m orchestration.run_worker` (started by WarmRunLauncher)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in `dagster dev` reaches the group: the daemon decides
    _protocol["fd"] = os.dup(1)
    os.dup2(2, 1)  # a print() in the code location must not end up in the protocol
    try:
        serve()
    except Exception:
        log.exception("warm run worker failed")
        sys.exit(1)


if __name__ == "__main__":
    main()
