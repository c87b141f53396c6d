"""Benchmark: batch-score every user (up to 500 items each) and write the recommendation sets.

    python benchmarks/batch_scoring.py prepare --users 1000000 --days 14 --out /tmp/bench-batch
    python benchmarks/batch_scoring.py run --data /tmp/bench-batch --shards 16

`prepare` (not timed) generates the synthetic history, builds interactions and trains a ranker
on a sample; `run` (timed, peak memory of its own process) scores every shard with that model,
applies the recommendation-set rules and writes the lake tables and the JSON-lines export.
"""

from __future__ import annotations

import argparse
import logging
import resource
import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

FIXED_END = datetime(2026, 10, 1, 12, tzinfo=UTC)


def prepare(out: Path, n_users: int, days: int, seed: int, chunk_users: int = 100_000) -> None:
    """Generate data chunk by chunk (as `generator.generate` does), keep interactions and searches, train a ranker."""
    from datetime import timedelta

    import numpy as np

    from recsys_platform import generator
    from recsys_platform.config import PipelineParams
    from recsys_platform.features import build_interactions
    from recsys_platform.ranking import TemporalSplit, train_ranker, training_frame

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cfg = generator.GeneratorConfig(n_users=n_users, days=days, seed=seed, end=FIXED_END)
    start = cfg.resolved_end() - timedelta(days=cfg.days)
    items = generator._make_items(cfg, np.random.default_rng([cfg.seed, 0]), start)
    users = generator._make_users(cfg, np.random.default_rng([cfg.seed, 3]), start)
    items.write_parquet(out / "items.parquet")
    users.write_parquet(out / "users.parquet")
    parts, searches = [], []
    for k, off in enumerate(range(0, n_users, chunk_users)):
        events = generator._simulate_events(cfg, items, users.slice(off, chunk_users), start, k)
        searches.append(events.filter(pl.col("event_type") == "search").select("user_id", "event_time", "query"))
        parts.append(build_interactions(events.lazy(), items))
        print(f"chunk {k}: {events.height:,} events at {time.perf_counter() - t0:.0f}s", flush=True)
        del events
    pl.concat(searches).write_parquet(out / "searches.parquet")
    interactions = pl.concat(parts).sort("event_time", "event_id")
    del parts
    interactions.write_parquet(out / "interactions.parquet")
    print(f"{interactions.height:,} interactions at {time.perf_counter() - t0:.0f}s", flush=True)
    params = PipelineParams()
    split = TemporalSplit.from_interactions(interactions, params.label_days)
    train = training_frame(interactions, items, users, split.eval_cutoff, split.end, params, params.max_training_users)
    model = train_ranker(train, params)
    model.booster_.save_model(str(out / "ranker.txt"))
    print(f"prepared {out} in {time.perf_counter() - t0:.0f}s; peak RSS {_peak_gib():.1f} GiB", flush=True)


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--days", type=int, default=14)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.cmd == "prepare":
        prepare(args.out, args.users, args.days, args.seed)


if __name__ == "__main__":
    main()
