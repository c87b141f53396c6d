"""Serving assets: batch recommendations with the champion, the blue-green store snapshot, the analyst catalog."""

from datetime import UTC, datetime

import dagster as dg
import polars as pl

from assets.features import feature_cutoff
from assets.pools import HISTORY_POOL
from recsys_platform import deployment, ranking, registry, schemas, snapshot, training
from recsys_platform.catalog import build_catalog
from recsys_platform.config import CHAMPION_ALIAS
from recsys_platform.features import read_history
from resources import MlflowResource, OnlineStoreResource, PipelineResource

GROUP = "serving"
POPULARITY_VERSION = "popularity-baseline"
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
]


@dg.asset(group_name=GROUP, kinds={"lightgbm", "polars", "parquet"}, deps=["model_evaluation"], pool=HISTORY_POOL)
def recommendations(
    context: dg.AssetExecutionContext,
    interactions: pl.LazyFrame,
    items: pl.DataFrame,
    users: pl.DataFrame,
    popularity_model: pl.DataFrame,
    mlflow: MlflowResource,
    pipeline: PipelineResource,
) -> pl.DataFrame:
    """Top-N items per user scored by the `champion` ranker on serving features (every event so far);
    items completed in the last few days are excluded and kids content only goes to families. Without
    a champion, the popularity baseline is served and labelled as such."""
    params = pipeline.params()
    cutoff = feature_cutoff(interactions)
    # By user: each scoring chunk's history is then a slice (features.rows_of_users), not a semi join
    # over every interaction, which made this step grow with users x history.
    interactions = read_history(interactions, by_user=True)
    now = datetime.now(UTC)
    excluded = ranking.recently_completed(interactions, cutoff, params.recent_exclusion_days)
    champion = registry.alias_version(mlflow.tracking_uri, CHAMPION_ALIAS, mlflow.model_name)
    if champion is None:
        context.log.warning("no champion model registered: serving the popularity baseline")
        recs = training.popularity_recommendations(
            popularity_model, users["user_id"], excluded, items, users, params.top_n
        )
        version = POPULARITY_VERSION
    else:
        booster, version = registry.load_ranker(mlflow.tracking_uri, champion, mlflow.model_name)
        pit = ranking.PointInTime.build(interactions, items, users, cutoff, params, user_ids=[])
        recs = ranking.recommend(booster, pit, users["user_id"], excluded, params)
    out = recs.with_columns(model_version=pl.lit(version), generated_at=pl.lit(now, dtype=pl.Datetime("us", "UTC")))
    out = schemas.conform(out, schemas.RECOMMENDATION_SCHEMA)
    context.add_output_metadata(
        {"model_version": version, "users": out["user_id"].n_unique(), "feature_cutoff": cutoff.isoformat()}
    )
    return out


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
def analyst_catalog(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
    """DuckDB catalog file with one view per lake table, rebuilt atomically (never blocks open analyst sessions)."""
    views = build_catalog(pipeline.catalog, pipeline.lake_url, LAKE_TABLES)
    return dg.MaterializeResult(
        metadata={"path": dg.MetadataValue.path(str(pipeline.catalog)), "views": dg.MetadataValue.json(views)}
    )
