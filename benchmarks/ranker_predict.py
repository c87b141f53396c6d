"""Ranker inference: LightGBM's Booster.predict vs the compiled ranker (lleaves) vs the numpy evaluator.

    python benchmarks/ranker_predict.py [--users 3000] [--days 21] [--seed 11]

Trains the product's ranker with the training procedure on latent-taste synthetic data (a development
seed), builds the candidate rows of every user the way batch scoring does (`Recommender.block`), and
times, single-threaded, on the same rows: `Booster.predict`, `model.compiled.CompiledRanker.predict`
and `realtime.tree_model.TreeEnsemble.predict`: for every block of users (batch scoring), and for one
user and for 50 users (what a near-real-time refresh scores). Also the one-off costs a fresh process
pays before its first prediction: importing lightgbm, compiling (cache miss) or loading the cached
object file, parsing the model for numpy. Parity: the largest absolute difference to Booster.predict.

Measured (2 cores, the other busy with a quality benchmark; defaults: 283 trees, 52 features; best of 5 or 50):

    rows                        Booster    compiled     numpy    compiled vs Booster
    a batch block (160,596)     1168 ms      195 ms   5147 ms     6.0x
    50 users (8,029)            57.5 ms     10.6 ms    182 ms     5.4x
    1 user (160)                0.91 ms     0.06 ms    33.9 ms   14.8x
    parity: compiled max |diff| 1.2e-14, numpy 0
    fresh process: import lightgbm + load 1.49 s; compile (cache miss) 2.65 s; import lleaves + load the cached
    object 0.58 s; numpy evaluator import + parse 0.12 s

So batch scoring, `recommendations` and the registry's scorer use the compiled ranker; the near-real-time refresh,
a fresh process that scores a few dozen users (median 27 in `benchmarks/freshness.py`), keeps the numpy evaluator:
0.12 s + 0.18 s for 50 users against 0.58 s + 0.01 s compiled.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def best_of(fn, repeats: int) -> float:
    """The fastest of `repeats` timings of fn() in seconds (the least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def fresh_process_seconds(code: str, repeats: int = 3) -> float:
    """Median wall time of a fresh interpreter running `code`, minus that of an empty one."""

    def run(snippet: str) -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", snippet], cwd=ROOT, check=True)
        return time.perf_counter() - t0

    base = statistics.median(run("pass") for _ in range(repeats))
    return statistics.median(run(code) for _ in range(repeats)) - base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--days", type=int, default=21)
    ap.add_argument("--seed", type=int, default=11, help="a development seed (the quickstart reports 42)")
    args = ap.parse_args()

    from recsys_platform.dev.generator import GeneratorConfig, generate
    from recsys_platform.features.tables import build_interactions
    from recsys_platform.model import procedure
    from recsys_platform.model.compiled import compile_ranker
    from recsys_platform.model.params import ModelParams
    from recsys_platform.realtime.tree_model import TreeEnsemble

    ds = generate(
        GeneratorConfig(n_users=args.users, days=args.days, seed=args.seed, end=datetime(2026, 11, 1, tzinfo=UTC))
    )
    inter = build_interactions(ds.events, ds.items)
    cutoff = inter["event_time"].max()
    rec = procedure.fit_recommender(inter, ds.items, ds.users, cutoff, ModelParams(), 4000)
    booster = rec.scorer
    text = booster.model_to_string()
    rows = np.arange(min(1000, rec.vocab.n_users))
    _, block = rec.block(rows)
    x = np.ascontiguousarray(block.features, dtype=np.float64)
    trees, n_features = booster.num_trees(), booster.num_feature()
    print(f"ranker: {trees} trees, {n_features} features; {len(x):,} candidate rows of {len(rows)} users")

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        compiled = compile_ranker(text, Path(tmp))
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        compile_ranker(text, Path(tmp))  # from the cache
        load_s = time.perf_counter() - t0
        if compiled is None:
            raise SystemExit("lleaves is not installed: pip install -e . installs it")
        numpy_model = TreeEnsemble.from_text(text)

        ref = booster.predict(x, num_threads=1)
        print(
            f"parity: compiled max |diff| {np.abs(compiled.predict(x) - ref).max():.1e}, "
            f"numpy {np.abs(numpy_model.predict(x) - ref).max():.1e}"
        )
        per_user = len(x) / len(rows)
        sizes = {"batch block": len(x), "50 users (a refresh)": int(50 * per_user), "1 user": int(per_user)}
        print(f"{'rows':28s} {'Booster':>12s} {'compiled':>12s} {'numpy':>12s} {'compiled vs Booster':>20s}")
        for label, n in sizes.items():
            part = x[:n]
            repeats = 5 if n > 10_000 else 50
            b = best_of(lambda p=part: booster.predict(p, num_threads=1), repeats)
            c = best_of(lambda p=part: compiled.predict(p), repeats)
            t = best_of(lambda p=part: numpy_model.predict(p), repeats)
            print(f"{label + f' ({n:,})':28s} {b * 1e3:10.2f}ms {c * 1e3:10.2f}ms {t * 1e3:10.2f}ms {b / c:19.1f}x")

        model_file = Path(tmp) / "model.txt"
        model_file.write_text(text)
        cache = Path(tmp) / "fresh-cache"
        print("one-off costs in a fresh process (median of 3, seconds):")
        lgb_load = f"import lightgbm as l; l.Booster(model_file={str(model_file)!r})"
        print(f"  import lightgbm + load the model   {fresh_process_seconds(lgb_load):.2f}")
        load = (
            "from pathlib import Path; from recsys_platform.model.compiled import compile_ranker; "
            f"compile_ranker(Path({str(model_file)!r}).read_text(), Path({str(cache)!r}))"
        )
        print(f"  compile (first process, cache miss) {compile_s:.2f} (in this process)")
        print(f"  import lleaves + load the cached .o {fresh_process_seconds(load):.2f} (cache warm after the first)")
        print(f"  load from the cache, warm process   {load_s:.3f}")
        parse = (
            "from pathlib import Path; from recsys_platform.realtime.tree_model import TreeEnsemble; "
            f"TreeEnsemble.from_text(Path({str(model_file)!r}).read_text())"
        )
        print(f"  numpy evaluator: import + parse     {fresh_process_seconds(parse):.2f}")


if __name__ == "__main__":
    main()
