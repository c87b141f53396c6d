"""Serving assets: batch recommendations with the champion, the blue-green store snapshot, the analyst catalog."""

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import dagster as dg
import polars as pl

from assets import groups
from assets.features import feature_cutoff
from assets.pools import HISTORY_POOL, in_pool
from recsys_platform import schemas
from recsys_platform.analytics.duckdb_catalog import build_catalog
from recsys_platform.config import CHAMPION_ALIAS, POPULARITY_VERSION
from recsys_platform.features.tables import HISTORY_COLUMNS, read_history
from recsys_platform.model import fallback, registry
from recsys_platform.serve import deployment, snapshot
from resources import LandingZoneResource, MlflowResource, OnlineStoreResource, PipelineResource

GROUP = groups.SERVING
LAKE_TABLES = [
    "raw_events",
    "quarantined_events",
    "items",
    "users",
    "interactions",
    "user_features",
    "item_features",
    "similar_items",
    "training_set",
    "popularity_model",
    "model_evaluation",
    "recommendations",
    "feature_store_snapshot",
    "push_notifications",
    "batch_scores",
    "recommendation_sets",
    "experiment_exposures",
    "experiment_analysis",
    "served_log",
    "session_features",
    "session_signals",
    "realtime_recommendations",
]


@dg.asset(group_name=GROUP, kinds={"lightgbm", "polars", "parquet"}, deps=["model_evaluation"], **in_pool(HISTORY_POOL))
def recommendations(
    context: dg.AssetExecutionContext,
    interactions: pl.LazyFrame,
    items: pl.DataFrame,
    users: pl.DataFrame,
    popularity_model: pl.DataFrame,
    session_signals: pl.LazyFrame,
    mlflow: MlflowResource,
    pipeline: PipelineResource,
    landing: LandingZoneResource,
) -> pl.DataFrame:
    """Top-N items per user from the `champion` version (the ranker, or the personalised baseline the gate
    chose over it) on every event so far: its sources refitted on all the history with the params the
    version carries; unreleased items, items the data says are not replayed (or were completed in the last
    few days where they are), and kids content outside families are never recommended. The fit is saved
    for the near-real-time refresh. Without any champion, the popularity baseline is served as such."""
    from recsys_platform.batch.rules import played_pairs
    from recsys_platform.model.candidates import signals_for
    from recsys_platform.model.params import ModelParams
    from recsys_platform.model.recommender import fit_serving
    from recsys_platform.model.state import save_state, state_url

    params = pipeline.params()
    cutoff = feature_cutoff(interactions)
    now = datetime.now(UTC)
    champion = registry.alias_version(mlflow.tracking_uri, CHAMPION_ALIAS, mlflow.model_name)
    facts: dict[str, object] = {}
    limit = params.max_replays >= 0  # the repeat-listen policy, as the refresh and the recommendation sets apply it
    if champion is None:
        context.log.warning("no champion model registered: serving the popularity baseline")
        history = read_history(interactions)
        excluded = fallback.recently_completed(history, cutoff, params.recent_exclusion_days)
        recs = fallback.popularity_recommendations(
            popularity_model, users["user_id"], excluded, items, users, params.top_n
        )
        if limit:
            recs = _repeat_listen_policy(recs, played_pairs(history), params)
        version = POPULARITY_VERSION
    else:
        started = time.perf_counter()
        scorer, model_params, version = registry.load_scorer(mlflow.tracking_uri, champion, mlflow.model_name)
        # the events are a lazy scan, aggregated into pairs (rec.history) as they are read: at 1M users, read as one
        # frame they held ~6 GB (98.5M rows) at the start of the step
        rec = fit_serving(
            interactions.lazy().select(list(HISTORY_COLUMNS)),
            items,
            users,
            cutoff,
            ModelParams.from_dict(model_params),
            scorer,
            signals_for(session_signals),
        )
        limit = limit and not rec.params.exclude_seen  # seen items are never candidates: no replay to limit
        fitted = time.perf_counter()
        recs = _served_lists(rec, users["user_id"], params, limit)
        listed = time.perf_counter()
        save_state(rec, version, state_url(pipeline.lake_url), landing.s3_endpoint_url)
        seconds = {"fit": fitted - started, "lists": listed - fitted, "state": time.perf_counter() - listed}
        context.log.info("recommendations: " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
        facts = {
            "scorer": registry.version_tags(mlflow.tracking_uri, version, mlflow.model_name).get(
                registry.SCORER_TAG, "ranker"
            ),
            # where the step's time went: fit is loading the champion and fitting its sources; the lake write of the
            # lists comes after, in the step's own duration
            "seconds": dg.MetadataValue.json({k: round(v, 1) for k, v in seconds.items()}),
        }
    out = recs.with_columns(model_version=pl.lit(version), generated_at=pl.lit(now, dtype=pl.Datetime("us", "UTC")))
    out = schemas.conform(out, schemas.RECOMMENDATION_SCHEMA)
    context.add_output_metadata(
        {
            "model_version": version,
            "users": out["user_id"].n_unique(),
            "feature_cutoff": cutoff.isoformat(),
            **facts,
        }
    )
    return out


# Users whose lists are scored and put through the repeat-listen policy at a time in `recommendations`: the lists
# twice as deep as served (the policy moves replays down and needs other items to move up) live for one chunk only.
SERVED_CHUNK_USERS = 100_000


def _served_lists(rec, user_ids: pl.Series, params, limit: bool) -> pl.DataFrame:
    """Each user's top_n from `rec`, with the repeat-listen policy when `limit`, `SERVED_CHUNK_USERS` users at a time
    (blocks of users on as many threads as the run may use: the CLI's runs, every core).

    The next chunk is scored while the policy runs on this one: run after each chunk, the policy (polars, most of it
    on one thread) left the block threads idle for ~12% of the 1M-user step."""
    k = params.top_n * (2 if limit else 1)
    chunks = [
        user_ids.slice(start, SERVED_CHUNK_USERS) for start in range(0, max(user_ids.len(), 1), SERVED_CHUNK_USERS)
    ]
    parts = []
    with ThreadPoolExecutor(1) as scoring:
        pending = scoring.submit(rec.recommend, chunks[0], k, workers=params.ranker_threads)
        for i, chunk in enumerate(chunks):
            recs = pending.result()
            if i + 1 < len(chunks):
                pending = scoring.submit(rec.recommend, chunks[i + 1], k, workers=params.ranker_threads)
            if limit:
                recs = _repeat_listen_policy(recs, rec.history.played(rec.vocab.user_rows(chunk)), params)
            parts.append(recs)
    return pl.concat(parts)


def _repeat_listen_policy(recs: pl.DataFrame, played: pl.DataFrame, params) -> pl.DataFrame:
    """The lists with at most max_replays of the `played` pairs in their first replay_window, cut to top_n."""
    from recsys_platform.batch.rules import limit_replays

    recs = limit_replays(recs.sort("user_id", "rank"), played, params.max_replays, params.replay_window)
    return recs.filter(pl.col("rank") <= params.top_n)


@dg.asset(group_name=GROUP, kinds={"sqlite", "redis"})
def feature_store_snapshot(
    context: dg.AssetExecutionContext,
    recommendations: pl.LazyFrame,
    user_features: pl.DataFrame,
    popularity_model: pl.DataFrame,
    similar_items: pl.DataFrame,
    items: pl.DataFrame,
    online_store: OnlineStoreResource,
) -> pl.DataFrame:
    """Blue-green deploy of the recommendations' model version: fill the standby slot (recs, user
    features, popularity fallbacks, similar items, item metadata), verify counts, checksum and a sample
    against these offline tables, then flip the pointer. The previous slot stays intact for rollback."""
    # The lists' columns only (at 1M users, 50M rows: model_version and generated_at are 1.2 GB of them).
    version = recommendations.lazy().select(pl.col("model_version").first()).collect().item() or POPULARITY_VERSION
    recs = recommendations.lazy().select(snapshot.RECOMMENDATION_COLUMNS).collect()
    payload = snapshot.build_payload(recs, user_features, popularity_model, similar_items, items, datetime.now(UTC))
    del recs  # the payload keeps its own sorted copy of the lists, encoded a chunk of users at a time
    snapshot_id = snapshot.snapshot_id_of(payload, version)
    with online_store.open() as store:
        report = deployment.deploy(store, version, snapshot_id, payload)
        described = store.describe()
    pointer = described.get("pointer") or {}
    rows = []
    for slot in ("blue", "green"):
        info = described.get("slots", {}).get(slot, {})
        rows.append(
            {
                "slot": slot,
                "active": pointer.get("active_slot") == slot,
                "model_version": info.get("model_version"),
                "snapshot_id": info.get("snapshot_id"),
                "state": info.get("state"),
                "rows": int(sum((info.get("row_counts") or {}).values())),
            }
        )
    context.add_output_metadata(
        {
            "active_slot": str(pointer.get("active_slot")),
            "model_version": version,
            "snapshot_id": snapshot_id,
            "deploy": dg.MetadataValue.json({k: str(v) for k, v in vars(report).items()}),
        }
    )
    return pl.DataFrame(rows).with_columns(recorded_at=pl.lit(datetime.now(UTC), dtype=pl.Datetime("us", "UTC")))


@dg.asset(group_name=GROUP, kinds={"duckdb"}, deps=LAKE_TABLES)
def analyst_catalog(
    context: dg.AssetExecutionContext, pipeline: PipelineResource, landing: LandingZoneResource
) -> dg.MaterializeResult:
    """DuckDB catalog file with one view per lake table, rebuilt atomically (never blocks open analyst sessions)."""
    views = build_catalog(pipeline.analyst_catalog, pipeline.lake_url, LAKE_TABLES, landing.s3_endpoint_url)
    return dg.MaterializeResult(
        metadata={"path": dg.MetadataValue.path(str(pipeline.analyst_catalog)), "views": dg.MetadataValue.json(views)}
    )
