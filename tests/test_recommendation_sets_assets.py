"""Dagster level: one user shard through batch_scores -> recommendation_sets -> recommendation_export,
and the experiment assets, on a real lake, MLflow registry and the shipped YAML."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from assets import recommendation_sets as set_assets
from assets.partitions import arrival_hours
from orchestration.runner import partition_range_tags
from recsys_platform.batch import scoring as bs
from recsys_platform.batch.set_config import load_sets_config
from recsys_platform.config import CHAMPION_ALIAS, REGISTERED_MODEL_NAME, PipelineParams, Settings
from recsys_platform.dev.experiment_sim import simulate_arms
from recsys_platform.dev.generator import GeneratorConfig, generate
from recsys_platform.experiments import ab_tests as experiments_ab
from recsys_platform.features.tables import build_interactions, user_segments
from recsys_platform.ingest.landing import LocalLandingZone
from recsys_platform.model import procedure, registry
from recsys_platform.model.candidates import FEATURES
from recsys_platform.model.fallback import popularity_table
from recsys_platform.model.recommender import fit_serving
from recsys_platform.model.signals import signal_events
from recsys_platform.serve import deployment
from recsys_platform.serve import read_path as serving
from recsys_platform.serve.online_store import open_online_store
from resources import LakeIOManager, LandingZoneResource, MlflowResource, OnlineStoreResource, PipelineResource
from resources.recommendation_sets import RecommendationSetsResource

END = datetime(2026, 10, 1, 12, tzinfo=UTC)
SOURCES = ("interactions", "items", "users", "popularity_model", "model_evaluation", "session_signals")


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A lake with the upstream tables written as the pipeline writes them, and the shipped config with its
    experiment's `serves` switched on (`config`)."""
    root = tmp_path_factory.mktemp("sets")
    shipped = Settings.from_env().recommendation_sets_path.read_text()
    (root / "sets.yaml").write_text(shipped.replace("# serves: {", "serves: {"))
    config = load_sets_config(root / "sets.yaml")
    ds = simulate_arms(generate(GeneratorConfig(n_users=400, days=21, seed=9, end=END)), config.experiments[0], seed=9)
    inter = build_interactions(ds.events, ds.items)
    lake_dir = root / "lake"
    (lake_dir / "raw_events").mkdir(parents=True)
    inter.write_parquet(lake_dir / "interactions.parquet")
    signal_events(ds.events).write_parquet(lake_dir / "session_signals.parquet")
    ds.items.write_parquet(lake_dir / "items.parquet")
    ds.users.write_parquet(lake_dir / "users.parquet")
    popularity_table(inter, ds.users, inter["event_time"].max()).write_parquet(lake_dir / "popularity_model.parquet")
    events = ds.events.with_columns(hour=pl.col("arrival_time").dt.strftime("%Y-%m-%d-%H:00"))
    for (hour,), part in events.partition_by("hour", as_dict=True).items():
        part.drop("hour", "arrival_time").write_parquet(lake_dir / "raw_events" / f"{hour}.parquet")
    return {"root": root, "lake": lake_dir, "ds": ds, "inter": inter}


def _resources(lake: dict, tracking: str) -> dict:
    root = lake["root"]
    return {
        "io_manager": LakeIOManager(base_url=str(lake["lake"])),
        "mlflow": MlflowResource(tracking_uri=tracking, artifact_uri=(root / "mlartifacts").as_uri()),
        "pipeline": PipelineResource(lake_url=str(lake["lake"]), catalog_path=str(root / "catalog.duckdb")),
        "set_config": RecommendationSetsResource(
            config_path=str(root / "sets.yaml"), exports_dir=str(root / "exports")
        ),
        "online_store": OnlineStoreResource(url=f"sqlite:///{root / 'online_store.sqlite'}"),
        "landing": LandingZoneResource(url=str(root / "landing")),
    }


def _materialize(
    lake: dict, tracking: str, selection: list, key: str | None, tags: dict[str, str] | None = None
) -> dg.ExecuteInProcessResult:
    sources = [dg.SourceAsset(k) for k in SOURCES] + [
        dg.SourceAsset(name, partitions_def=arrival_hours) for name in ("raw_events", "served_log")
    ]
    return dg.materialize(
        [*selection, *sources], partition_key=key, resources=_resources(lake, tracking), raise_on_error=True, tags=tags
    )


@pytest.mark.slow
def test_one_shard_with_the_champion_scores_applies_rules_and_exports(lake: dict):
    root, inter, ds = lake["root"], lake["inter"], lake["ds"]
    tracking = f"sqlite:///{root / 'mlflow.db'}"
    base = PipelineParams().model_params()
    params, _ = procedure.choose_params(inter, ds.items, ds.users, base, max_users=4000)
    train = procedure.training_set(inter, ds.items, ds.users, params, max_users=4000)
    booster, facts = procedure.train(train, params)
    ref = registry.log_ranker(
        tracking,
        (root / "mlartifacts").as_uri(),
        "sets-test",
        booster,
        train.select([pl.col(c).cast(pl.Float32) for c in FEATURES]).head(20),
        {},
        facts,
        {},
        model_params=params.to_dict(),
    )
    registry._client(tracking).set_registered_model_alias(REGISTERED_MODEL_NAME, CHAMPION_ALIAS, ref.version)

    with open_online_store(f"sqlite:///{root / 'online_store.sqlite'}") as store:  # the champion is being served
        deployment.deploy(store, ref.version, "snap-sets", {"recs": {}})
    key = "shard-03"
    result = _materialize(
        lake, tracking, [set_assets.batch_scores, set_assets.recommendation_sets, set_assets.recommendation_export], key
    )
    scores = pl.read_parquet(root / "lake" / "batch_scores" / f"{key}.parquet")
    assert (scores["model_version"] == ref.version).all() and (scores["shard"] == key).all()
    # No serving fit was saved: the asset fitted the champion's sources with the params its version carries.
    cutoff = inter["event_time"].max() + timedelta(microseconds=1)
    signals = signal_events(ds.events)  # the session signals the asset reads from the lake
    here = fit_serving(inter, ds.items, ds.users, cutoff, params, booster, signals)
    config = load_sets_config(root / "sets.yaml")
    eligible = bs.eligible_users(ds.users, inter, cutoff, config.eligibility)
    expected = bs.score_shard(
        here, ref.version, inter, ds.users, eligible, key, config.batch, cutoff, datetime.now(UTC), signals
    )
    cols = ["user_id", "rank", "item_id"]
    assert scores.height > 0 and scores.select(cols).equals(expected.select(cols))
    sets = pl.read_parquet(root / "lake" / "recommendation_sets" / f"{key}.parquet")
    assert set(sets["user_id"]) <= set(scores["user_id"])
    meta = result.asset_materializations_for_node("recommendation_sets")[0].metadata
    by_set = meta["rule_counts_by_set"].value
    assert [step["rule"] for step in by_set["sleep_tonight"]][:2] == ["content_type", "kids_guard"]
    assert by_set["sleep_tonight"][0]["removed"] > 0
    export = root / "exports" / "recommendation_sets" / "recommended_for_you" / f"{key}.jsonl"
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    assert len(lines) == sets.filter(pl.col("set_name") == "recommended_for_you")["user_id"].n_unique()
    assert lines[0]["modelVersion"] == ref.version and len(lines[0]["itemList"]) <= 30
    # The experiment's surface set is what each user's arm is served: the set, the model's ranking, popularity.
    experiment = config.experiments[0]
    by_arm = result.asset_materializations_for_node("recommendation_sets")[0].metadata["users_by_arm"].value
    assert set(by_arm[experiment.name]) == {"control", "popularity", "model"}
    surface = {line["userId"]: [x["itemId"] for x in line["itemList"]] for line in lines}
    arms = experiments_ab.assign_arms(sorted(surface), experiment)
    arm_of = dict(arms.iter_rows())
    model_user = next(u for u in sorted(surface) if arm_of[u] == "model")
    top = scores.filter(pl.col("user_id") == model_user).sort("rank")["item_id"].head(30).to_list()
    assert surface[model_user] == top
    pop_user = next(u for u in sorted(surface) if arm_of[u] == "popularity")
    popularity = pl.read_parquet(root / "lake" / "popularity_model.parquet")
    segment = user_segments(ds.users).filter(pl.col("user_id") == pop_user)["segment"][0]
    segment = segment if segment in set(popularity["segment"]) else "__global__"
    expected_pop = popularity.filter(pl.col("segment") == segment).sort("rank")["item_id"].head(30).to_list()
    assert surface[pop_user] == expected_pop and surface[pop_user] != surface[model_user]
    contexts = sets.filter(pl.col("set_name") == experiment.surface)["context"].unique().to_list()
    assert {c.split("/")[1] for c in contexts} == {"control", "popularity", "model"}
    # and what was exported is in the served log (one row per user and set), with the experiment and arm
    served_files = LocalLandingZone(root / "landing").list_files("served/")
    logged = pl.concat([pl.read_parquet(root / "landing" / f.key) for f in served_files])
    assert logged.height == sets.select("user_id", "set_name").unique().height
    rows = logged.filter(pl.col("surface") == f"export:{experiment.surface}")
    assert set(rows["arm"]) == {"control", "popularity", "model"} and set(rows["experiment"]) == {experiment.name}
    assert rows.filter(pl.col("user_id") == model_user)["item_ids"].to_list() == [top]
    # The same sets are in the active slot, where the API and an experiment's `set` arm read them.
    online = result.asset_materializations_for_node("recommendation_export")[0].metadata["online_store_users"].value
    assert online == {ref.version: sets["user_id"].n_unique()}
    with open_online_store(f"sqlite:///{root / 'online_store.sqlite'}") as store:
        served = serving.user_set(store, lines[0]["userId"], "recommended_for_you", k=30)
    assert [i.item_id for i in served.items] == [x["itemId"] for x in lines[0]["itemList"]]
    assert served.model_version == ref.version and served.source == "recommendation_set"

    # One run over a range of shards (what `recsys batch-sets` runs) writes each shard's files as its own run would.
    single = {
        name: pl.read_parquet(root / "lake" / name / f"{key}.parquet")
        for name in ("batch_scores", "recommendation_sets")
    }
    first_export = export.read_text()
    keys = ["shard-02", "shard-03", "shard-04"]
    _materialize(
        lake,
        tracking,
        [set_assets.batch_scores, set_assets.recommendation_sets, set_assets.recommendation_export],
        None,
        partition_range_tags(keys[0], keys[-1]),
    )
    for name, before in single.items():
        after = pl.read_parquet(root / "lake" / name / f"{key}.parquet")
        assert (
            after.select(before.columns)
            .drop("generated_at")
            .sort(after.columns[:4])
            .equals(before.drop("generated_at").sort(after.columns[:4]))
        )
    assert [json.loads(x)["userId"] for x in export.read_text().splitlines()] == [
        json.loads(x)["userId"] for x in first_export.splitlines()
    ]
    for shard in keys:
        scored = pl.read_parquet(root / "lake" / "batch_scores" / f"{shard}.parquet")
        shard_sets = pl.read_parquet(root / "lake" / "recommendation_sets" / f"{shard}.parquet")
        assert scored.height > 0 and (scored["shard"] == shard).all()
        assert set(shard_sets["user_id"]) <= set(
            bs.users_of_shard(scored["user_id"].unique(), shard, config.batch.shards)
        )
        assert (root / "exports" / "recommendation_sets" / "recommended_for_you" / f"{shard}.jsonl").exists()


def test_experiment_assets_find_the_simulated_model_lift(lake: dict):
    tracking = f"sqlite:///{lake['root'] / 'mlflow-exp.db'}"
    result = _materialize(lake, tracking, [set_assets.experiment_exposures, set_assets.experiment_analysis], None)
    analysis = pl.read_parquet(lake["lake"] / "experiment_analysis.parquet")
    exposures = pl.read_parquet(lake["lake"] / "experiment_exposures.parquet")
    assert set(exposures["arm"]) == {"control", "popularity", "model"}
    # no served log in this lake: the first app open stands in, and the metadata says so
    sources = result.asset_materializations_for_node("experiment_exposures")[0].metadata["exposure_source"].value
    assert sources == {"home_carousel_v1": "first_app_open"}
    assert analysis.filter(pl.col("arm") == "control")["n"].sum() == 3 * (exposures["arm"] == "control").sum()
    model = analysis.filter((pl.col("metric") == "completion_days") & (pl.col("arm") == "model")).row(0, named=True)
    assert model["diff_vs_control"] > 0
    md = result.asset_materializations_for_node("experiment_analysis")[0].metadata["analysis"].value
    assert "data:image/png;base64," in md and "| completion_days | model |" in md
    assert Path(lake["root"] / "exports" / "experiments" / "home_carousel_v1.png").stat().st_size > 5000
