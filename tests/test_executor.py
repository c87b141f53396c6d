"""The default executor: Dagster's multiprocess executor with each step forked from a server that has already
imported Dagster and the project (`orchestration.environment.multiprocess_executor`), checked on a real
multiprocess run whose steps use the libraries the cycle's steps use (polars' streaming engine, BLAS, LightGBM's
OpenMP threads), so a fork-unsafe preload would hang or fail here."""

import os
from pathlib import Path

import dagster as dg

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
