"""The iALS source's user step at scoring time: implicit's compiled solver against the batched numpy solve.

    python benchmarks/ials_user_step.py [--users 20000] [--days 30] [--seed 11] [--blocks 5]
    python benchmarks/ials_user_step.py --data /tmp/scale/u1000000_d30/lake   # a saved serving state

The `ials` candidate source (`model.sources.Factors`) fixes the item factors at fit time (implicit's ALS) and solves
each scored user's factors from their profile when a block of users is scored: per user
(YᵀY + l2·I + alpha·Σ y yᵀ) x = (1 + alpha)·Σ y over their items. This times, on blocks of 1000 users (best of 5
each, one thread), implicit's compiled per-user solver (`implicit.cpu._als.least_squares`, what the source used until
0eded55) against `Factors.score` (each user through the smaller of a system of their items' size, by Woodbury's
identity, and one of the factors' size, a batch of systems per size), and checks
that they give the same float32 scores. The item factors are fitted on latent-taste synthetic data (a development
seed), or come from `--data`: a directory with `serving_state.pkl`, `interactions.parquet` and `users.parquet` (the
lake of `benchmarks/scale.py --keep`, or the output of `benchmarks/batch_scoring.py prepare`).

Measured at 0eded55 (2 cores, quiet, one BLAS thread as the scoring blocks have; ms per 1000-user block, best of 5):

    data                                    items  items/user  implicit  batched numpy  identical float32 scores
    1M-user lake (scale.py --keep, 30 days) 2,204    19         66-71       36-38       all (one 5.7e-14 apart)
    default synthetic, 5,000 users x 30 d   1,067    16-18      55-61       26-28       all

In `recommendations` at 1M users that is ~3% of the lists' CPU (a block's candidates, features and ranker take
~750 ms of one core): 20,000 users of that lake on two threads, old and new code interleaved, gave the same lists and
17-19 s of CPU either way, within the run-to-run spread.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def best_of(fn, repeats: int = 5) -> tuple[float, object]:
    """(fastest of `repeats` timings of fn() in seconds, its last result)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def implicit_scores(factors, seen) -> np.ndarray:
    """The user step by implicit's compiled solver, one user at a time in its loop (the reference)."""
    from implicit.cpu import _als

    y = np.ascontiguousarray(factors.item_factors, np.float64)
    confidence = seen.astype(np.float32)
    confidence.data[:] = 1.0 + factors.alpha
    out = np.zeros((confidence.shape[0], y.shape[1]))
    _als.least_squares(confidence, out, y, float(factors.regularization), num_threads=1)
    return (out @ y.T).astype(np.float32)


def history_and_factors(args):
    """(PairHistory of the users to score, fitted Factors)."""
    from recsys_platform.model.history import PairHistory, Vocabulary

    if args.data:
        from recsys_platform.model.state import load_state

        _, rec = load_state(str(args.data / "serving_state.pkl"))
        ids = pl.read_parquet(args.data / "users.parquet", columns=["user_id"])["user_id"].sort()
        ids = ids.head(args.blocks * 1000)
        columns = ["user_id", "item_id", "event_type", "event_time", "is_bounce", "weight"]
        inter = (
            pl.scan_parquet(args.data / "interactions.parquet")
            .select(columns)
            .filter(pl.col("user_id").is_in(ids.implode()))
            .collect()
        )
        cutoff = inter["event_time"].max() + timedelta(microseconds=1)
        vocab = Vocabulary(ids.unique().sort(), rec.vocab.item_ids)
        return PairHistory.build(inter, vocab, cutoff, None, rec.params.text_encoder), rec.sources["ials"]
    from recsys_platform.dev.generator import GeneratorConfig, generate
    from recsys_platform.features.tables import build_interactions
    from recsys_platform.model.catalogue import Catalogue
    from recsys_platform.model.params import ModelParams
    from recsys_platform.model.recommender import build_vocab
    from recsys_platform.model.sources import fit_ials

    ds = generate(
        GeneratorConfig(n_users=args.users, days=args.days, seed=args.seed, end=datetime(2026, 11, 1, tzinfo=UTC))
    )
    inter = build_interactions(ds.events, ds.items)
    params = ModelParams()
    vocab = build_vocab(inter, ds.items, ds.users)
    history = PairHistory.build(inter, vocab, inter["event_time"].max(), None, params.text_encoder)
    return history, fit_ials(history, Catalogue.build(vocab, ds.items, ds.users), params)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--seed", type=int, default=11, help="a development seed (the quickstart reports 42)")
    ap.add_argument("--blocks", type=int, default=5, help="1000-user blocks to time")
    ap.add_argument("--data", type=Path, default=None, help="a directory with a saved serving state (see above)")
    args = ap.parse_args()

    from threadpoolctl import threadpool_limits

    from recsys_platform.model.profiles import Profiles

    history, factors = history_and_factors(args)
    factors.whitened  # noqa: B018 - computed once per process, before the timings
    users = np.unique(history.user)
    print(f"{factors.item_factors.shape[0]:,} items x {factors.item_factors.shape[1]} factors")
    header = ("block", "items/user", "max", "implicit", "batched", "max |diff|")
    print(" ".join(f"{h:>{w}s}" for h, w in zip(header, (5, 10, 5, 10, 10, 11), strict=True)) + " identical")
    with threadpool_limits(1):
        for b in range(min(args.blocks, len(users) // 1000)):
            profiles = Profiles.of(history, users[b * 1000 : (b + 1) * 1000])
            counts = np.diff(profiles.seen.indptr)
            t_ref, ref = best_of(lambda p=profiles: implicit_scores(factors, p.seen.tocsr()))
            t_new, new = best_of(lambda p=profiles: factors.score(p))
            diff = float(np.abs(ref - new).max())
            print(
                f"{b:5d} {counts.mean():10.1f} {counts.max():5d} {t_ref * 1e3:8.1f}ms {t_new * 1e3:8.1f}ms "
                f"{diff:11.1e} {np.mean(ref == new):.4%}"
            )


if __name__ == "__main__":
    main()
