"""Write the quickstart's synthetic data as a plays file for `benchmarks/quality.py` (the served-path benchmark).

    python benchmarks/synthetic_plays.py plays.csv [--users 5000] [--days 28] [--seed 42] [--tastes latent]
    python benchmarks/quality.py --interactions plays.csv --user-col user_id --item-col item_id --time-col ts \\
        --event-col event_type --protocol per-user --protocol global

The generator is the quickstart's (`recsys_platform.dev.generator`, latent tastes by default), ending at a fixed
time so that the file is the same on every machine. Content starts, completions and favourites are written, one
row per event (user_id, item_id, ts in ISO 8601 UTC, event_type); the product imports them as it imports any
event file, and a title played twice is two rows, so a test row can replay a train item.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from recsys_platform.dev.generator import GeneratorConfig, generate  # noqa: E402

END = datetime(2026, 11, 1, tzinfo=UTC)
PLAY_EVENTS = ("content_start", "content_complete", "favorite")


def plays(users: int, days: int, seed: int, tastes: str) -> pl.DataFrame:
    """The generated events the quality benchmark reads, in time order."""
    ds = generate(GeneratorConfig(n_users=users, days=days, seed=seed, end=END, tastes=tastes))
    return (
        ds.events.filter(pl.col("event_type").is_in(PLAY_EVENTS) & pl.col("item_id").is_not_null())
        .sort("event_time", "event_id")
        .select(
            "user_id",
            "item_id",
            ts=pl.col("event_time").dt.to_string("%Y-%m-%dT%H:%M:%S%.6fZ"),
            event_type="event_type",
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the CSV file to write")
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--seed", type=int, default=42, help="the quickstart's seed is 42")
    parser.add_argument("--tastes", choices=("latent", "profile"), default="latent")
    args = parser.parse_args()
    frame = plays(args.users, args.days, args.seed, args.tastes)
    frame.write_csv(args.out)
    counts = dict(frame.group_by("event_type").len().iter_rows())
    print(f"{frame.height:,} rows for {frame['user_id'].n_unique():,} users written to {args.out}: {counts}")


if __name__ == "__main__":
    main()
