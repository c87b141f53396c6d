"""Near-real-time refresh of the users who produced new events: features, re-scoring, online-store writes.

Only touched users are recomputed. Their interactions are the batch `interactions` table's rows
for them plus the raw events ingested since (deduplicated by event_id); from these the same
code as the batch pipeline builds their user features and their candidates and ranker features
(`Recommender.rescore`, train/serve parity), against the sources the last `recommendations` run
fitted for the served model (saved beside the lake). The users are re-scored with the model bound
to the ACTIVE slot, re-weighted by their session context (`recsys_platform.realtime.context`), and their
`user_features` and `recs` rows are written to that slot with `deployment.write_user_updates`; if
the slot's model changes meanwhile (a deploy flipped the pointer), the write is refused and the
users are re-scored with the new slot's model and written there.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from recsys_platform import schemas
from recsys_platform.batch.rules import limit_replays
from recsys_platform.features import tables as feats
from recsys_platform.ingest.landing import PARTITION_KEY_FORMAT, parquet_bytes, replace_whole
from recsys_platform.model.recommender import Recommender
from recsys_platform.realtime.context import ContextWeights, apply_context
from recsys_platform.serve.deployment import write_user_updates
from recsys_platform.serve.online_store import OnlineStore, StaleWriteError
from recsys_platform.serve.snapshot import ONLINE_USER_FEATURES

logger = logging.getLogger(__name__)

MAX_STALE_ATTEMPTS = 3
REALTIME_TABLE = "realtime_recommendations"
SESSION_ONLINE_FEATURES = (
    "window_end",
    "sess_starts",
    "sess_completes",
    "sess_sleep_bounce_rate",
    "search_terms",
    "search_sleep",
    "search_movement",
    "steps_trend",
    "heart_rate_trend",
    "is_night",
)


@dataclass
class RefreshReport:
    """What one refresh did, with per-phase seconds."""

    users: int
    rescored_users: int = 0
    model_version: str | None = None
    slot: str | None = None
    attempts: int = 0
    skipped: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    # user -> their new top item, for the users whose top recommendation this refresh changed (event-driven push)
    top_changed: dict[str, str] = field(default_factory=dict)
    # the lists written, [user_id, rank, item_id, score] (`refreshed_rows` makes the lake table's rows of them)
    lists: pl.DataFrame | None = None


def _lake_path(lake_url: str, *parts: str) -> str:
    return "/".join([lake_url.rstrip("/"), *parts])


def _exists(path: str) -> bool:
    if "://" in path:
        from upath import UPath

        return UPath(path).exists()
    return Path(path).exists()


def batch_interactions(lake_url: str) -> pl.LazyFrame | None:
    """A lazy scan of the batch pipeline's `interactions` table, or None before the first batch run."""
    path = _lake_path(lake_url, "interactions.parquet")
    return pl.scan_parquet(path) if _exists(path) else None


def batch_signals(lake_url: str) -> pl.LazyFrame | None:
    """A lazy scan of the batch pipeline's `session_signals` table, or None before the first batch run."""
    path = _lake_path(lake_url, "session_signals.parquet")
    return pl.scan_parquet(path) if _exists(path) else None


def recent_raw_events(lake_url: str, since: datetime, user_ids: list[str]) -> pl.DataFrame:
    """Ingested raw events of `user_ids` in every arrival-hour partition from the hour before `since` on."""
    first = (since - timedelta(hours=1)).strftime(PARTITION_KEY_FORMAT)
    base = _lake_path(lake_url, "raw_events")
    if "://" in base:
        from upath import UPath

        names = [p.name for p in UPath(base).iterdir()] if UPath(base).exists() else []
    else:
        names = [p.name for p in Path(base).glob("*.parquet")] if Path(base).exists() else []
    files = sorted(f"{base}/{n}" for n in names if n.endswith(".parquet") and n[: -len(".parquet")] >= first)
    if not files:
        return schemas.empty_frame(schemas.EVENT_SCHEMA)
    return (
        pl.scan_parquet(files, missing_columns="insert")
        .filter(pl.col("user_id").is_in(user_ids))
        .select(list(schemas.EVENT_SCHEMA))
        .collect()
    )


def touched_interactions(
    batch: pl.DataFrame | pl.LazyFrame | None, recent_events: pl.DataFrame, items: pl.DataFrame, user_ids: list[str]
) -> pl.DataFrame:
    """The touched users' interactions: their batch rows plus the new events, deduplicated by event_id
    (only their rows of the batch table are read)."""
    new = feats.build_interactions(recent_events.filter(pl.col("user_id").is_in(user_ids)), items)
    if batch is None:
        base = schemas.empty_frame(schemas.INTERACTION_SCHEMA)
    else:
        base = batch.lazy().filter(pl.col("user_id").is_in(user_ids)).collect()
    base = schemas.conform(base, schemas.INTERACTION_SCHEMA)
    fresh = new.join(base.select("event_id"), on="event_id", how="anti")
    return pl.concat([base, fresh]).sort("event_time", "event_id")


def score_touched(
    rec: Recommender,
    mine: pl.DataFrame,
    users: pl.DataFrame,
    user_ids: list[str],
    now: datetime,
    k: int,
    signals: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """The touched users' top-k candidates [user_id, rank, item_id, score] from their current interactions and
    session signals (`model.signals.touched_signals`), against the fitted sources of the served model
    (`Recommender.rescore`: the same features as the training set and the batch)."""
    latest = mine["event_time"].max() if mine.height else None
    if signals is not None and signals.height:
        newest = signals["event_time"].max()
        latest = newest if latest is None else max(latest, newest)
    cutoff = max(now, latest + timedelta(microseconds=1)) if latest is not None else now
    return rec.rescore(mine, users, user_ids, cutoff, k, signals=signals)


def touched_user_features(
    mine: pl.DataFrame, items: pl.DataFrame, users: pl.DataFrame, user_ids: list[str], now: datetime
) -> pl.DataFrame:
    """The touched users' `user_features` rows from their current interactions (same function as the batch)."""
    latest = mine["event_time"].max() if mine.height else None
    cutoff = max(now, latest + timedelta(microseconds=1)) if latest is not None else now
    return feats.user_features(mine, users.filter(pl.col("user_id").is_in(user_ids)), items, cutoff)


def encode_recs(recs: pl.DataFrame, items: pl.DataFrame, generated_at: datetime) -> dict[str, str]:
    """Ranked rows [user_id, rank, item_id, score] as `recs` namespace values (the snapshot's format)."""
    if recs.height == 0:
        return {}
    meta = items.select("item_id", "content_type", "is_kids")
    encoded = (
        recs.select("user_id", "rank", "item_id", pl.col("score").round(6))
        .join(meta, on="item_id", how="left")
        .sort("user_id", "rank")
        .group_by("user_id", maintain_order=True)
        .agg(items=pl.struct("item_id", "score", "content_type", "is_kids"))
        .select(
            "user_id",
            value=pl.struct(pl.col("items"), generated_at=pl.lit(generated_at.isoformat())).struct.json_encode(),
        )
    )
    return dict(zip(encoded["user_id"].to_list(), encoded["value"].to_list(), strict=True))


def encode_user_features(user_feats: pl.DataFrame, sessions: pl.DataFrame, refreshed_at: datetime) -> dict[str, str]:
    """`user_features` namespace values: the snapshot's online features plus the current session's."""
    cols = [c for c in ONLINE_USER_FEATURES if c in user_feats.columns]
    sess = sessions.select("user_id", *SESSION_ONLINE_FEATURES).with_columns(
        pl.col("window_end").dt.to_string("%Y-%m-%dT%H:%M:%S%z")
    )
    frame = user_feats.select("user_id", *cols).join(sess, on="user_id", how="left")
    encoded = frame.select(
        "user_id",
        value=pl.struct(
            *cols, *SESSION_ONLINE_FEATURES, refreshed_at=pl.lit(refreshed_at.isoformat())
        ).struct.json_encode(),
    )
    return dict(zip(encoded["user_id"].to_list(), encoded["value"].to_list(), strict=True))


def refresh_users(
    store: OnlineStore,
    user_feats: pl.DataFrame,
    sessions: pl.DataFrame,
    items: pl.DataFrame,
    top_n: int,
    scored_for: Callable[[str], pl.DataFrame],
    now: datetime | None = None,
    weights: ContextWeights | None = None,
    played: pl.DataFrame | None = None,
    replay_policy: tuple[int, int] = (-1, 10),
) -> RefreshReport:
    """Re-score the users of `user_feats` with the active slot's model and write them there (retrying after a
    flip). `scored_for(version)` gives their candidates [user_id, rank, item_id, score] under a model version.
    With `played` (`batch.rules.played_pairs` of the touched users), the repeat-listen policy `replay_policy`
    (at most n replays in the first k, as the batch lists apply it) orders the list before it is written."""
    now = now or datetime.now(UTC)
    report = RefreshReport(users=user_feats.height)
    if user_feats.height == 0:
        report.skipped = "no touched users with a profile"
        return report
    if "user_id" not in sessions.columns:
        sessions = pl.DataFrame(schema=schemas.SESSION_SCHEMA)
    sessions = sessions.filter(pl.col("user_id").is_in(user_feats["user_id"].implode()))
    feature_rows = encode_user_features(user_feats, sessions, now)
    meta = items.select("item_id", "content_type")
    for attempt in range(1, MAX_STALE_ATTEMPTS + 1):
        report.attempts = attempt
        pointer = store.pointer()
        if pointer is None:
            report.skipped = "nothing is deployed yet"
            return report
        report.model_version, report.slot = pointer.model_version, pointer.active_slot
        recs_rows: dict[str, str] = {}
        ranked = None
        if pointer.model_version.isdigit():
            t0 = time.perf_counter()
            scored = scored_for(pointer.model_version).join(meta, on="item_id", how="left")
            t1 = time.perf_counter()
            contextual = apply_context(scored, sessions, weights)
            if played is not None and replay_policy[0] >= 0:  # from every candidate: replays move down, others up
                ranked = limit_replays(
                    top_n_rows(contextual, contextual.height, "score_context"), played, *replay_policy
                )
                ranked = ranked.filter(pl.col("rank") <= top_n)
            else:
                ranked = top_n_rows(contextual, top_n, "score_context")
            recs_rows = encode_recs(ranked, items, now)
            report.timings |= {"score_s": t1 - t0, "context_s": time.perf_counter() - t1}
        else:
            report.skipped = f"active slot serves {pointer.model_version!r}, which is not a model: features only"
        t2 = time.perf_counter()
        before = top_items(store, pointer.active_slot, list(recs_rows)) if recs_rows else {}
        try:
            # Features first, then the list the API serves: a crash in between leaves the old list visible.
            write_user_updates(store, pointer.model_version, "user_features", feature_rows)
            if recs_rows:
                write_user_updates(store, pointer.model_version, "recs", recs_rows)
        except StaleWriteError as exc:
            logger.warning("slot changed during refresh (attempt %d): %s; re-scoring on the new slot", attempt, exc)
            continue
        report.timings["write_s"] = time.perf_counter() - t2
        report.rescored_users = len(recs_rows)
        report.lists = ranked if recs_rows else None
        if recs_rows:
            after = dict(ranked.filter(pl.col("rank") == 1).select("user_id", "item_id").iter_rows())
            report.top_changed = {u: top for u, top in after.items() if before.get(u) != top}
        return report
    raise StaleWriteError(f"the active slot kept changing during {MAX_STALE_ATTEMPTS} refresh attempts")


def refreshed_rows(report: RefreshReport, partition_key: str, refreshed_at: datetime) -> pl.DataFrame:
    """The lists a refresh wrote, as rows of the `realtime_recommendations` lake table (empty if none)."""
    if report.lists is None or report.lists.height == 0:
        return schemas.empty_frame(schemas.REALTIME_RECOMMENDATION_SCHEMA)
    rows = report.lists.with_columns(
        model_version=pl.lit(report.model_version),
        generated_at=pl.lit(refreshed_at),
        slot=pl.lit(report.slot),
        partition_key=pl.lit(partition_key),
    )
    return schemas.conform(rows, schemas.REALTIME_RECOMMENDATION_SCHEMA)


def write_refreshed(lake_url: str, partition_key: str, run_id: str, rows: pl.DataFrame) -> str | None:
    """Add one run's refreshed lists to the lake table `realtime_recommendations` (a file per run, named by its
    arrival hour and run id, written whole), so the catalog's view shows every refresh; the key, or None."""
    from upath import UPath

    if rows.height == 0:
        return None
    path = UPath(_lake_path(lake_url, REALTIME_TABLE, f"{partition_key}.{run_id[:8]}.parquet"))
    replace_whole(path, parquet_bytes(rows))
    return f"{REALTIME_TABLE}/{path.name}"


def _first_item(value: str | None) -> str | None:
    """The top item of a `recs` namespace value (None when empty or absent)."""
    if not value:
        return None
    items = json.loads(value).get("items") or []
    return items[0]["item_id"] if items else None


def top_items(store: OnlineStore, slot: str, user_ids: list[str]) -> dict[str, str]:
    """Each user's top recommended item in `slot` as written so far (users without a list are absent)."""
    values = store.read_slot(slot, "recs", user_ids).values
    return {u: top for u in user_ids if (top := _first_item(values.get(u))) is not None}


def top_n_rows(scored: pl.DataFrame, n: int, score_col: str) -> pl.DataFrame:
    """Best `n` rows per user by `score_col` (ties by item) as [user_id, rank, item_id, score]."""
    return (
        scored.sort(["user_id", score_col, "item_id"], descending=[False, True, False])
        .with_columns(rank=pl.int_range(1, pl.len() + 1).over("user_id").cast(pl.Int64))
        .filter(pl.col("rank") <= n)
        .select("user_id", "rank", "item_id", pl.col(score_col).alias("score"))
    )
