"""Does the experiment analysis find a real effect and only a real one? Simulated experiments through the product's
own bucketing (`assign_arms`, sha256 of the user id) and analysis (`analyze`: two-proportion z-test on the 24-hour
completion rate, Welch t-test on the counts).

    python benchmarks/experiment_power.py [--users 90000] [--runs 200] [--lift 0.03] [--base-rate 0.4]

Each run: fresh user ids, three arms by the shipped weights (control, popularity, model); every user completes
within 24 h with the base rate, the model arm with base x (1 + lift). Reports how often the model arm is
significant at alpha 0.05 (the power at this traffic), how often it is in an A/A run (lift 0: the false-positive
rate), the analysis's own minimum detectable effect, and the sample-ratio-mismatch check's false alarms.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recsys_platform.batch.set_config import load_sets_config  # noqa: E402
from recsys_platform.config import PROJECT_ROOT  # noqa: E402
from recsys_platform.experiments.ab_tests import analyze, assign_arms  # noqa: E402


def one_run(experiment, n_users: int, lift: float, base_rate: float, run: int) -> dict:
    """One simulated experiment; the model arm's 24-hour completion rate is base x (1 + lift)."""
    ids = [f"sim{run}-{i}" for i in range(n_users)]
    arms = assign_arms(ids, experiment)
    rng = np.random.default_rng(run)
    rate = np.where(arms["arm"].to_numpy() == "model", base_rate * (1 + lift), base_rate)
    completed = (rng.random(n_users) < rate).astype(float)
    outcomes = arms.with_columns(
        experiment=pl.lit(experiment.name),
        completed_24h=pl.Series(completed),
        completion_days=pl.Series(completed * rng.integers(1, 4, n_users)),
        content_starts=pl.Series(completed + rng.poisson(2.0, n_users)),
    )
    table = analyze(outcomes, experiment.control, weights=experiment.arms)
    row = table.filter((pl.col("metric") == "completed_24h") & (pl.col("arm") == "model")).row(0, named=True)
    return {"significant": row["significant"], "mde": row["mde"], "srm_p": row["srm_p_value"], "n": row["n"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=90_000, help="users per simulated experiment (all arms)")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--lift", type=float, default=0.03, help="relative lift of the model arm")
    parser.add_argument("--base-rate", type=float, default=0.4)
    args = parser.parse_args()
    experiment = load_sets_config(PROJECT_ROOT / "config" / "recommendation_sets.yaml").experiments[0]
    started = time.perf_counter()
    results = {}
    for name, lift, offset in (("effect", args.lift, 0), ("aa", 0.0, 1_000_000)):
        runs = [one_run(experiment, args.users, lift, args.base_rate, offset + r) for r in range(args.runs)]
        hits = sum(r["significant"] for r in runs)
        results[name] = {
            "lift": lift,
            "significant_share": hits / args.runs,
            "mde_relative": float(np.mean([r["mde"] for r in runs])) / args.base_rate,
            "srm_false_alarms": sum(r["srm_p"] < 0.001 for r in runs) / args.runs,
            "model_arm_users": int(np.mean([r["n"] for r in runs])),
        }
    effect, aa = results["effect"], results["aa"]
    print(
        f"{args.runs} runs x {args.users:,} users ({effect['model_arm_users']:,} in the model arm), base rate "
        f"{args.base_rate:.0%}: a +{args.lift:.0%} relative lift was detected in {effect['significant_share']:.1%} "
        f"of runs (power); A/A false positives {aa['significant_share']:.1%} (alpha 5%); the analysis's minimum "
        f"detectable effect {effect['mde_relative']:.2%} relative; SRM false alarms (p < 0.001) "
        f"{aa['srm_false_alarms']:.1%}; {time.perf_counter() - started:.0f} s"
    )
    print(json.dumps({"args": vars(args), **results}))


if __name__ == "__main__":
    main()
