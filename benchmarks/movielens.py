"""MovieLens-100k quality benchmark: popularity, EASE, the temporal ensemble and the two-stage LightGBM ranker.

    python benchmarks/movielens.py [--path DIR] [--seeds 42 43 44] [--no-mlflow]

Without --path the RecBole ml-100k files are extracted from the recbole==1.2.1 wheel (cached).
"""

from __future__ import annotations

import os

# LightGBM's OpenMP threads spin while waiting; on a shared 2-core box that starves them (10x slower).
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
from pathlib import Path  # noqa: E402

from recsys_platform.movielens_benchmark import HEADLINE_METRICS, MODELS, run_movielens_benchmark  # noqa: E402

PUBLISHED_NDCG = {"BiVAE": 0.475, "BPR": 0.442, "LightGCN": 0.420, "NCF": 0.396, "SAR": 0.382}


def main() -> None:
    """Parse arguments, run the benchmark and print the results table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", type=Path, default=None, help="RecBole ml-100k dir, u.data or ratings.csv")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--no-mlflow", action="store_true", help="do not log runs to MLflow")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the full result dict here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    result = run_movielens_benchmark(
        args.path, seeds=tuple(args.seeds), log_to_mlflow=not args.no_mlflow,
        tracking_uri=args.tracking_uri, models=args.models,
    )  # fmt: skip
    print(f"\nMovieLens-100k ({result['protocol']}), seeds {args.seeds}")
    print("per seed:")
    for run in result["runs"]:
        m = run["metrics"]
        cells = "  ".join(f"{k}={m[k]:.4f}" for k in HEADLINE_METRICS)
        print(f"  {run['model']:<11} seed={run['seed']}  {cells}  wall={run['wall_s']:.1f}s")
    header = f"{'model':<11}" + "".join(f"{name:>18}" for name in HEADLINE_METRICS) + f"{'wall s':>14}{'peak MiB':>10}"
    print("\n" + header + "\n" + "-" * len(header))
    for model, s in result["summary"].items():
        cells = "".join(f"{s[name]['mean']:>10.4f} ± {s[name]['std']:.3f}" for name in HEADLINE_METRICS)
        print(f"{model:<11}{cells}{s['wall_s']['mean']:>8.1f} ± {s['wall_s']['std']:.1f}{s['peak_mib']:>10.0f}")
    print(
        "\nmap@10 divides by min(n_relevant, 10) (Recommenders map_at_k); "
        "map_full@10 by n_relevant (their published table)."
    )
    print("published nDCG@10 (same protocol): " + ", ".join(f"{k} {v}" for k, v in PUBLISHED_NDCG.items()))
    print(f"peak memory: {result['memory_measure']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
