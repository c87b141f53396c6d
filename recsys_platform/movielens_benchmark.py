"""MovieLens-100k quality benchmark on the Microsoft Recommenders protocol, logged to MLflow.

Protocol: every rating is an implicit positive; per-user stratified random split 75/25 with a
fixed seed; top-10 excluding items seen in train; nDCG, precision, recall and MAP at 10 against
the test ratings. Every choice (EASE l2, iALS l2, EDLAE dropout, l2, DLAE mix and rating power, blend weights,
the availability slack, ranker early stopping) is made on splits of the training part only. Peak memory is the process's
resident-set high-water mark (``ru_maxrss``) after each run, so it never decreases across runs within one process.
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import polars as pl

from recsys_platform.collaborative import fit_ease, fit_popularity
from recsys_platform.evaluation import evaluate_all
from recsys_platform.movielens import MovieLensData, fetch_recbole_ml100k, load_movielens, stratified_split
from recsys_platform.movielens_ensemble import EnsembleConfig, fit_temporal_ensemble
from recsys_platform.movielens_ranker import RankerConfig, fit_two_stage, tune_ease_l2

logger = logging.getLogger(__name__)

EXPERIMENT = "movielens-100k"
K = 10
TRAIN_RATIO = 0.75
MODELS = ("popularity", "ease", "ensemble", "two_stage")
HEADLINE_METRICS = (f"ndcg@{K}", f"precision@{K}", f"recall@{K}", f"map@{K}", f"map_full@{K}")

Recommender = Callable[[pl.DataFrame, MovieLensData, int], tuple[pl.DataFrame, dict]]


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _popularity(train: pl.DataFrame, data: MovieLensData, seed: int) -> tuple[pl.DataFrame, dict]:
    users = train["user_id"].unique()
    return fit_popularity(train).recommend(users, K), {}


def _ease(train: pl.DataFrame, data: MovieLensData, seed: int) -> tuple[pl.DataFrame, dict]:
    l2 = tune_ease_l2(train, seed=seed)
    return fit_ease(train, l2=l2).recommend(train["user_id"].unique(), K), {"ease_l2": l2}


def _ensemble(train: pl.DataFrame, data: MovieLensData, seed: int) -> tuple[pl.DataFrame, dict]:
    model = fit_temporal_ensemble(train, EnsembleConfig(), seed)
    params = {
        "ials_l2": model.ials_reg,
        "edlae_dropout": model.edlae_params[0],
        "edlae_l2": model.edlae_params[1],
        "edlae_dlae_mix": model.dlae_mix,
        "edlae_rating_power": model.rating_power,
        "availability_days": str(model.availability_days),
        "inner_ndcg": round(model.inner_ndcg, 5),
        **{f"weight_{name}": w for name, w in model.weights.items()},
    }
    return model.recommend(K), params


def _two_stage(train: pl.DataFrame, data: MovieLensData, seed: int) -> tuple[pl.DataFrame, dict]:
    cfg = RankerConfig()
    ranker = fit_two_stage(train, cfg, seed)
    params = {
        "ials_l2": ranker.ensemble.ials_reg,
        "edlae_dropout": ranker.ensemble.edlae_params[0],
        "edlae_l2": ranker.ensemble.edlae_params[1],
        "edlae_dlae_mix": ranker.ensemble.dlae_mix,
        "edlae_rating_power": ranker.ensemble.rating_power,
        "availability_days": str(ranker.ensemble.availability_days),
        **{f"weight_{name}": w for name, w in ranker.ensemble.weights.items()},
        "candidates": cfg.candidates,
        "inner_candidate_recall": round(ranker.candidate_recall, 4),
        "best_iteration": ranker.model.best_iteration_,
        **{f"lgbm_{k}": v for k, v in cfg.lgbm.items()},
    }
    return ranker.recommend(K), params


RECOMMENDERS: dict[str, Recommender] = {
    "popularity": _popularity,
    "ease": _ease,
    "ensemble": _ensemble,
    "two_stage": _two_stage,
}


def _summarise(runs: list[dict]) -> dict:
    summary: dict[str, dict] = {}
    for model in dict.fromkeys(r["model"] for r in runs):
        mine = [r for r in runs if r["model"] == model]
        entry = {}
        for name in [*mine[0]["metrics"], "wall_s"]:
            values = np.array([r["metrics"].get(name, r.get(name)) for r in mine], dtype=float)
            entry[name] = {
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            }
        entry["peak_mib"] = max(r["peak_mib"] for r in mine)
        summary[model] = entry
    return summary


def _log_to_mlflow(runs: list[dict], tracking_uri: str | None, dataset: str) -> None:
    import mlflow

    if tracking_uri is None:
        from recsys_platform.config import Settings

        tracking_uri = Settings.from_env().mlflow_tracking_uri
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(EXPERIMENT)
    for run in runs:
        with mlflow.start_run(run_name=f"{run['model']}-seed{run['seed']}"):
            mlflow.log_params(
                {
                    "model": run["model"],
                    "seed": run["seed"],
                    "k": K,
                    "train_ratio": TRAIN_RATIO,
                    "dataset": dataset,
                }
                | run["params"]
            )
            metrics = {name.replace("@", "_at_"): value for name, value in run["metrics"].items()}
            mlflow.log_metrics(metrics | {"wall_s": run["wall_s"], "peak_rss_mib": run["peak_mib"]})
    logger.info("logged %d runs to MLflow experiment %r at %s", len(runs), EXPERIMENT, tracking_uri)


def run_movielens_benchmark(
    path: Path | None,
    seeds: Sequence[int] = (42, 43, 44),
    log_to_mlflow: bool = True,
    tracking_uri: str | None = None,
    models: Sequence[str] = MODELS,
    cache_dir: Path | None = None,
) -> dict:
    """Run every model on every seed; return per-run metrics, mean/std per model, wall time and peak RSS."""
    if path is None:
        if cache_dir is None:
            from recsys_platform.config import Settings

            cache_dir = Settings.from_env().home / "datasets"
        path = fetch_recbole_ml100k(cache_dir)
    data = load_movielens(path)
    runs = []
    for seed in seeds:
        train, test = stratified_split(data.ratings, TRAIN_RATIO, seed)
        for model in models:
            start = time.perf_counter()
            recs, params = RECOMMENDERS[model](train, data, seed)
            metrics = evaluate_all(test, recs, K, n_items=data.ratings["item_id"].n_unique())
            wall = time.perf_counter() - start  # tuning + training + recommending + evaluation
            runs.append(
                {
                    "model": model,
                    "seed": seed,
                    "metrics": metrics,
                    "params": params,
                    "wall_s": wall,
                    "peak_mib": _peak_rss_mib(),
                }  # fmt: skip
            )
            logger.info("%s seed=%d ndcg@%d=%.4f wall=%.1fs", model, seed, K, metrics[f"ndcg@{K}"], wall)
    if log_to_mlflow:
        _log_to_mlflow(runs, tracking_uri, str(path))
    return {
        "dataset": str(path),
        "protocol": f"per-user stratified random split {TRAIN_RATIO:.0%}/{1 - TRAIN_RATIO:.0%}, top-{K}, seen excluded",
        "memory_measure": "ru_maxrss: process peak resident set size (MiB) after the run; monotone across runs",
        "std": "sample standard deviation (ddof=1) over seeds",
        "runs": runs,
        "summary": _summarise(runs),
    }
