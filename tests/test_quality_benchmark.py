"""The real-data quality benchmark through the product: how it runs the product (its environment and
commands), and a CI-sized run on ml-100k that asks whether what the product serves beats popularity."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from recsys_platform.config import PROJECT_ROOT
from recsys_platform.quality_benchmark.baselines import EASE_L2_GRID
from recsys_platform.quality_benchmark.holdout import TableColumns, per_user_temporal, read_interactions, sample_users
from recsys_platform.quality_benchmark.run import (
    SERVED,
    SERVED_AS_SHOWN,
    QualityConfig,
    format_tables,
    import_arguments,
    product_environment,
    run_quality_benchmark,
)

CI_USERS = 250


def test_the_product_runs_on_its_own_home_with_this_code_and_no_inherited_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_LAKE_URL", "s3://someone-elses-lake")
    monkeypatch.setenv("RECSYS_LABEL_DAYS", "30")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("PYTHONPATH", "/opt/extra")
    env, dropped = product_environment(tmp_path / "home", {"RECSYS_TOP_N": "100"})
    assert {"RECSYS_LAKE_URL", "RECSYS_LABEL_DAYS", "MLFLOW_TRACKING_URI", "DAGSTER_HOME"} <= set(dropped)
    assert not {"RECSYS_LAKE_URL", "RECSYS_LABEL_DAYS", "MLFLOW_TRACKING_URI", "DAGSTER_HOME"} & set(env)
    assert env["RECSYS_HOME"] == str(tmp_path / "home") and env["RECSYS_TOP_N"] == "100"
    assert env["PYTHONPATH"].split(os.pathsep) == [str(PROJECT_ROOT), "/opt/extra"]
    assert env["PATH"] == os.environ["PATH"]


def test_import_arguments_mirror_recsys_import():
    assert import_arguments(Path("d/ml-100k"), QualityConfig()) == ["import", "--movielens", "d/ml-100k", "--ingest"]
    table = QualityConfig(columns=TableColumns("uid", "sku", "ts"), event_col="kind", event_types=("buy=favorite",))
    assert import_arguments(Path("e.parquet"), table) == [
        "import", "--interactions", "e.parquet", "--user-col", "uid", "--item-col", "sku", "--time-col", "ts",
        "--ingest", "--event-col", "kind", "--event-type", "buy=favorite",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory, ml100k_dir) -> dict:
    """The benchmark on a seeded sample of ml-100k users, per-user protocol (one import and training cycle)."""
    config = QualityConfig(path=ml100k_dir, users=CI_USERS, work_dir=tmp_path_factory.mktemp("quality"))
    return run_quality_benchmark(config, command=["pytest", __file__])


@pytest.mark.slow
def test_the_ci_run_measures_every_test_user_through_the_api(ci_run, ml100k_dir):
    (run,) = ci_run["runs"]
    data = sample_users(read_interactions(ml100k_dir), CI_USERS)
    train, test = per_user_temporal(data.rows)
    sizes = run["sizes"]
    assert (sizes["train_rows"], sizes["test_rows"]) == (train.height, test.height)
    assert sizes["test_users"] == CI_USERS  # every ml-100k user has 20+ ratings, so each has a held-out part
    served = run["product"]["served"]
    assert sum(served["sources"].values()) == CI_USERS and not served["http_errors"]
    # what each served version is, read from the product's registry: the ranker or a baseline's own list
    assert set(served["scorers"]) == set(served["model_versions"])
    assert all(s == "ranker" or s.startswith("column:") for s in served["scorers"].values())
    # and why: the gate's record of the ranker version (v1), its bar and the noise on it
    gate = served["gate"]["1"]
    assert gate["gate.decision"] in {"promoted", "challenger"} and float(gate["gate.gap_se"]) > 0
    assert float(gate["gate.noise"]) == pytest.approx(2.0 * float(gate["gate.gap_se"]), abs=1e-5)
    assert f"gate, v1: {gate['gate.decision']}" in format_tables(ci_run)
    assert run["product"]["served_items"] == 10 * CI_USERS  # limit=10 for every user
    # ml-100k has one rating per (user, movie): a seen item is never a held-out one, so removing seen
    # items moves hits up the list but never changes how many there are
    metrics = run["metrics"]
    assert metrics[SERVED]["precision@10"] == metrics[SERVED_AS_SHOWN]["precision@10"]
    if run["product"]["seen_items_removed"]:
        assert metrics[SERVED]["ndcg@10"] >= metrics[SERVED_AS_SHOWN]["ndcg@10"]
    assert run["baselines"]["params"]["ease_l2"] in EASE_L2_GRID
    assert metrics["EASE"]["ndcg@10"] > metrics["popularity"]["ndcg@10"]  # the baselines themselves are sane
    # the product took 1997-98 ratings and trained with its default settings: nothing but its home was set
    assert {k for k in run["product"]["environment"] if k.startswith("RECSYS_")} == {"RECSYS_HOME"}
    assert run["timings_s"]["import"] > 0 and run["timings_s"]["train"] > 0
    assert ci_run["git_commit"] and ci_run["machine"]["cores"] == os.cpu_count()
    json.dumps(ci_run)  # every figure is JSON
    assert "served, as shown" in format_tables(ci_run)


@pytest.mark.slow
def test_what_the_product_serves_beats_all_time_popularity_on_the_same_rows(ci_run):
    """Issue 14's point. On these 250 users the cycle before the new model path served everyone its popularity
    list, seen movies included: 0.0587 nDCG@10 vs all-time popularity 0.1036 (item-kNN 0.1728, EASE 0.1781).
    With the new model path (merge f6e8fde): served 0.2160."""
    metrics = ci_run["runs"][0]["metrics"]
    assert metrics[SERVED]["ndcg@10"] > metrics["popularity"]["ndcg@10"], format_tables(ci_run)
