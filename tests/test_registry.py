"""The MLflow model lifecycle on a real local registry: the promotion gate's decisions, a champion promoted
by hand, loading by alias or number, and serving a registered version as an MLflow pyfunc."""

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import dagster as dg
import lightgbm as lgb
import numpy as np
import polars as pl
import pytest

from recsys_platform.config import CHALLENGER_ALIAS, CHAMPION_ALIAS, REGISTERED_MODEL_NAME
from recsys_platform.dev.production_stack import free_port
from recsys_platform.model import registry
from resources import MlflowResource
from sensors.registry import champion_sensor_for

FEATURES = ["f0", "f1", "f2"]


def _ranker(seed: int) -> lgb.LGBMRanker:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, len(FEATURES)))
    y = (x[:, 0] + 0.1 * rng.normal(size=300) > 0).astype(int)
    model = lgb.LGBMRanker(n_estimators=8, min_child_samples=5, random_state=seed, verbose=-1)
    return model.fit(x, y, group=[15] * 20, feature_name=FEATURES)


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> tuple[str, list[registry.ModelRef]]:
    """A SQLite-backed tracking server + registry holding versions 1, 2, 3 (rankers fitted with seeds 1, 2, 3)."""
    root = tmp_path_factory.mktemp("mlflow")
    tracking = f"sqlite:///{root / 'mlflow.db'}"
    example = pl.DataFrame(np.random.default_rng(99).normal(size=(10, 3)), schema=FEATURES)
    refs = [
        registry.log_ranker(
            tracking, str(root / "artifacts"), "recsys-test", _ranker(s), example, {"seed": s}, {"ndcg@10": 0.0}, {}
        )
        for s in (1, 2, 3)
    ]
    assert [r.version for r in refs] == ["1", "2", "3"]
    return tracking, refs


@pytest.fixture
def lifecycle(registered) -> tuple[str, list[registry.ModelRef]]:
    """The registry with no alias set: each test starts before any gate decision."""
    tracking, refs = registered
    client = registry._client(tracking)
    for alias in (CHAMPION_ALIAS, CHALLENGER_ALIAS):
        if registry.alias_version(tracking, alias) is not None:
            client.delete_registered_model_alias(REGISTERED_MODEL_NAME, alias)
    return tracking, refs


def _version_tags(tracking: str, version: str) -> dict[str, str]:
    return registry._client(tracking).get_model_version(REGISTERED_MODEL_NAME, version).tags


def test_first_version_beating_the_baseline_becomes_champion(lifecycle) -> None:
    tracking, (ref, _, _) = lifecycle
    decision = registry.promotion_gate(tracking, ref, 0.30, 0.10, None, margin=0.05)
    assert decision.promoted and decision.alias == CHAMPION_ALIAS and decision.champion_version is None
    assert decision.reason == "beats popularity and no previous champion"
    assert registry.alias_version(tracking, CHAMPION_ALIAS) == "1"
    tags = _version_tags(tracking, "1")
    assert tags["gate.decision"] == "promoted" and tags["gate.champion_before"] == "none"
    assert tags["gate.candidate_score"] == "0.300000" and tags["gate.baseline_score"] == "0.100000"
    assert tags["gate.champion_score"] == "none" and tags["gate.margin"] == "0.050000"
    run = registry._client(tracking).get_run(ref.run_id)
    assert run.data.tags["gate.decision"] == "promoted"
    assert run.data.metrics["gate.candidate_score"] == pytest.approx(0.30)
    assert run.data.metrics["gate.baseline_score"] == pytest.approx(0.10)


def test_a_version_not_beating_popularity_by_the_margin_stays_challenger(lifecycle) -> None:
    tracking, (ref, _, _) = lifecycle
    # 0.104 beats 0.10 but not by 5%: the margin applies to the baseline too.
    decision = registry.promotion_gate(tracking, ref, 0.104, 0.10, None, margin=0.05)
    assert not decision.promoted and decision.alias == CHALLENGER_ALIAS
    assert "does not beat popularity 0.1000 by 5%" in decision.reason
    assert registry.alias_version(tracking, CHAMPION_ALIAS) is None
    assert registry.alias_version(tracking, CHALLENGER_ALIAS) == "1"
    assert _version_tags(tracking, "1")["gate.decision"] == "challenger"


def test_a_version_not_beating_the_champion_by_the_margin_stays_challenger(lifecycle) -> None:
    tracking, (first, second, _) = lifecycle
    registry.promotion_gate(tracking, first, 0.30, 0.10, None, margin=0.05)
    # Better than the champion's 0.30 on the same holdout, but by less than 5% (0.315 would be needed).
    decision = registry.promotion_gate(tracking, second, 0.31, 0.10, 0.30, margin=0.05)
    assert not decision.promoted and decision.alias == CHALLENGER_ALIAS
    assert decision.champion_version == "1" and decision.champion_score == pytest.approx(0.30)
    assert "does not beat champion v1 (0.3000) by 5%" in decision.reason
    assert registry.alias_version(tracking, CHAMPION_ALIAS) == "1"
    assert registry.alias_version(tracking, CHALLENGER_ALIAS) == "2"
    tags = _version_tags(tracking, "2")
    assert tags["gate.champion_before"] == "1" and tags["gate.champion_score"] == "0.300000"


def test_a_version_beating_the_champion_by_the_margin_is_promoted(lifecycle) -> None:
    tracking, (first, second, _) = lifecycle
    registry.promotion_gate(tracking, first, 0.30, 0.10, None, margin=0.05)
    decision = registry.promotion_gate(tracking, second, 0.32, 0.10, 0.30, margin=0.05)
    assert decision.promoted and decision.alias == CHAMPION_ALIAS
    assert decision.reason == "beats popularity and champion v1"
    assert registry.alias_version(tracking, CHAMPION_ALIAS) == "2"


def test_rerunning_the_gate_on_the_champion_keeps_it(lifecycle) -> None:
    tracking, (ref, _, _) = lifecycle
    registry.promotion_gate(tracking, ref, 0.30, 0.10, None, margin=0.05)
    again = registry.promotion_gate(tracking, ref, 0.30, 0.10, None, margin=0.05)
    assert not again.promoted and again.alias == CHAMPION_ALIAS and again.reason == "already champion"
    assert registry.alias_version(tracking, CHAMPION_ALIAS) == "1"
    assert _version_tags(tracking, "1")["gate.decision"] == "kept"


def test_a_champion_promoted_by_hand_is_honoured(lifecycle) -> None:
    """Moving the alias in the MLflow UI (the same registry call) wins: loading, the sensor and the next gate."""
    tracking, (v1, v2, v3) = lifecycle
    registry.promotion_gate(tracking, v1, 0.30, 0.10, None, margin=0.05)
    registry.promotion_gate(tracking, v2, 0.29, 0.10, 0.30, margin=0.05)
    assert registry.alias_version(tracking, CHAMPION_ALIAS) == "1"

    sensor = champion_sensor_for(dg.define_asset_job("deploy_champion_test"))
    resources = {"mlflow": MlflowResource(tracking_uri=tracking)}
    with dg.build_sensor_context(resources=resources) as ctx:
        first = sensor(ctx)
        assert isinstance(first, dg.RunRequest) and first.tags["recsys/champion_version"] == "1"
        assert isinstance(sensor(ctx), dg.SkipReason)  # cursor holds v1: nothing to do

        registry._client(tracking).set_registered_model_alias(REGISTERED_MODEL_NAME, CHAMPION_ALIAS, "2")
        moved = sensor(ctx)
        assert isinstance(moved, dg.RunRequest) and moved.run_key == "champion-v2"

    booster, version = registry.load_ranker(tracking, CHAMPION_ALIAS)
    assert version == "2"
    x = np.random.default_rng(5).normal(size=(20, 3))
    np.testing.assert_allclose(booster.predict(x), _ranker(2).booster_.predict(x))

    decision = registry.promotion_gate(tracking, v3, 0.31, 0.10, 0.30, margin=0.05)
    assert decision.champion_version == "2" and "champion v2" in decision.reason
    assert registry.alias_version(tracking, CHAMPION_ALIAS) == "2"


def test_registry_uri_by_alias_or_number() -> None:
    assert registry.registry_uri("3") == f"models:/{REGISTERED_MODEL_NAME}/3"
    assert registry.registry_uri("champion") == f"models:/{REGISTERED_MODEL_NAME}@champion"
    with pytest.raises(ValueError, match="version number or alias"):
        registry.registry_uri("")


def test_pyfunc_loads_by_alias_and_scores_like_the_booster(lifecycle) -> None:
    tracking, (ref, _, _) = lifecycle
    registry.promotion_gate(tracking, ref, 0.30, 0.10, None, margin=0.05)
    model = registry.load_pyfunc(tracking, CHAMPION_ALIAS)
    rows = pl.DataFrame(np.random.default_rng(7).normal(size=(12, 3)), schema=FEATURES)
    got = np.asarray(model.predict(rows.to_pandas()))
    np.testing.assert_allclose(got, _ranker(1).booster_.predict(rows.to_numpy()))
    assert [c.name for c in model.metadata.get_input_schema().inputs] == FEATURES


def test_a_ranker_version_pins_the_packages_its_model_loads_with(lifecycle) -> None:
    # written down, not inferred by importing the model in a subprocess (3 s per version): the serving stack's
    # packages at the versions installed here
    from importlib.metadata import version

    import mlflow

    tracking, (ref, _, _) = lifecycle
    registry._client(tracking)
    folder = mlflow.artifacts.download_artifacts(artifact_uri=f"runs:/{ref.run_id}/model", tracking_uri=tracking)
    pinned = (Path(folder) / "requirements.txt").read_text().split()
    assert "lightgbm==" + version("lightgbm") in pinned and "mlflow==" + version("mlflow") in pinned
    assert {p.split("==")[0] for p in pinned} >= {"numpy", "pandas", "scipy", "scikit-learn"}


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_mlflow_scoring_server_serves_the_champion(lifecycle, tmp_path) -> None:
    """`recsys serve-model` runs this exact command: MLflow's scoring server on the registered champion."""
    tracking, (ref, _, _) = lifecycle
    registry.promotion_gate(tracking, ref, 0.30, 0.10, None, margin=0.05)
    port = free_port()
    argv, env = registry.pyfunc_serve_command(tracking, CHAMPION_ALIAS, port=port)
    log = (tmp_path / "serve.log").open("w")
    # its own process group, so stopping it stops the server's workers too
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "scoring server did not come up in 90 s"
            time.sleep(0.5)
        x = np.random.default_rng(11).normal(size=(4, 3))
        status, body = _post(f"{base}/invocations", {"dataframe_split": {"columns": FEATURES, "data": x.tolist()}})
        assert status == 200
        np.testing.assert_allclose(body["predictions"], _ranker(1).booster_.predict(x), rtol=1e-9)
        # A request without a required feature column is rejected by the logged signature.
        status, body = _post(f"{base}/invocations", {"dataframe_split": {"columns": FEATURES[:2], "data": [[0, 1]]}})
        assert status == 400 and "missing inputs ['f2']" in body["message"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:  # a graceful shutdown can outlast 20 s on a loaded 2-core host
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
        log.close()


def test_using_a_registry_leaves_the_process_environment_alone(tmp_path, monkeypatch) -> None:
    # MLflow exports the URI it is given to MLFLOW_TRACKING_URI; a later Settings.from_env in the same process
    # (another test, a code server) would then read this store instead of its own RECSYS_HOME's
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry.ensure_experiment(uri, "leak-check", str(tmp_path / "artifacts"))
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    registry.ensure_experiment(uri, "leak-check", str(tmp_path / "artifacts"))
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///elsewhere.db"


def _first_look(uri: str) -> str | None:
    return registry.alias_version(uri)


def test_parallel_steps_can_open_a_new_sqlite_store_at_once(tmp_path):
    # the training cycle's holdout steps start together on a fresh home: MLflow creates and migrates the
    # tables when a client first opens the store, and two processes doing it at once fail an alembic migration
    import multiprocessing

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        assert pool.map(_first_look, [uri] * 4) == [None] * 4
    assert registry.alias_version(uri) is None
