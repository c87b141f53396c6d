"""The default executor: Dagster's multiprocess executor with each step forked from a server that has already
imported Dagster and the project (`orchestration.environment.multiprocess_executor`), checked on a real
multiprocess run whose steps use the libraries the cycle's steps use (polars' streaming engine, BLAS, LightGBM's
OpenMP threads), so a fork-unsafe preload would hang or fail here."""

import os
from pathlib import Path

import dagster as dg
import pytest

from assets.pools import HISTORY_POOL, in_pool
from orchestration.environment import FORKSERVER_PRELOAD, executor_from_env, multiprocess_executor


def _parent_command() -> str:
    return Path(f"/proc/{os.getppid()}/cmdline").read_bytes().replace(b"\0", b" ").decode()


@dg.op
def forked_work() -> dict:
    import sys

    import lightgbm as lgb
    import numpy as np
    import polars as pl

    preloaded = [m for m in FORKSERVER_PRELOAD if m in sys.modules]
    rng = np.random.default_rng(3)
    frame = pl.DataFrame({"u": rng.integers(0, 5_000, 200_000), "v": rng.random(200_000)})
    groups = frame.lazy().group_by("u").agg(pl.col("v").sum()).collect(engine="streaming").height
    x = rng.random((4_000, 8))
    booster = lgb.train(
        {"objective": "binary", "num_threads": 2, "verbose": -1}, lgb.Dataset(x, (x[:, 0] > 0.5).astype(int)), 10
    )
    square = rng.random((300, 300))
    return {
        "parent": _parent_command(),
        "preloaded": preloaded,
        "groups": groups,
        "trees": booster.num_trees(),
        "blas": float((square @ square.T).trace()),
    }


@dg.op
def second(first: dict) -> dict:
    return {**first, "second_parent": _parent_command()}


@dg.job(executor_def=multiprocess_executor(max_concurrent=2))
def forked_job():
    second(forked_work())


def rebuild_forked_job() -> dg.JobDefinition:
    """The job, for the step processes (this module is imported there as `tests.test_executor`)."""
    return forked_job


def test_the_default_executor_forks_each_step_from_a_preloaded_server(monkeypatch):
    for key in ("RECSYS_EXECUTOR", "RECSYS_MAX_CONCURRENT"):
        monkeypatch.delenv(key, raising=False)
    assert executor_from_env().name == "multiprocess"
    with dg.instance_for_test() as instance:
        with dg.execute_job(
            dg.build_reconstructable_job("tests.test_executor", "rebuild_forked_job"), instance=instance
        ) as result:
            assert result.success
            out = result.output_for_node("second")
    # both steps ran in processes forked by multiprocessing's forkserver, with the modules already imported
    assert "multiprocessing.forkserver" in out["parent"] and "multiprocessing.forkserver" in out["second_parent"]
    assert out["preloaded"] == list(FORKSERVER_PRELOAD)
    assert out["groups"] == 5_000 and out["trees"] == 10 and out["blas"] > 0


def _step(name: str, until_started: str | None) -> dg.AssetsDefinition:
    """A step that records when it ran (`<name>.ran`: start and end, epoch seconds) in its config's `dir`. It waits
    until step `until_started` has started (at most two minutes), or two seconds when None."""

    @dg.asset(name=name, config_schema={"dir": str}, **(in_pool(HISTORY_POOL) if until_started is None else {}))
    def step(context) -> None:
        import time

        here = Path(context.op_config["dir"])
        start = time.time()
        (here / f"{name}.started").touch()
        while time.time() < start + (120 if until_started else 2):
            if until_started and (here / f"{until_started}.started").exists():
                break
            time.sleep(0.05)
        (here / f"{name}.ran").write_text(f"{start} {time.time()}")

    return step


POOLED = dg.Definitions(
    assets=[
        _step("history_a", None),
        _step("history_b", None),
        _step("light_a", "light_b"),
        _step("light_b", "light_a"),
    ],
    jobs=[
        dg.define_asset_job("pooled", executor_def=multiprocess_executor(max_concurrent=4)),
        dg.define_asset_job("unlimited", executor_def=multiprocess_executor(max_concurrent=4, pool_limit=0)),
    ],
)


def rebuild_pooled_job() -> dg.JobDefinition:
    return POOLED.resolve_job_def("pooled")


def rebuild_unlimited_job() -> dg.JobDefinition:
    return POOLED.resolve_job_def("unlimited")


def _ran(tmp_path: Path, job: str) -> dict[str, list[float]]:
    """Run `job` of POOLED; each step's [start, end]."""
    steps = ("history_a", "history_b", "light_a", "light_b")
    config = {"ops": {op: {"config": {"dir": str(tmp_path)}} for op in steps}}
    with dg.instance_for_test() as instance:
        with dg.execute_job(
            dg.build_reconstructable_job("tests.test_executor", f"rebuild_{job}_job"),
            instance=instance,
            run_config=config,
        ) as result:
            assert result.success
    return {op: [float(t) for t in (tmp_path / f"{op}.ran").read_text().split()] for op in steps}


def _overlap(ran: dict[str, list[float]], a: str, b: str) -> bool:
    return ran[a][0] < ran[b][1] and ran[b][0] < ran[a][1]


def test_the_default_executor_runs_one_step_of_a_pool_at_a_time_and_other_steps_at_once(tmp_path):
    # The embedded instance limits no pool, so within a run the executor is what keeps two history-sized steps
    # apart (a UI-launched run at 1M users peaked at 12.8 GiB with two at once). Unpooled steps still run together.
    ran = _ran(tmp_path, "pooled")
    assert _overlap(ran, "light_a", "light_b")  # the run does run steps at once
    assert ran["light_a"][1] - ran["light_a"][0] < 60  # (each met the other, not the two-minute limit)
    assert not _overlap(ran, "history_a", "history_b")  # but never the two history steps
    assert min(e - s for s, e in (ran["history_a"], ran["history_b"])) >= 2.0


def test_a_pool_limit_of_zero_lets_pooled_steps_run_at_once(tmp_path, monkeypatch):
    ran = _ran(tmp_path, "unlimited")
    assert _overlap(ran, "history_a", "history_b") and _overlap(ran, "light_a", "light_b")
    # RECSYS_POOL_LIMIT reaches the default executor: unset 1, 0 for no limit, anything else refused
    from recsys_platform.deploy_profile import ProfileError, executor_settings_from_env

    monkeypatch.delenv("RECSYS_EXECUTOR", raising=False)
    monkeypatch.delenv("RECSYS_POOL_LIMIT", raising=False)
    assert executor_settings_from_env().pool_limit == 1
    monkeypatch.setenv("RECSYS_POOL_LIMIT", "0")
    assert executor_settings_from_env().pool_limit == 0
    monkeypatch.setenv("RECSYS_POOL_LIMIT", "2")
    assert executor_settings_from_env().pool_limit == 2
    for bad in ("-1", "one", "1.5"):
        monkeypatch.setenv("RECSYS_POOL_LIMIT", bad)
        with pytest.raises(ProfileError, match="RECSYS_POOL_LIMIT"):
            executor_settings_from_env()
