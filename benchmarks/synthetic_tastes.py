"""Benchmark: how learnable each generator taste mode is, by collaborative filtering vs popularity.

    python benchmarks/synthetic_tastes.py --users 3000 --days 21 --holdout-days 5

For each mode (`--tastes`, default both), generates the data, splits plays (`content_start`) at a
cutoff `--holdout-days` before the end, fits EASE (binary user x item matrix, `--l2`) and all-time
popularity on the plays before it, and scores nDCG@10 on each user's new items after it (items the
user played before the cutoff are excluded). Also prints the head of the play distribution and the
completion rate, the shape the rest of the pipeline sees.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta

import polars as pl

FIXED_END = datetime(2026, 10, 1, 12, tzinfo=UTC)


def holdout_scores(events: pl.DataFrame, cutoff: datetime, l2: float, k: int = 10) -> dict[str, float]:
    """nDCG@k of EASE and of popularity fitted on plays before `cutoff`, on new items played after it."""
    from recsys_platform.model.evaluation import ndcg_at_k
    from recsys_platform.model.params import ModelParams
    from recsys_platform.quality_benchmark.baselines import fit_baseline, pair_history, top_k_unseen
    from recsys_platform.quality_benchmark.holdout import ITEM, TIME, USER

    plays = events.filter(pl.col("event_type") == "content_start").select("user_id", "item_id", "event_time")
    train = plays.filter(pl.col("event_time") < cutoff).select("user_id", "item_id").unique()
    truth = (
        plays.filter(pl.col("event_time") >= cutoff)
        .select("user_id", "item_id")
        .unique()
        .join(train, on=["user_id", "item_id"], how="anti")
        .join(train.select("user_id").unique(), on="user_id", how="semi")
    )
    users = truth["user_id"].unique()
    history = pair_history(
        train.select(pl.col("user_id").alias(USER), pl.col("item_id").alias(ITEM), pl.lit(0.0).alias(TIME)), 1.0
    )

    def top(source: str) -> pl.DataFrame:
        return top_k_unseen(fit_baseline(source, history, ModelParams(ease_l2=l2)), history, users, k)

    return {
        "ease": ndcg_at_k(truth, top("ease"), k),
        "popularity": ndcg_at_k(truth, top("pop"), k),
        "test_users": float(users.len()),
    }


def play_shape(events: pl.DataFrame) -> dict[str, float]:
    """Share of plays on the top 1% and 10% of played items, and the completion rate."""
    counts = events.filter(pl.col("event_type") == "content_start")["item_id"].value_counts(sort=True)["count"]
    n = counts.len()
    starts = counts.sum()
    completes = events.filter(pl.col("event_type") == "content_complete").height
    return {
        "top1pct": counts.head(max(1, n // 100)).sum() / starts,
        "top10pct": counts.head(max(1, n // 10)).sum() / starts,
        "completion": completes / starts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--days", type=int, default=21)
    parser.add_argument("--holdout-days", type=int, default=5)
    parser.add_argument("--l2", type=float, default=200.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--tastes", choices=["latent", "profile"], action="append")
    args = parser.parse_args()
    from recsys_platform.dev.generator import GeneratorConfig, generate

    header = ("ease", "pop", "ratio", "users", "top1%", "top10%", "compl", "s")
    print(f"{'tastes':8} " + " ".join(f"{h:>7}" for h in header))
    for tastes in args.tastes or ["latent", "profile"]:
        t0 = time.perf_counter()
        cfg = GeneratorConfig(n_users=args.users, days=args.days, seed=args.seed, end=FIXED_END, tastes=tastes)
        events = generate(cfg).events
        scores = holdout_scores(events, FIXED_END - timedelta(days=args.holdout_days), args.l2)
        shape = play_shape(events)
        print(
            f"{tastes:8} {scores['ease']:7.4f} {scores['popularity']:7.4f} "
            f"{scores['ease'] / scores['popularity']:7.2f} {scores['test_users']:7.0f} "
            f"{shape['top1pct']:7.3f} {shape['top10pct']:7.3f} {shape['completion']:7.3f} "
            f"{time.perf_counter() - t0:7.1f}"
        )


if __name__ == "__main__":
    main()
