"""Which session signal groups the ranker keeps: an ablation on held-out training users.

    python benchmarks/session_features.py --dataset synthetic --seed 11 [--text-encoder minilm|hashed]
    python benchmarks/session_features.py --dataset ml-100k [--path ../shared/data/ml-100k]

Only training data is read (as `benchmarks/ranker_settings.py` reads it; seed 42 is the quickstart's reported
seed: never choose on it). The product builds its training set with every candidate feature group of
`model.candidates.SESSION_FEATURE_GROUPS` (session signals read up to each user's own cutoff), then the
ranker is trained as `ranker_settings.run_variant` trains it (10% of the queries compare, 10% early
stopping, the rest fit; `--splits` seeds) on: the features without any session group ("none"), with every
group ("all"), every group but one ("without_<group>") and no group but one ("only_<group>"). Prints nDCG@10 of the
compare queries per variant (mean over splits) and its difference from "all" and from "none".

`--refresh-boosts` also measures the near-real-time path's fixed context boosts
(`realtime.context.apply_context`) on top of the "all" ranker: the compare users' session windows are
computed by `realtime.sessions.session_features` from their raw events before their cutoff, the boosts
added to the ranker's per-user z-scores, and nDCG@10 compared with and without them.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: the sibling benchmark

from ranker_settings import data_parser, ml100k_interactions, query_ndcg, run_variant  # noqa: E402

from recsys_platform.features.tables import build_interactions, read_history
from recsys_platform.model import procedure
from recsys_platform.model.candidates import BASE_FEATURES, SESSION_FEATURE_GROUPS
from recsys_platform.model.params import ModelParams
from recsys_platform.model.signals import signal_events


def synthetic(seed: int, n_users: int, days: int):
    """Latent-taste events (a fixed end): interactions, items, users, signal events, raw events."""
    from recsys_platform.dev.generator import GeneratorConfig, generate

    cfg = GeneratorConfig(n_users=n_users, days=days, seed=seed, tastes="latent", end=datetime(2026, 11, 1, tzinfo=UTC))
    ds = generate(cfg)
    return build_interactions(ds.events, ds.items), ds.items, ds.users, signal_events(ds.events), ds.events


def variants() -> dict[str, tuple[str, ...]]:
    """Feature columns per variant."""
    groups = SESSION_FEATURE_GROUPS
    every = tuple(f for g in groups.values() for f in g)
    out = {"none": BASE_FEATURES, "all": (*BASE_FEATURES, *every)}
    for g in groups:
        out[f"without_{g}"] = (*BASE_FEATURES, *(f for h, feats in groups.items() if h != g for f in feats))
    for g, feats in groups.items():
        out[f"only_{g}"] = (*BASE_FEATURES, *feats)
    return out


def boosts_effect(
    frame: pl.DataFrame,
    history: pl.DataFrame,
    events: pl.DataFrame,
    items,
    users,
    params: ModelParams,
    signals: pl.DataFrame,
    split_seed: int,
):
    """nDCG@10 of the "all" ranker's order of the compare queries, without and with the refresh path's fixed
    context boosts (each user's session window as of their cutoff in the query's window). `params` and `signals`
    are those `frame` was built with, so the windows are its windows."""
    from recsys_platform.realtime.context import apply_context
    from recsys_platform.realtime.sessions import session_features

    scored: dict = {}
    run_variant(frame, split_seed, 0.1, 1000, columns=variants()["all"], scored=scored)
    rows = frame.filter(pl.Series(scored["compare"])).select("window", "user_id", "item_id", "relevance")
    rows = rows.with_columns(score=pl.Series(scored["scores"]), q=pl.Series(scored["query"][scored["compare"]]))
    splits = {s.name: s for s, _ in procedure.training_windows(history, params, 4000, signals)}
    meta = items.select("item_id", "content_type")
    parts = []
    for name, split in splits.items():
        mine = rows.filter(pl.col("window") == name)
        if mine.height == 0:
            continue
        cut = mine.select("user_id").unique().join(split.cutoffs, on="user_id", how="left")
        before = (
            events.join(cut, on="user_id", how="inner")
            .filter(
                pl.col("event_time") < pl.coalesce("cutoff", pl.lit(split.known_until, dtype=pl.Datetime("us", "UTC")))
            )
            .drop("cutoff")
        )
        sessions = session_features(before, users, items, watermark_minutes=10**7)
        parts.append(apply_context(mine.join(meta, on="item_id", how="left"), sessions))
    out = pl.concat(parts).sort("q", maintain_order=True)
    q, y = out["q"].to_numpy(), out["relevance"].to_numpy()
    return query_ndcg(q, out["score"].to_numpy(), y), query_ndcg(q, out["score_context"].to_numpy(), y)


def main() -> None:
    parser = data_parser(__doc__)
    parser.add_argument("--label-users", type=int, default=1000)
    parser.add_argument("--text-encoder", default="hashed", help="hashed, minilm or auto (model.text)")
    parser.add_argument("--only", nargs="+", help="variants to run (default: all)")
    parser.add_argument("--refresh-boosts", action="store_true", help="measure the refresh's fixed boosts only")
    parser.add_argument(
        "--windows",
        help="training windows (default: ModelParams'); `session` labels each user's newest sitting, the plays just "
        "after the searches, readings and bounces these signals describe",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    every = variants()["all"]
    with tempfile.TemporaryDirectory() as tmp:
        if args.dataset == "ml-100k":
            interactions, items, users = ml100k_interactions(args.path, Path(tmp))
            signals = signal_events(pl.scan_parquet(str(Path(tmp) / "home" / "lake" / "raw_events" / "*.parquet")))
        else:
            interactions, items, users, signals, events = synthetic(args.seed, args.users, args.days)
        history = read_history(interactions)
        base = ModelParams(text_encoder=args.text_encoder)
        if args.windows:
            base = base.with_(training_windows=args.windows)
        params, _ = procedure.choose_params(history, items, users, base, 4000)
        started = time.perf_counter()
        params = params.with_(label_users=0)  # every user a window holds out (run_variant samples label users)
        frame = procedure.training_set(history, items, users, params, 4000, signals, every)
        seconds = time.perf_counter() - started
    print(
        f"{args.dataset}: {signals.height} signal events, encoder {params.text_encoder}; training set of "
        f"{frame.height} rows, {frame['user_id'].n_unique()} users in {seconds:.1f} s",
        flush=True,
    )
    if args.refresh_boosts:
        for split_seed in args.splits:
            plain, boosted = boosts_effect(frame, history, events, items, users, params, signals, split_seed)
            print(json.dumps({"split": split_seed, "ranker": round(plain, 4), "ranker+boosts": round(boosted, 4)}))
        return
    rows = []
    chosen = {k: v for k, v in variants().items() if not args.only or k in args.only}
    for split_seed in args.splits:
        for name, columns in chosen.items():
            row = run_variant(frame, split_seed, 0.1, args.label_users, columns=columns)
            rows.append({"variant": name, **row})
            print(json.dumps(rows[-1]), flush=True)
    table = (
        pl.DataFrame(rows)
        .group_by("variant", maintain_order=True)
        .agg(pl.col("compare_ndcg@10").mean().round(4).alias("ndcg@10"), pl.col("seconds").mean().round(1))
    )
    ref = {v: table.filter(pl.col("variant") == v)["ndcg@10"] for v in ("all", "none")}
    table = table.with_columns(**{f"vs_{v}": (pl.col("ndcg@10") - s[0]).round(4) for v, s in ref.items() if s.len()})
    with pl.Config(tbl_rows=50, tbl_hide_dataframe_shape=True):
        print(table)
    if args.json:
        args.json.write_text(json.dumps({"dataset": args.dataset, "encoder": params.text_encoder, "runs": rows}))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
