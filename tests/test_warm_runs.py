"""The warm run launcher (orchestration.run_launcher) under the Dagster daemon: runs that a sensor requests are
forked from the warm worker and are ordinary Dagster runs with their materializations; a run whose process dies
fails at once; a dead worker's runs, and those after the code changed on disk, go to the default launcher while a
new worker starts; other jobs are untouched; a worker that takes a run and never answers fails the launch instead
of hanging or starting the run twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.dagster_run import RunsFilter

from orchestration.run_launcher import (
    EARLIER_WARM_LAUNCHER_YAML,
    WARM_LAUNCHER_YAML,
    WORKER_TAG,
    WarmRunLauncher,
    WarmWorker,
    WorkerUnavailable,
)
from recsys_platform import cli
from recsys_platform.config import PROJECT_ROOT
from sensors.stuck_runs import PID_TAG

pytestmark = pytest.mark.timeout(240)

# A small code location: one asset, a job the launcher warms and one it does not, and a sensor that requests a run
# per `<name>.req` file (a `<name>.crash` file beside it makes that run's process exit in the middle of its step, a
# `<name>.slow` file makes its step take a minute).
LOCATION = textwrap.dedent(
    """
    import os
    import sys
    from pathlib import Path

    import dagster as dg

    REQUESTS = Path(os.environ["WARM_TEST_REQUESTS"])
    print("a code location that prints while it loads", end="")  # never into the worker's pipe to the launcher


    @dg.asset
    def greeting(context):
        name = context.run.tags["request"]
        if (REQUESTS / f"{name}.crash").exists():
            os._exit(3)
        if (REQUESTS / f"{name}.slow").exists():
            import time

            time.sleep(60)
        preloaded = "warm_preload_marker" in sys.modules  # what the launcher's preload_modules names
        context.add_output_metadata({"pid": os.getpid(), "parent": os.getppid(), "preloaded": preloaded})
        return name


    warm_job = dg.define_asset_job("warm_job", selection=[greeting], executor_def=dg.in_process_executor)
    cold_job = dg.define_asset_job("cold_job", selection=[greeting], executor_def=dg.in_process_executor)


    @dg.sensor(jobs=[warm_job, cold_job], minimum_interval_seconds=1, default_status=dg.DefaultSensorStatus.RUNNING)
    def requests(context):
        names = sorted(p.stem for p in REQUESTS.glob("*.req"))
        job = lambda name: "cold_job" if name.startswith("cold") else "warm_job"
        return [dg.RunRequest(run_key=n, job_name=job(n), tags={"request": n}) for n in names]


    defs = dg.Definitions(assets=[greeting], jobs=[warm_job, cold_job], sensors=[requests])
    """
)

INSTANCE = """\
telemetry:
  enabled: false
run_queue:
  dequeue_interval_seconds: 1
run_launcher:
  module: orchestration.run_launcher
  class: WarmRunLauncher
  config:
    jobs: [warm_job]
    preload_modules: [warm_preload_marker]
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """dagster-daemon on the small code location, with the warm launcher for warm_job."""
    root = tmp_path_factory.mktemp("warm")
    home, requests = root / "dagster", root / "requests"
    home.mkdir()
    requests.mkdir()
    (home / "dagster.yaml").write_text(INSTANCE)
    (root / "location.py").write_text(LOCATION)
    (root / "warm_preload_marker.py").write_text("")  # a module that only the worker's preload imports
    (root / "workspace.yaml").write_text(
        f"load_from:\n  - python_file:\n      relative_path: location.py\n      working_directory: {PROJECT_ROOT}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECSYS_", "DAGSTER_"))}
    env |= {
        "DAGSTER_HOME": str(home),
        "WARM_TEST_REQUESTS": str(requests),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), str(root), env.get("PYTHONPATH")])),
    }
    with dg.DagsterInstance.from_config(str(home)):
        pass  # create the storage first: processes that create a fresh SQLite instance at once race on its tables
    log = (root / "daemon.log").open("w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", str(root / "workspace.yaml")],
        env=env,
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield {"home": home, "requests": requests, "log": root / "daemon.log"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        log.close()


@pytest.fixture
def instance(daemon: dict, monkeypatch: pytest.MonkeyPatch) -> Iterator[dg.DagsterInstance]:
    monkeypatch.setenv("DAGSTER_HOME", str(daemon["home"]))
    with dg.DagsterInstance.get() as inst:
        yield inst


def _request(daemon: dict, instance: dg.DagsterInstance, name: str, timeout: float = 60) -> dg.DagsterRun:
    """Drop a request file and wait for its run to finish."""
    (daemon["requests"] / f"{name}.req").write_text("")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = instance.get_runs(RunsFilter(tags={"request": name}))
        if runs and runs[0].is_finished:
            return runs[0]
        time.sleep(0.2)
    raise AssertionError(f"run {name} did not finish in {timeout} s:\n{daemon['log'].read_text()[-3000:]}")


def _warm_run(daemon: dict, instance: dg.DagsterInstance, prefix: str) -> dg.DagsterRun:
    """Request runs until one is launched by the warm worker (the first ones wait for it to load)."""
    for i in range(8):
        run = _request(daemon, instance, f"{prefix}{i}")
        assert run.status == dg.DagsterRunStatus.SUCCESS, daemon["log"].read_text()[-3000:]
        if WORKER_TAG in run.tags:
            return run
        time.sleep(1.0)
    raise AssertionError(f"no run reached the warm worker:\n{daemon['log'].read_text()[-3000:]}")


def _materialization(instance: dg.DagsterInstance, run: dg.DagsterRun) -> dict:
    records = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    assert len(records) == 1
    materialization = records[0].event_log_entry.asset_materialization
    assert materialization is not None and materialization.asset_key == dg.AssetKey("greeting")
    return {k: v.value for k, v in materialization.metadata.items()}


@pytest.mark.slow
def test_runs_are_forked_from_the_warm_worker_and_are_dagster_runs(daemon: dict, instance) -> None:
    first = _request(daemon, instance, "first", timeout=150)  # the daemon and its code server start first
    assert first.status == dg.DagsterRunStatus.SUCCESS
    assert WORKER_TAG not in first.tags  # the worker starts with the first run, which the default launcher takes
    starting = [e.message for e in instance.all_logs(first.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)]
    assert any("No warm run worker is ready" in m for m in starting), starting
    warm = _warm_run(daemon, instance, "warm")
    meta = _materialization(instance, warm)
    # the run's process is a child of the worker, and the run carries both pids
    assert meta["parent"] == int(warm.tags[WORKER_TAG]) and meta["pid"] == int(warm.tags[PID_TAG])
    assert meta["preloaded"] is True and _materialization(instance, first)["preloaded"] is False
    events = [e.dagster_event.event_type for e in instance.all_logs(warm.run_id) if e.dagster_event]
    for expected in (
        dg.DagsterEventType.PIPELINE_STARTING,
        dg.DagsterEventType.PIPELINE_START,
        dg.DagsterEventType.STEP_SUCCESS,
        dg.DagsterEventType.PIPELINE_SUCCESS,
    ):
        assert expected in events
    started = [e.message for e in instance.all_logs(warm.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)]
    assert f"Started process for run (pid: {meta['pid']})." in started  # what the orphaned-run sweeper reads
    again = _request(daemon, instance, "again")  # the same worker serves the next run, from a new child
    assert again.tags[WORKER_TAG] == warm.tags[WORKER_TAG] and again.tags[PID_TAG] != warm.tags[PID_TAG]
    assert _materialization(instance, again)["parent"] == int(warm.tags[WORKER_TAG])


@pytest.mark.slow
def test_other_jobs_use_the_default_launcher(daemon: dict, instance) -> None:
    run = _request(daemon, instance, "cold-1")
    assert run.job_name == "cold_job" and run.status == dg.DagsterRunStatus.SUCCESS
    assert WORKER_TAG not in run.tags


@pytest.mark.slow
def test_a_run_whose_process_dies_fails_at_once(daemon: dict, instance) -> None:
    _warm_run(daemon, instance, "before-crash")
    (daemon["requests"] / "crash.crash").write_text("")
    started = time.monotonic()
    run = _request(daemon, instance, "crash", timeout=30)
    assert run.status == dg.DagsterRunStatus.FAILURE and WORKER_TAG in run.tags
    assert time.monotonic() - started < 15  # reported by the worker, not by the sweeper's 60-second grace
    failure = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.PIPELINE_FAILURE)
    assert "exited with code 3 before the run finished" in failure[-1].message


@pytest.mark.slow
def test_terminating_a_warm_run_interrupts_its_process(daemon: dict, instance) -> None:
    _warm_run(daemon, instance, "before-terminate")
    (daemon["requests"] / "long.slow").write_text("")
    (daemon["requests"] / "long.req").write_text("")
    deadline = time.monotonic() + 60
    runs = []
    while time.monotonic() < deadline:
        runs = instance.get_runs(RunsFilter(tags={"request": "long"}))
        if runs and runs[0].status == dg.DagsterRunStatus.STARTED:
            break
        time.sleep(0.2)
    assert runs and WORKER_TAG in runs[0].tags, daemon["log"].read_text()[-3000:]
    time.sleep(1.0)  # inside its step
    assert instance.run_launcher.terminate(runs[0].run_id)  # as the UI's Terminate does, from another process
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not instance.get_run_by_id(runs[0].run_id).is_finished:
        time.sleep(0.2)
    assert instance.get_run_by_id(runs[0].run_id).status == dg.DagsterRunStatus.CANCELED
    # the child marks its run CANCELED on its way out, so it may still be exiting (or not yet reaped by the
    # worker) at that moment: it must be gone within seconds
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(int(runs[0].tags[PID_TAG])):
        time.sleep(0.1)
    with pytest.raises(ProcessLookupError):
        os.kill(int(runs[0].tags[PID_TAG]), 0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_a_dead_worker_is_replaced_and_its_runs_go_to_the_default_launcher(daemon: dict, instance) -> None:
    before = _warm_run(daemon, instance, "before-kill")
    os.kill(int(before.tags[WORKER_TAG]), signal.SIGKILL)
    time.sleep(0.5)
    fallback = _request(daemon, instance, "after-kill")
    assert fallback.status == dg.DagsterRunStatus.SUCCESS and WORKER_TAG not in fallback.tags
    after = _warm_run(daemon, instance, "replaced")
    assert after.tags[WORKER_TAG] != before.tags[WORKER_TAG]


@pytest.mark.slow
def test_a_worker_whose_code_changed_on_disk_is_replaced(daemon: dict, instance) -> None:
    before = _warm_run(daemon, instance, "before-edit")
    location = daemon["requests"].parent / "location.py"
    location.write_text(location.read_text() + "\n# edited\n")  # what a new process would import now
    stale = _request(daemon, instance, "after-edit")
    assert stale.status == dg.DagsterRunStatus.SUCCESS and WORKER_TAG not in stale.tags
    events = [e.message for e in instance.all_logs(stale.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)]
    assert any("location.py changed since the worker loaded the code location" in m for m in events), events
    after = _warm_run(daemon, instance, "edited")
    assert after.tags[WORKER_TAG] != before.tags[WORKER_TAG]


def test_a_worker_that_takes_a_run_and_never_answers_fails_the_launch(tmp_path: Path) -> None:
    from dagster._core.code_pointer import ModuleCodePointer
    from dagster._core.errors import DagsterLaunchFailedError
    from dagster._core.launcher import LaunchRunContext
    from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin

    origin = RepositoryPythonOrigin(sys.executable, ModuleCodePointer("location", "defs", str(tmp_path)))
    # says it is ready, reads the run request, then hangs
    silent = [
        sys.executable,
        "-c",
        "import sys; sys.stdin.readline(); print('{\"ready\": 1}', flush=True); input(); input()",
    ]

    class SilentWorkerLauncher(WarmRunLauncher):
        def start_worker(self, origin: RepositoryPythonOrigin) -> WarmWorker:
            return WarmWorker(origin, [], command=silent)

    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        launcher = SilentWorkerLauncher(jobs=["warm_job"], ack_timeout_seconds=1.0)
        launcher.register_instance(instance)
        run = instance.add_run(
            dg.DagsterRun(job_name="warm_job", run_id="r1", job_code_origin=JobPythonOrigin("warm_job", origin))
        )
        assert launcher._ready_worker(origin) is None  # started, not ready yet
        deadline = time.monotonic() + 10
        while launcher._ready_worker(origin) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        worker = launcher._ready_worker(origin)
        assert worker is not None
        with pytest.raises(DagsterLaunchFailedError, match="did not answer"):
            launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
        assert not worker.alive()  # stopped, so it cannot start the run later
        with pytest.raises(WorkerUnavailable):  # nothing more can be sent to it: later runs fall back
            worker.submit("r2", "{}", 0.1)


def test_the_cli_selects_it_for_the_refresh_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster._daemon import sensor as sensor_daemon

    from orchestration.definitions import defs

    monkeypatch.setattr(sensor_daemon, "MIN_INTERVAL_LOOP_TIME", 5)  # Dagster's period, restored after the test

    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home" / "dagster"))
    cli._prepare_environment()
    cli._prepare_environment()  # idempotent: the block is added once
    assert (tmp_path / "home" / "dagster" / "dagster.yaml").read_text().count("run_launcher:") == 1
    with dg.DagsterInstance.get() as instance:
        launcher = instance.run_launcher
        assert type(launcher) is WarmRunLauncher
        assert launcher.jobs == {"refresh_realtime", "raw_events_contracts"}
        for name in launcher.jobs:
            assert defs.resolve_job_def(name).executor_def is dg.in_process_executor  # one process a run
        assert launcher.preload_modules == ("great_expectations", "implicit.cpu._als")
    assert sensor_daemon.MIN_INTERVAL_LOOP_TIME == 0.5  # building the launcher (in the daemon) sets its sensor loop


@pytest.mark.parametrize("earlier", EARLIER_WARM_LAUNCHER_YAML)
def test_a_home_with_an_earlier_block_of_the_cli_gets_the_current_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, earlier: str
) -> None:
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n" + earlier)
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    cli._prepare_environment()
    text = (home / "dagster.yaml").read_text()
    assert WARM_LAUNCHER_YAML in text and earlier not in text
    assert text.count("run_launcher:") == 1 and "raw_events_contracts" in text


def test_an_instance_that_configures_its_own_launcher_keeps_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "dagster"
    home.mkdir()
    own = "run_launcher:\n  module: dagster._core.launcher\n  class: DefaultRunLauncher\n"
    (home / "dagster.yaml").write_text(own)
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    cli._prepare_environment()
    assert "WarmRunLauncher" not in (home / "dagster.yaml").read_text()
