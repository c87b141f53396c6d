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
        assert node.group_name in GROUPS | {"experiments"}, key
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

    from assets.pools import HISTORY_POOL, RAW_EVENTS_POOL

    pools = {key.to_user_string(): a.op.pool for a in defs.assets for key in a.keys}
    pools |= {key.name: c.op.pool for c in defs.asset_checks for key in c.check_keys}
    heavy = {"interactions", "user_features", "item_features", "similar_items", "popularity_model", "training_set"}
    heavy |= {"model_params"}  # tuning reads the whole history too
    heavy |= {"ranker_model", "model_evaluation", "recommendations", "experiment_exposures", "experiment_analysis"}
    assert {name for name, pool in pools.items() if pool == HISTORY_POOL} == heavy | {"interactions_expectations"}
    assert pools["raw_events"] == RAW_EVENTS_POOL and pools["items"] is None and pools["recommendation_sets"] is None
    instance = yaml.safe_load((PROJECT_ROOT / "deploy" / "dagster.yaml").read_text())
    assert instance["concurrency"]["pools"]["default_limit"] == 1
