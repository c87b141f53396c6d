"""Benchmark: batch-score every user (up to 500 items each) and write the recommendation sets.

    python benchmarks/batch_scoring.py prepare --users 1000000 --days 14 --out /tmp/bench-batch
    python benchmarks/batch_scoring.py run --data /tmp/bench-batch --out /tmp/bench-batch-out --shards 16

`prepare` (not timed) generates the synthetic history, builds interactions, runs the training
procedure (`model.procedure.fit_recommender`: params tuned and the ranker trained on a sample of
users, every candidate source refitted on all of them) and saves the serving state as the
`recommendations` step does; `run` (timed, peak memory of its own process) loads that state and,
shard by shard, scores every user with `batch_scoring.score_shard` (the shard's own histories
against the saved sources, the ranker on the candidates, the rest of the list filled in EASE and
popularity order, as the `batch_scores` asset does), applies the recommendation-set rules and writes
the lake tables and the JSON-lines export. The next shard is scored in a thread while the current
one's sets are built and written (numpy and polars release the GIL), as two Dagster partitions would
run at once on two cores; `--no-overlap` runs the phases one after the other and prints each one's
CPU seconds.

Measured on the shared 2-core box (load 1.3-3 from other jobs), library code at d635776:
  10k users, 14 days, `run --shards 4`: 37 s wall, peak RSS 0.80 GiB; scoring thread 34 s, rules and
  sets 9 s, writes 3 s (overlapping); 5.0M scored rows, 0.83M set rows, 36k JSON lines. `prepare` 69 s
  (the procedure 68 s; early stopping kept 354 trees).
  100k users, 14 days, `run --shards 8`: 161 s wall, peak RSS 1.62 GiB; scoring thread 154 s, rules and
  sets 48 s, writes 10 s; 50M scored rows, 8.3M set rows, 363k JSON lines. `prepare` 77 s, peak RSS
  2.6 GiB (58 trees).
Scoring takes 1.5-3.4 ms of wall time per user (LightGBM with its default OpenMP threads), growing with
the ranker's trees; at 1M users that is roughly 25-60 minutes (not measured). The previous two-stage
scorer, which ranked 20 candidates per user where this one ranks all of them (~160), ran 1M users in
673 s with a 7.9 GiB peak (8a52b23).
At 6a0f135 (the fill order from one sort of integer keys per row, the tail merged after the sorted candidates by a
stable sort by row, a shared source's ranks read per item; the lists identical), 100k users, `run --shards 8`,
interleaved with cd3a540 on one day when this box ran slow and noisy: 101 s against 123 s, then 122 s against 180 s
(scoring thread 92 and 111 s against 113 and 168 s; process CPU 165 and 200 s against 189 and 264 s).
1M users x 14 days at b08e6a8 (`prepare --users 1000000 --days 14`: 304 s, peak 9.6 GiB; `run --shards 16`, quiet,
on a day this box served the API 1.5 times slower than its best evening): 884 s wall, peak RSS 7.20 GiB; scoring
thread 850 s, rules and sets 532 s, writes 106 s; 1,470 s of process CPU. The target is 300 s.
"""

from __future__ import annotations

import argparse
import logging
import resource
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

FIXED_END = datetime(2026, 10, 1, 12, tzinfo=UTC)
STATE_FILE = "serving_state.pkl"
STATE_VERSION = "bench"


def prepare(out: Path, n_users: int, days: int, seed: int, chunk_users: int = 100_000) -> None:
    """Generate data chunk by chunk (as `generator.generate` does), keep interactions and searches, run the
    training procedure and save its serving state."""
    from recsys_platform.config import PipelineParams
    from recsys_platform.dev import generator
    from recsys_platform.features.tables import build_interactions
    from recsys_platform.model import procedure
    from recsys_platform.model.state import save_state

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cfg = generator.GeneratorConfig(n_users=n_users, days=days, seed=seed, end=FIXED_END)
    items, users, start = generator._catalog_and_profiles(cfg)
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
    cutoff = interactions["event_time"].max() + timedelta(microseconds=1)
    rec = procedure.fit_recommender(
        interactions, items, users, cutoff, params.model_params(), params.max_training_users, params.ranker_threads
    )
    save_state(rec, STATE_VERSION, str(out / STATE_FILE))
    facts = {k: rec.facts[k] for k in ("best_iteration", "training_candidate_recall", "fit_seconds") if k in rec.facts}
    print(f"fitted {facts}; params {rec.params}", flush=True)
    print(f"prepared {out} in {time.perf_counter() - t0:.0f}s; peak RSS {_peak_gib():.1f} GiB", flush=True)


def run(
    data: Path,
    out: Path,
    shards: int,
    time_limit: float,
    chunk_users: int | None,
    overlap: bool = True,
) -> None:
    """Score every user shard by shard, write batch scores, sets and the export; print the figures."""
    import os
    from concurrent.futures import ThreadPoolExecutor
    from dataclasses import replace

    from recsys_platform.batch import scoring as bs
    from recsys_platform.batch.set_config import Eligibility, load_sets_config
    from recsys_platform.config import Settings
    from recsys_platform.model.state import load_state

    print(f"start: load {os.getloadavg()}, cpus {os.cpu_count()}", flush=True)
    t0 = time.perf_counter()
    phases: dict[str, float] = {}
    cpu: dict[str, float] = {}
    cpu_at = [time.process_time()]

    def mark(name: str, since: float) -> float:
        now_, cpu_now = time.perf_counter(), time.process_time()
        phases[name] = phases.get(name, 0.0) + now_ - since
        cpu[name] = cpu.get(name, 0.0) + cpu_now - cpu_at[0]
        cpu_at[0] = cpu_now
        return now_

    items, users = pl.read_parquet(data / "items.parquet"), pl.read_parquet(data / "users.parquet")
    # the columns batch scoring reads (event ids, listened seconds and completion ratios are not used)
    needed = ["user_id", "item_id", "event_type", "event_time", "is_bounce", "weight"]
    interactions = pl.read_parquet(data / "interactions.parquet", columns=needed)
    searches = pl.read_parquet(data / "searches.parquet").with_columns(event_type=pl.lit("search"))
    config = load_sets_config(Settings.from_env().recommendation_sets_path)
    batch = replace(config.batch, shards=shards, chunk_users=chunk_users or config.batch.chunk_users)
    config = replace(config, batch=batch)
    cutoff = interactions["event_time"].max() + timedelta(microseconds=1)
    now = datetime.now(UTC)
    t = mark("load", t0)
    eligible = bs.eligible_users(users, interactions, cutoff, Eligibility(None, (), None))
    # The synthetic history ends at FIXED_END: the rules' "today" is the data's day, not the wall clock
    # (against today's date the new-release windows would be empty and cost nothing).
    ctx = bs.rule_context(users, interactions, bs.last_search_queries(searches, before=cutoff), cutoff.date(), cutoff)
    del searches
    t = mark("eligibility + rule context", t)
    saved = load_state(str(data / STATE_FILE), lightgbm=True)  # as batch_scores loads it
    if saved is None:
        raise SystemExit(f"no serving state in {data}: run `prepare` first")
    version, rec = saved
    t = mark("serving state (fitted sources, ranker)", t)
    t_setup = t - t0
    print(f"setup {t_setup:.0f}s: {phases}; {eligible.len():,} users; peak RSS {_peak_gib():.1f} GiB", flush=True)
    lake = out / "lake"
    for sub in ("batch_scores", "recommendation_sets"):
        (lake / sub).mkdir(parents=True, exist_ok=True)
    totals = {"rows": 0, "set_rows": 0, "users": 0, "lines": 0}
    keys = bs.shard_keys(shards)
    done = 0

    def score(key: str) -> tuple[pl.DataFrame, float, float]:
        start, cpu0 = time.perf_counter(), time.process_time()
        scores = bs.score_shard(rec, version, interactions, users, eligible, key, batch, cutoff, now)
        return scores, time.perf_counter() - start, time.process_time() - cpu0

    # With --overlap the next shard is scored (numpy and polars release the GIL) while this one's
    # rules and writes run (polars), as two Dagster partitions would run at once on two cores.
    pool = ThreadPoolExecutor(max_workers=1) if overlap else None
    pending = pool.submit(score, keys[0]) if pool else None
    for k, key in enumerate(keys):
        t = time.perf_counter()
        if pool:
            scores, score_wall, _ = pending.result()
            t = mark("waiting for the scoring thread", t)
            phases["score (in the scoring thread)"] = phases.get("score (in the scoring thread)", 0.0) + score_wall
            pending = pool.submit(score, keys[k + 1]) if k + 1 < len(keys) else None
        else:
            scores, _, _ = score(key)
            t = mark("score", t)
        sets, _ = bs.build_sets(scores, items, ctx, config)
        t = mark("rules + sets", t)
        scores.write_parquet(lake / "batch_scores" / f"{key}.parquet")
        sets.write_parquet(lake / "recommendation_sets" / f"{key}.parquet")
        written = bs.export_sets(sets, out / "exports", key)
        mark("writes (parquet + JSON lines)", t)
        totals["rows"] += scores.height
        totals["set_rows"] += sets.height
        totals["users"] += scores["user_id"].n_unique()
        totals["lines"] += sum(w["users"] for w in written.values())
        done += 1
        elapsed = time.perf_counter() - t0
        print(
            f"{key}: {scores['user_id'].n_unique():,} users, {scores.height:,} scored rows, {sets.height:,} set rows; "
            f"{elapsed:.0f}s elapsed, peak RSS {_peak_gib():.1f} GiB, load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        del scores, sets
        if elapsed > time_limit and done < len(keys):
            print(f"time limit {time_limit:.0f}s reached after {done}/{len(keys)} shards", flush=True)
            break
    if pool:
        if pending is not None:
            pending.cancel()
        pool.shutdown(wait=True)
    wall = time.perf_counter() - t0
    sizes = {p.name: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for p in (lake, out / "exports")}
    print(
        f"\nusers scored {totals['users']:,} of {eligible.len():,} ({totals['rows']:,} rows, "
        f"{totals['rows'] / max(totals['users'], 1):.0f} per user of {batch.items_per_user}), "
        f"set rows {totals['set_rows']:,}, JSON lines {totals['lines']:,}"
    )
    print(f"on disk: lake {sizes['lake'] / 1024**3:.2f} GiB, exports {sizes['exports'] / 1024**3:.2f} GiB")
    print("phases: " + ", ".join(f"{k} {v:.0f}s" for k, v in phases.items()))
    if overlap:  # the main thread's phases include the scoring thread's CPU: only the total means something
        print(f"cpu (process seconds): {time.process_time():.0f}s in all")
    else:
        print("cpu (process seconds): " + ", ".join(f"{k} {v:.0f}s" for k, v in cpu.items()))
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    print(f"wall {wall:.0f}s; peak RSS {_peak_gib():.2f} GiB (children: {children:.2f} GiB)")
    if done < len(keys):
        print(f"extrapolated wall for all {len(keys)} shards: {t_setup + (wall - t_setup) / done * len(keys):.0f}s")
    print(f"end: load {os.getloadavg()}, cpus {os.cpu_count()}")


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
    r = sub.add_parser("run")
    r.add_argument("--data", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--shards", type=int, default=16)
    r.add_argument("--chunk-users", type=int, default=None, help="override batch.chunk_users of the YAML")
    r.add_argument("--time-limit", type=float, default=1e9, help="stop after the shard that passes this")
    r.add_argument(
        "--no-overlap",
        dest="overlap",
        action="store_false",
        help="score a shard only after the previous one's sets are written (prints CPU seconds per phase)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    if args.cmd == "prepare":
        prepare(args.out, args.users, args.days, args.seed)
    else:
        run(args.data, args.out, args.shards, args.time_limit, args.chunk_users, args.overlap)


if __name__ == "__main__":
    main()
