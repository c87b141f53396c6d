"""MLflow tracking and model registry: training runs, versions, aliases and the promotion gate.

mlflow is imported inside the functions so that code locations and sensors load fast.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from recsys_platform.config import CHALLENGER_ALIAS, CHAMPION_ALIAS, REGISTERED_MODEL_NAME
from recsys_platform.model.compiled import ARTIFACT_DIR, compile_ranker

logger = logging.getLogger(__name__)

GATE_METRIC = "ndcg@10"
# Model-version tags that make a version servable on its own: the params its features need, and its scorer.
PARAMS_TAG = "recsys.model_params"
SCORER_TAG = "recsys.scorer"  # "ranker" (a LightGBM booster) or "column:<feature>" (a baseline's own score)
# A ranker version's newest training event (ISO): its labels read nothing after it. The gate compares a champion
# only on held-out events after it (`procedure.evaluate`), not on the answers it was trained with.
LABELS_UNTIL_TAG = "recsys.labels_until"


@dataclass(frozen=True)
class ModelRef:
    """A registered model version and where it came from."""

    name: str
    version: str
    run_id: str
    model_uri: str
    experiment: str

    def to_dict(self) -> dict[str, str]:
        """Plain dict (for JSON storage)."""
        return asdict(self)


@dataclass(frozen=True)
class GateDecision:
    """Outcome of the promotion gate for one candidate version."""

    version: str
    promoted: bool
    alias: str
    reason: str
    candidate_score: float
    baseline_score: float
    champion_version: str | None
    champion_score: float | None


_INITIALISED: set[str] = set()  # SQLite stores this process has opened once (see _client)


def _client(tracking_uri: str) -> Any:
    import mlflow

    # the fluent API (start_run, log_model) reads the process-wide URI; MLflow also exports it to the environment
    # for subprocesses, which would make every later Settings.from_env in this process (tests, a Dagster
    # code server) point at this store: set it for this process, keep the environment as it was.
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if tracking_uri in _INITIALISED or not tracking_uri.startswith("sqlite:///"):
        return mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    # A new SQLite store gets its tables when the first client opens it, once per process: steps that run in
    # parallel (the two holdout evaluations) both open a fresh store, and MLflow's table creation and alembic
    # migrations are not safe to run twice at once ("Online migration expected to match one row"), so the
    # first opening in each process holds a file lock beside the database.
    import fcntl

    db = Path(tracking_uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".init-lock"), "w") as lock:  # closing the file releases the lock
        fcntl.flock(lock, fcntl.LOCK_EX)
        client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        client.search_registered_models(max_results=1)  # the registry store opens (and checks) it too
    _INITIALISED.add(tracking_uri)
    return client


def ensure_experiment(tracking_uri: str, name: str, artifact_uri: str | None) -> str:
    """Return the id of experiment `name`, creating it with the given artifact location."""
    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = f"{artifact_uri.rstrip('/')}/{name}" if artifact_uri else None
    return client.create_experiment(name, artifact_location=location)


def ranker_requirements() -> list[str]:
    """The ranker's pip requirements, pinned to this environment: what MLflow's inference found (it imports the
    saved model in a subprocess to see what it loads, about 3 s of every registered version), written down."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("mlflow", "lightgbm", "numpy", "pandas", "scipy", "scikit-learn")]


def log_ranker(
    tracking_uri: str,
    artifact_uri: str | None,
    experiment: str,
    model: Any,
    input_example: pl.DataFrame,
    params: dict[str, Any],
    metrics: dict[str, float],
    tags: dict[str, str],
    importance: pl.DataFrame | None = None,
    model_name: str = REGISTERED_MODEL_NAME,
    model_params: dict[str, Any] | None = None,
    documents: dict[str, Any] | None = None,
    labels_until: datetime | None = None,
) -> ModelRef:
    """Log a LightGBM ranker run (params, metrics, importance plot, model + signature, JSON `documents`)
    and register it; `model_params` (what its features need) and `labels_until` (its newest training event) are
    tagged on the version."""
    import mlflow
    from mlflow.models import infer_signature

    booster = getattr(model, "booster_", model)  # an sklearn wrapper or a bare Booster
    _client(tracking_uri)
    exp_id = ensure_experiment(tracking_uri, experiment, artifact_uri)
    example = input_example.to_pandas()
    signature = infer_signature(example, booster.predict(example.to_numpy()))
    with mlflow.start_run(experiment_id=exp_id, tags=tags) as run:
        mlflow.log_params(params)
        mlflow.log_metrics({k.replace("@", "_at_"): float(v) for k, v in metrics.items()})
        if importance is not None:
            _log_importance(importance)
        for name, doc in (documents or {}).items():
            mlflow.log_dict(doc, name)
        info = mlflow.lightgbm.log_model(
            booster,
            name="model",
            signature=signature,
            input_example=example.head(5),
            registered_model_name=model_name,
            pip_requirements=ranker_requirements(),
        )
        # The compiled ranker beside the model (`model.compiled`): loaders on the same kind of CPU reuse it.
        compiled = compile_ranker(booster.model_to_string())
        if compiled is not None:
            mlflow.log_artifact(str(compiled.object_file), artifact_path=ARTIFACT_DIR)
    version = str(info.registered_model_version)
    _tag_version(tracking_uri, model_name, version, model_params, "ranker")
    if labels_until is not None:
        _client(tracking_uri).set_model_version_tag(model_name, version, LABELS_UNTIL_TAG, labels_until.isoformat())
    logger.info("logged run %s, registered %s version %s", run.info.run_id, model_name, version)
    return ModelRef(
        name=model_name,
        version=version,
        run_id=run.info.run_id,
        model_uri=f"models:/{model_name}/{version}",
        experiment=experiment,
    )


def _tag_version(
    tracking_uri: str, model_name: str, version: str, model_params: dict[str, Any] | None, scorer: str
) -> None:
    client = _client(tracking_uri)
    client.set_model_version_tag(model_name, version, SCORER_TAG, scorer)
    if model_params is not None:
        client.set_model_version_tag(model_name, version, PARAMS_TAG, json.dumps(model_params, sort_keys=True))


def log_baseline_version(
    tracking_uri: str,
    artifact_uri: str | None,
    experiment: str,
    feature: str,
    input_example: pl.DataFrame,
    model_params: dict[str, Any],
    tags: dict[str, str],
    model_name: str = REGISTERED_MODEL_NAME,
) -> ModelRef:
    """Register a baseline as a model version: a pyfunc that scores candidate rows by its own `feature`
    (e.g. score_ease), so it is served, rolled back and inspected like a ranker version."""
    import mlflow
    from mlflow.models import infer_signature

    from recsys_platform.model.baseline_pyfunc import ColumnScoreModel

    _client(tracking_uri)
    exp_id = ensure_experiment(tracking_uri, experiment, artifact_uri)
    example = input_example.to_pandas()
    model = ColumnScoreModel(feature)
    signature = infer_signature(example, model.predict(None, example))
    with mlflow.start_run(experiment_id=exp_id, tags=tags) as run:
        mlflow.log_params({"scorer": f"column:{feature}", **{f"model.{k}": v for k, v in model_params.items()}})
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=model,
            signature=signature,
            input_example=example.head(5),
            registered_model_name=model_name,
        )
    version = str(info.registered_model_version)
    _tag_version(tracking_uri, model_name, version, model_params, f"column:{feature}")
    logger.info("registered baseline %s as %s version %s", feature, model_name, version)
    return ModelRef(model_name, version, run.info.run_id, f"models:/{model_name}/{version}", experiment)


def version_tags(tracking_uri: str, version: str, model_name: str = REGISTERED_MODEL_NAME) -> dict[str, str]:
    """The tags of a model version."""
    return dict(_client(tracking_uri).get_model_version(model_name, version).tags)


def load_scorer(
    tracking_uri: str, version_or_alias: str, model_name: str = REGISTERED_MODEL_NAME
) -> tuple[Any, dict[str, Any], str]:
    """(scorer with .predict(features), the model params it was trained with, version) of a registered version."""
    client = _client(tracking_uri)
    if version_or_alias.isdigit():
        version = version_or_alias
    else:
        version = str(client.get_model_version_by_alias(model_name, version_or_alias).version)
    tags = version_tags(tracking_uri, version, model_name)
    params = json.loads(tags.get(PARAMS_TAG, "{}"))
    kind = tags.get(SCORER_TAG, "ranker")
    if kind.startswith("column:"):
        from recsys_platform.model.ranker import ColumnScorer

        return ColumnScorer(kind.removeprefix("column:")), params, version
    booster, _ = load_ranker(tracking_uri, version, model_name)
    return compiled_scorer(booster, client.get_model_version(model_name, version).run_id), params, version


def labels_until(tracking_uri: str, version: str, model_name: str = REGISTERED_MODEL_NAME) -> datetime | None:
    """The newest event a version's scorer can have learned from: None for a baseline version (its scorer is a
    column: it learns nothing), else the ranker's `LABELS_UNTIL_TAG`, or for a ranker registered without it the
    version's creation time (no event after it existed to train on)."""
    client = _client(tracking_uri)
    model_version = client.get_model_version(model_name, version)
    tags = dict(model_version.tags)
    if tags.get(SCORER_TAG, "ranker").startswith("column:"):
        return None
    if LABELS_UNTIL_TAG in tags:
        return datetime.fromisoformat(tags[LABELS_UNTIL_TAG])
    return datetime.fromtimestamp(model_version.creation_timestamp / 1000, UTC)


@dataclass(frozen=True)
class ScorerLoader:
    """A picklable way to a registered version's (scorer, ModelParams, labels_until): a compiled scorer does not
    pickle, so a process that needs it (`procedure.evaluate_protocols`' second process) is handed this and loads
    its own."""

    tracking_uri: str
    version: str
    model_name: str = REGISTERED_MODEL_NAME

    def __call__(self) -> tuple[Any, Any, datetime | None]:
        from recsys_platform.model.params import ModelParams

        scorer, params, _ = load_scorer(self.tracking_uri, self.version, self.model_name)
        until = labels_until(self.tracking_uri, self.version, self.model_name)
        return scorer, ModelParams.from_dict(params), until


def compiled_scorer(booster: Any, run_id: str | None = None) -> Any:
    """The booster compiled for this host (`model.compiled`), its object file taken from the run's `compiled/`
    artifacts when they hold one for this CPU; the booster itself when it cannot be compiled."""

    def fetch(name: str, dest: Path) -> None:
        import mlflow

        with tempfile.TemporaryDirectory() as tmp:
            got = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=f"{ARTIFACT_DIR}/{name}", dst_path=tmp
            )
            shutil.move(got, dest)  # the download folder may be on another file system

    return compile_ranker(booster.model_to_string(), fetch=fetch if run_id else None) or booster


def _log_importance(importance: pl.DataFrame) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    top = importance.head(25).reverse()
    fig, ax = plt.subplots(figsize=(7, 7))
    ax.barh(top["feature"].to_list(), top["gain"].to_list())
    ax.set_xlabel("gain")
    ax.set_title("LightGBM feature importance")
    fig.tight_layout()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "feature_importance.png"
        fig.savefig(path, dpi=90)
        mlflow.log_artifact(str(path))
        csv = Path(tmp) / "feature_importance.csv"
        importance.write_csv(csv)
        mlflow.log_artifact(str(csv))
    plt.close(fig)


def log_run_metrics(
    tracking_uri: str, run_id: str, metrics: dict[str, float], tags: dict[str, str] | None = None
) -> None:
    """Add metrics (and tags) to an existing run."""
    client = _client(tracking_uri)
    for key, value in metrics.items():
        client.log_metric(run_id, key.replace("@", "_at_"), float(value))
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, value)


def alias_version(
    tracking_uri: str, alias: str = CHAMPION_ALIAS, model_name: str = REGISTERED_MODEL_NAME
) -> str | None:
    """Version number currently holding `alias`, or None."""
    client = _client(tracking_uri)
    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except Exception as exc:  # mlflow raises MlflowException for a missing alias/model
        logger.debug("no %s alias on %s: %s", alias, model_name, exc)
        return None


def version_metric(
    tracking_uri: str, version: str, metric: str, model_name: str = REGISTERED_MODEL_NAME
) -> float | None:
    """A metric logged on the run that produced a model version."""
    client = _client(tracking_uri)
    mv = client.get_model_version(model_name, version)
    run = client.get_run(mv.run_id)
    value = run.data.metrics.get(metric.replace("@", "_at_"))
    return None if value is None else float(value)


def promotion_gate(
    tracking_uri: str,
    ref: ModelRef,
    candidate_score: float,
    baseline_score: float,
    champion_score_on_holdout: float | None,
    margin: float,
    baseline_name: str = "popularity",
    candidate_vs_champion: float | None = None,
    noise: float = 0.0,
    gap_se: float | None = None,
) -> GateDecision:
    """Promote `ref` to champion if it beats the (strongest) baseline by `margin` and `noise` (an absolute bar on
    top: a multiple of the gap's standard error) and the current champion by `margin`. `candidate_vs_champion` is
    the candidate's score on the rows the champion was scored on, when those are not the whole holdout (default:
    `candidate_score`). `gap_se` (recorded): the standard error of the per-user gap to the baseline."""
    client = _client(tracking_uri)
    champion = alias_version(tracking_uri, CHAMPION_ALIAS, ref.name)
    beats_baseline = candidate_score > baseline_score * (1.0 + margin) + noise
    against = candidate_score if candidate_vs_champion is None else candidate_vs_champion
    beats_champion = (
        champion is None or champion_score_on_holdout is None or against > champion_score_on_holdout * (1.0 + margin)
    )
    promoted = beats_baseline and beats_champion and champion != ref.version
    if champion == ref.version:
        reason = "already champion"
    elif not beats_baseline:
        reason = (
            f"{GATE_METRIC} {candidate_score:.4f} does not beat {baseline_name} {baseline_score:.4f} by {margin:.0%}"
            + (f" + {noise:.4f} (its noise bar)" if noise else "")
        )
    elif not beats_champion:
        reason = (
            f"{GATE_METRIC} {against:.4f} does not beat champion v{champion} "
            f"({champion_score_on_holdout:.4f}) by {margin:.0%}"
            + (" on the held-out events it was not trained with" if candidate_vs_champion is not None else "")
        )
    else:
        reason = f"beats {baseline_name} and {'champion v' + champion if champion else 'no previous champion'}"
        if champion and champion_score_on_holdout is None:
            reason = (
                f"beats {baseline_name}; champion v{champion} not compared: no held-out event after its training data"
            )
    alias = CHAMPION_ALIAS if promoted or champion == ref.version else CHALLENGER_ALIAS
    client.set_registered_model_alias(ref.name, alias, ref.version)
    numbers = {
        "gate.candidate_score": candidate_score,
        "gate.baseline_score": baseline_score,
        "gate.champion_score": champion_score_on_holdout,
        "gate.candidate_vs_champion_score": candidate_vs_champion,
        "gate.margin": margin,
        "gate.noise": noise,
        "gate.gap_se": gap_se,
    }
    for key, value in {
        "gate.decision": "promoted" if promoted else ("kept" if champion == ref.version else "challenger"),
        "gate.reason": reason,
        "gate.champion_before": champion or "none",
        "gate.baseline": baseline_name,
        "gate.metric": GATE_METRIC,
        **{k: "none" if v is None else f"{v:.6f}" for k, v in numbers.items()},
    }.items():
        client.set_model_version_tag(ref.name, ref.version, key, value)
        client.set_tag(ref.run_id, key, value)
    for key, value in numbers.items():
        if value is not None:
            client.log_metric(ref.run_id, key, float(value))
    logger.info("promotion gate for v%s: %s (%s)", ref.version, alias, reason)
    return GateDecision(
        version=ref.version,
        promoted=promoted,
        alias=alias,
        reason=reason,
        candidate_score=candidate_score,
        baseline_score=baseline_score,
        champion_version=champion,
        champion_score=champion_score_on_holdout,
    )


def promote(tracking_uri: str, ref: ModelRef, reason: str, numbers: dict[str, float]) -> GateDecision:
    """Make `ref` champion outright (a baseline version served because it beat the ranker), recording why."""
    client = _client(tracking_uri)
    before = alias_version(tracking_uri, CHAMPION_ALIAS, ref.name)
    client.set_registered_model_alias(ref.name, CHAMPION_ALIAS, ref.version)
    for key, value in {
        "gate.decision": "promoted",
        "gate.reason": reason,
        "gate.champion_before": before or "none",
        "gate.metric": GATE_METRIC,
        **{k: f"{v:.6f}" for k, v in numbers.items()},
    }.items():
        client.set_model_version_tag(ref.name, ref.version, key, value)
        client.set_tag(ref.run_id, key, value)
    logger.info("v%s is champion: %s", ref.version, reason)
    score = numbers.get("gate.candidate_score", float("nan"))
    return GateDecision(ref.version, True, CHAMPION_ALIAS, reason, score, score, before, None)


def load_ranker(tracking_uri: str, version_or_alias: str, model_name: str = REGISTERED_MODEL_NAME) -> tuple[Any, str]:
    """Load a registered LightGBM booster by version number or alias; returns (booster, version)."""
    import mlflow

    client = _client(tracking_uri)
    if version_or_alias.isdigit():
        version = version_or_alias
    else:
        version = str(client.get_model_version_by_alias(model_name, version_or_alias).version)
    booster = mlflow.lightgbm.load_model(f"models:/{model_name}/{version}")
    return booster, version


def registry_uri(version_or_alias: str, model_name: str = REGISTERED_MODEL_NAME) -> str:
    """The `models:/` URI of a version number (`models:/name/3`) or an alias (`models:/name@champion`)."""
    if not version_or_alias:
        raise ValueError("a model version number or alias is required")
    if version_or_alias.isdigit():
        return f"models:/{model_name}/{version_or_alias}"
    return f"models:/{model_name}@{version_or_alias}"


def load_pyfunc(tracking_uri: str, version_or_alias: str, model_name: str = REGISTERED_MODEL_NAME) -> Any:
    """Load a registered ranker as a generic MLflow pyfunc (pandas in, scores out, schema enforced)."""
    import mlflow

    _client(tracking_uri)
    return mlflow.pyfunc.load_model(registry_uri(version_or_alias, model_name))


def pyfunc_serve_command(
    tracking_uri: str,
    version_or_alias: str,
    host: str = "127.0.0.1",
    port: int = 5001,
    model_name: str = REGISTERED_MODEL_NAME,
) -> tuple[list[str], dict[str, str]]:
    """Argv and environment that serve a registered ranker with MLflow's scoring server (`/invocations`).

    `--env-manager local` reuses this environment (the model's dependencies are this project's);
    the interpreter's bin directory goes first on PATH because MLflow starts `uvicorn` by name.
    """
    import os
    import sys

    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_REGISTRY_URI": tracking_uri}
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    argv = [
        str(Path(bin_dir) / "mlflow"),
        "models",
        "serve",
        "--model-uri",
        registry_uri(version_or_alias, model_name),
        "--env-manager",
        "local",
        "--host",
        host,
        "--port",
        str(port),
    ]
    return argv, env
