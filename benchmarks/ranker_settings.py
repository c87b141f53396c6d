"""How the ranker's learning rate and the number of label users per training window were chosen.

    python benchmarks/ranker_settings.py --dataset ml-100k [--path ../shared/data/ml-100k]
    python benchmarks/ranker_settings.py --dataset synthetic --seed 11

Only training data is ever read. ml-100k: the train part of the per-user temporal protocol (each user's
first 80% by time, as `benchmarks/quality.py` splits it; the held-out 20% is never loaded), imported with
`recsys import --movielens ... --ingest` into a temporary home as a user would. synthetic: the latent-taste
generator on a development seed (the quickstart reports seed 42; do not choose on it).

On that data the product builds its training set (`procedure.choose_params` + `procedure.training_set`).
Its queries (a user in a window) are then split by `--splits` seeds: 10% compare, 10% early stopping, the
rest fit. Each variant (learning rate x label users per window, the other LightGBM settings as
`model.ranker.LGBM_PARAMS`) is trained on the fit queries, early-stopped on the stopping ones, and scored
by nDCG@10 (gain 2^relevance - 1) of its order of the compare queries' candidates. Prints seconds, trees
and the compare nDCG per variant, with the mean over splits.

Measured at the commit that set LGBM_PARAMS' learning rate to 0.05 and ModelParams.label_users to 1,000
(2 cores, the other core busy): see that commit's message and model/ranker.py's comment for the figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from recsys_platform.features.tables import build_interactions, read_history
from recsys_platform.model import procedure
from recsys_platform.model.candidates import FEATURES
from recsys_platform.model.params import ModelParams
from recsys_platform.model.ranker import EARLY_STOPPING_MIN_TREES, EARLY_STOPPING_ROUNDS, LGBM_PARAMS, early_stopping

DISCOUNT = 1.0 / np.log2(np.arange(2, 12))


def ml100k_interactions(path: Path | None, work: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """The per-user protocol's train part, imported and ingested by the product in a home under `work`."""
    from recsys_platform.config import Settings
    from recsys_platform.ingest.movielens import fetch_recbole_ml100k
    from recsys_platform.quality_benchmark.holdout import read_interactions, split, write_part
    from recsys_platform.quality_benchmark.run import product_environment, recsys_command

    path = path or fetch_recbole_ml100k(Settings.from_env().home / "datasets")
    data = read_interactions(path)
    train = split(data, "per-user").train
    source = write_part(data, train, work / "data")
    env, _ = product_environment(work / "home", {})
    command = [*recsys_command(), "import", "--movielens", str(source), "--ingest"]
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    lake = work / "home" / "lake"
    items, users = pl.read_parquet(lake / "items.parquet"), pl.read_parquet(lake / "users.parquet")
    return build_interactions(pl.scan_parquet(str(lake / "raw_events" / "*.parquet")), items), items, users


def synthetic_interactions(seed: int, n_users: int, days: int) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Latent-taste synthetic events (a fixed end, so the data is the same on every run)."""
    from recsys_platform.dev.generator import GeneratorConfig, generate

    cfg = GeneratorConfig(n_users=n_users, days=days, seed=seed, tastes="latent", end=datetime(2026, 11, 1, tzinfo=UTC))
    ds = generate(cfg)
    return build_interactions(ds.events, ds.items), ds.items, ds.users


def query_ndcg(query: np.ndarray, scores: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Mean nDCG@k over queries (rows of a query contiguous), gain 2^label - 1, as LightGBM's lambdarank."""
    starts = np.flatnonzero(np.r_[True, query[1:] != query[:-1]])
    ends = np.r_[starts[1:], len(query)]
    values = []
    for a, b in zip(starts, ends, strict=True):
        gain = 2.0 ** labels[a:b] - 1
        top = gain[np.argsort(-scores[a:b], kind="stable")[:k]]
        ideal = np.sort(gain)[::-1][:k]
        if ideal.sum() > 0:
            values.append((top * DISCOUNT[: len(top)]).sum() / (ideal * DISCOUNT[: len(ideal)]).sum())
    return float(np.mean(values)) if values else float("nan")


def run_variant(
    frame: pl.DataFrame,
    split_seed: int,
    learning_rate: float,
    label_users: int,
    patience: int = EARLY_STOPPING_ROUNDS,
    min_trees: int = EARLY_STOPPING_MIN_TREES,
    columns: tuple[str, ...] = FEATURES,
    scored: dict | None = None,
    members: int = 1,
    member_floor: int | None = None,
) -> dict:
    """Train one variant (on the feature `columns`) on the fit queries of `split_seed` and score it on the
    compare queries (their row mask and scores go into `scored` when given)."""
    import lightgbm as lgb

    query = procedure.query_ids(frame)
    x = frame.select([pl.col(c).cast(pl.Float32) for c in columns]).to_numpy()
    y = frame["relevance"].to_numpy()
    weight = procedure.window_weights(frame, query, ModelParams().balance_windows)
    has_pos = np.bincount(query, y > 0, minlength=query.max() + 1)[query] > 0
    draw = np.random.default_rng(split_seed).random(query.max() + 1)[query]
    compare, stop, fit = has_pos & (draw < 0.1), has_pos & (draw >= 0.1) & (draw < 0.2), has_pos & (draw >= 0.2)
    if label_users:  # at most label_users fit queries per window, a seeded sample as procedure.training_set draws
        window = frame["window"].to_numpy()
        keep = np.zeros(len(y), bool)
        for name in np.unique(window):
            chosen = np.unique(query[fit & (window == name)])
            if len(chosen) > label_users:
                chosen = np.random.default_rng(ModelParams().seed).choice(chosen, label_users, replace=False)
            keep |= fit & (window == name) & np.isin(query, chosen)
        fit = keep

    def groups(mask: np.ndarray) -> np.ndarray:
        return np.unique(query[mask], return_counts=True)[1]

    started = time.perf_counter()
    scores, trees = np.zeros(int(compare.sum())), []
    for member in range(members):  # a bag: the mean score of rankers that differ only in their seed
        model = lgb.LGBMRanker(
            **{**LGBM_PARAMS, "learning_rate": learning_rate}, random_state=ModelParams().seed + member, n_jobs=1
        )
        model.fit(
            x[fit],
            y[fit],
            sample_weight=weight[fit],
            group=groups(fit),
            eval_set=[(x[stop], y[stop])],
            eval_group=[groups(stop)],
            eval_sample_weight=[weight[stop]],
            eval_at=[10],
            callbacks=[early_stopping(patience, min_trees if member == 0 or member_floor is None else member_floor)],
        )
        scores += model.predict(x[compare], num_iteration=model.best_iteration_) / members
        trees.append(int(model.best_iteration_))
    seconds = time.perf_counter() - started
    if scored is not None:
        scored.update(compare=compare, scores=scores, query=query)
    return {
        "split": split_seed,
        "learning_rate": learning_rate,
        "label_users": label_users,
        "patience": patience,
        "min_trees": min_trees,
        "fit_rows": int(fit.sum()),
        "members": members,
        "member_floor": -1 if member_floor is None else member_floor,
        "trees": int(np.mean(trees)),
        "seconds": round(seconds, 1),
        "compare_ndcg@10": round(query_ndcg(query[compare], scores, y[compare]), 4),
    }


def data_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options that say which training data a ranker-settings script reads, and its splits."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("ml-100k", "synthetic"), required=True)
    parser.add_argument("--path", type=Path, help="ml-100k files (default: from the recbole wheel)")
    parser.add_argument("--seed", type=int, default=11, help="synthetic: a development seed (not 42)")
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--splits", type=int, nargs="+", default=[1, 2, 3])
    return parser


def main() -> None:
    parser = data_parser(__doc__)
    parser.add_argument("--learning-rate", type=float, nargs="+", default=[0.01, 0.05, 0.1])
    parser.add_argument("--label-users", type=int, nargs="+", default=[0], help="0: no cap beyond 4,000")
    parser.add_argument(
        "--patience", type=int, nargs="+", default=[EARLY_STOPPING_ROUNDS], help="early-stopping rounds"
    )
    parser.add_argument(
        "--min-trees", type=int, nargs="+", default=[EARLY_STOPPING_MIN_TREES], help="no early stop before these"
    )
    parser.add_argument("--members", type=int, nargs="+", default=[1], help="rankers averaged (seeds differ)")
    parser.add_argument(
        "--member-floor", type=int, nargs="+", default=[-1], help="min trees of later members (-1: as the first)"
    )
    parser.add_argument("--windows", help="training windows (default: ModelParams'; e.g. random)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.dataset == "ml-100k":
            interactions, items, users = ml100k_interactions(args.path, Path(tmp))
        else:
            interactions, items, users = synthetic_interactions(args.seed, args.users, args.days)
        history = read_history(interactions)
        base = ModelParams(training_windows=args.windows) if args.windows else ModelParams()
        params, _ = procedure.choose_params(history, items, users, base, 4000)
        frame = procedure.training_set(history, items, users, params.with_(label_users=0), 4000)
    print(f"{args.dataset}: training set of {frame.height} rows, {frame['user_id'].n_unique()} users", flush=True)
    rows = []
    for split_seed in args.splits:
        for label_users in args.label_users:
            for lr in args.learning_rate:
                for patience in args.patience:
                    for min_trees in args.min_trees:
                        for members in args.members:
                            for floor in args.member_floor if members > 1 else [-1]:
                                row = run_variant(
                                    frame,
                                    split_seed,
                                    lr,
                                    label_users,
                                    patience,
                                    min_trees,
                                    members=members,
                                    member_floor=None if floor < 0 else floor,
                                )
                                rows.append(row)
                                print(json.dumps(row), flush=True)
    table = (
        pl.DataFrame(rows)
        .group_by("learning_rate", "label_users", "patience", "min_trees", "members", "member_floor")
        .agg(pl.col("compare_ndcg@10").mean().round(4), pl.col("seconds").mean().round(1), pl.col("trees").mean())
        .sort("label_users", "learning_rate", "patience", "min_trees", "members", "member_floor")
    )
    with pl.Config(tbl_rows=50, tbl_hide_dataframe_shape=True):
        print(table)
    if args.json:
        args.json.write_text(json.dumps({"dataset": args.dataset, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
