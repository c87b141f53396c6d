"""The composition root: one Definitions, every asset described and grouped, `dagster definitions validate` passes."""

import os
import subprocess
import sys
from pathlib import Path

from orchestration.definitions import defs
from recsys_platform.config import PROJECT_ROOT

GROUPS = {"ingestion", "features", "training", "serving"}


def test_every_asset_has_a_group_and_a_description():
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.group_name in GROUPS | {"experiments", "lifecycle"}, key
        assert node.description and len(node.description) > 20, key
    groups = {graph.get(k).group_name for k in graph.get_all_asset_keys()}
    assert GROUPS <= groups


def test_graph_shape():
    graph = defs.resolve_asset_graph()
    names = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {
        "raw_events",
        "quarantined_events",
        "items",
        "users",
        "interactions",
        "user_features",
        "item_features",
        "training_set",
        "popularity_model",
        "ranker_model",
        "model_evaluation",
        "feature_store_snapshot",
        "recommendations",
    } <= names
    parents = {
        p.to_user_string()
        for p in graph.get(
            next(k for k in graph.get_all_asset_keys() if k.to_user_string() == "feature_store_snapshot")
        ).parent_keys
    }
    assert {"recommendations", "user_features", "popularity_model"} <= parents


def test_core_does_not_import_dagster():
    core = PROJECT_ROOT / "recsys_platform"
    offenders = [
        str(p.relative_to(PROJECT_ROOT))
        for p in core.rglob("*.py")
        if "import dagster" in p.read_text() or "from dagster" in p.read_text()
    ]
    assert offenders == []


def test_dagster_definitions_validate(tmp_path: Path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "RECSYS_HOME": str(tmp_path / "home")}
    dagster = Path(sys.executable).with_name("dagster")
    proc = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", str(PROJECT_ROOT / "workspace.yaml")],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Validation successful" in proc.stdout + proc.stderr


def test_history_sized_steps_share_one_pool_the_production_instance_limits():
    import yaml

    from assets.pools import HISTORY_POOL, POOL_TAG, RAW_EVENTS_POOL

    pools = {key.to_user_string(): a.op.pool for a in defs.assets for key in a.keys}
    pools |= {key.name: c.op.pool for c in defs.asset_checks for key in c.check_keys}
    heavy = {"interactions", "user_features", "item_features", "similar_items", "popularity_model", "training_set"}
    heavy |= {"model_params"}  # tuning reads the whole history too
    heavy |= {"session_signals"}  # every raw event, as interactions reads them
    heavy |= {"ranker_model", "holdout_per_user", "holdout_global", "model_evaluation", "recommendations"}
    heavy |= {"experiment_exposures", "experiment_analysis"}
    assert {name for name, pool in pools.items() if pool == HISTORY_POOL} == heavy | {"interactions_expectations"}
    assert pools["raw_events"] == RAW_EVENTS_POOL and pools["items"] is None and pools["recommendation_sets"] is None
    # each pooled step also carries its pool as an op tag: the multiprocess executor's limit within a run reads tags
    tags = {key.to_user_string(): a.op.tags for a in defs.assets for key in a.keys}
    tags |= {key.name: c.op.tags for c in defs.asset_checks for key in c.check_keys}
    assert {name: tags[name].get(POOL_TAG) for name in pools} == pools
    instance = yaml.safe_load((PROJECT_ROOT / "deploy" / "dagster.yaml").read_text())
    assert instance["concurrency"]["pools"]["default_limit"] == 1
    assert instance["run_monitoring"]["enabled"] is True  # stuck runs are marked failed, then alerted on
    values = yaml.safe_load((PROJECT_ROOT / "deploy" / "k8s" / "values.yaml").read_text())
    assert values["dagsterDaemon"]["runMonitoring"]["enabled"] is True


def test_the_holdouts_do_not_wait_for_the_ranker_and_the_gate_waits_for_all_three():
    # the two holdout evaluations refit the whole procedure; they depend only on the data (session signals are data:
    # raw events, like interactions), not on model_params -> training_set -> ranker_model, so a failed or slow
    # ranker does not hold them up (all are history steps: one of them runs at a time, in either order)
    graph = defs.resolve_asset_graph()
    parents = {
        k.to_user_string(): {p.to_user_string() for p in graph.get(k).parent_keys} for k in graph.get_all_asset_keys()
    }
    for protocol in ("per_user", "global"):
        assert parents[f"holdout_{protocol}"] == {"interactions", "items", "users", "session_signals"}
    assert {"ranker_model", "holdout_per_user", "holdout_global"} <= parents["model_evaluation"]


def test_the_gate_refuses_holdouts_scored_against_different_champions(tmp_path: Path):
    import dagster as dg
    import polars as pl
    import pytest

    from assets.training import model_evaluation
    from resources import MlflowResource, PipelineResource

    def holdout(protocol: str, champion: str | None) -> pl.DataFrame:
        return pl.DataFrame(
            {"protocol": [protocol], "model": ["ranker"], "metric": ["ndcg@10"], "value": [0.3]}
        ).with_columns(champion_version=pl.lit(champion, dtype=pl.String))

    with pytest.raises(RuntimeError, match=r"champion changed while the holdouts ran \(versions \['3', '4'\]\)"):
        model_evaluation(
            dg.build_asset_context(),
            ranker_model={
                "name": "recsys-ranker",
                "version": "5",
                "run_id": "r",
                "model_uri": "models:/recsys-ranker/5",
                "experiment": "e",
            },
            training_set=pl.DataFrame(),
            holdout_per_user=holdout("per_user", "3"),
            holdout_global=holdout("global", "4"),
            mlflow=MlflowResource(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"),
            pipeline=PipelineResource(lake_url=str(tmp_path / "lake"), catalog_path=str(tmp_path / "catalog.duckdb")),
        )


def test_the_pipeline_resource_configures_every_tunable_of_pipeline_params():
    from dataclasses import asdict, replace

    from recsys_platform.config import PipelineParams
    from resources import PipelineResource

    config_fields = PipelineResource.to_config_schema().as_field().config_type.fields
    assert set(config_fields) == {"lake_url", "catalog_path", *asdict(PipelineParams())}
    tuned = replace(PipelineParams(), top_n=7, promotion_margin=0.25, training_windows="random", push_on_refresh=False)
    resource = PipelineResource(lake_url="lake", catalog_path="c.duckdb", **asdict(tuned))
    assert resource.params() == tuned
    assert PipelineResource(lake_url="lake", catalog_path="c.duckdb").params() == PipelineParams()
    assert resource.model_params() == tuned.model_params()
