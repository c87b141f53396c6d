"""Training assets: training set, popularity baseline, LightGBM ranker (MLflow), evaluation and gate."""

import dagster as dg
import polars as pl

from assets.features import feature_cutoff
from assets.pools import HISTORY_POOL
from recsys_platform import ranking, registry, training
from recsys_platform.features import POSITIVE_COLUMNS, read_history
from recsys_platform.reporting import frame_preview_markdown, metrics_markdown
from resources import MlflowResource, PipelineResource

GROUP = "training"


@dg.asset(group_name=GROUP, kinds={"polars", "parquet"}, pool=HISTORY_POOL)
def training_set(
    context: dg.AssetExecutionContext,
    interactions: pl.LazyFrame,
    items: pl.DataFrame,
    users: pl.DataFrame,
    pipeline: PipelineResource,
) -> pl.DataFrame:
    """Ranker rows (candidates x features, graded labels) for two temporal windows: `train` (features
    before the training label window) and `eval` (features before the holdout window). Features only
    ever use events before their window's cutoff."""
    df = training.build_training_set(read_history(interactions), items, users, pipeline.params())
    summary = df.group_by("split").agg(
        rows=pl.len(),
        users=pl.col("user_id").n_unique(),
        positives=(pl.col("relevance") > 0).sum(),
        feature_cutoff=pl.col("feature_cutoff").first(),
    )
    context.add_output_metadata({"splits": dg.MetadataValue.md(frame_preview_markdown(summary.sort("split")))})
    return df


@dg.asset(group_name=GROUP, kinds={"polars", "parquet"}, pool=HISTORY_POOL)
def popularity_model(interactions: pl.LazyFrame, users: pl.DataFrame) -> pl.DataFrame:
    """Popularity-count baseline (distinct users with a positive interaction), globally and per
    cold-start segment: the floor every model must beat and the fallback for unknown users."""
    positive = read_history(interactions, POSITIVE_COLUMNS, positive_only=True)
    return training.popularity_table(positive, users, feature_cutoff(interactions), k=100)


@dg.asset(group_name=GROUP, kinds={"lightgbm", "mlflow"}, pool=HISTORY_POOL)
def ranker_model(
    context: dg.AssetExecutionContext,
    training_set: pl.DataFrame,
    mlflow: MlflowResource,
    pipeline: PipelineResource,
) -> dict:
    """LightGBM LambdaRank ranker over the candidates, trained on the `train` window, logged to MLflow
    with params, feature importance, signature and input example, and registered as a new version."""
    params = pipeline.params()
    train = training_set.filter(pl.col("split") == "train")
    model = ranking.train_ranker(train, params)
    importance = ranking.feature_importance(model)
    ref = registry.log_ranker(
        tracking_uri=mlflow.tracking_uri,
        artifact_uri=mlflow.artifact_uri,
        experiment=mlflow.experiment,
        model=model,
        input_example=train.select([pl.col(c).cast(pl.Float32) for c in ranking.FEATURE_COLUMNS]).head(20),
        params={
            "objective": "lambdarank",
            "n_estimators": params.ranker_rounds,
            "label_days": params.label_days,
            "candidates_per_source": params.candidates_per_source,
            "train_rows": train.height,
            "train_users": train["user_id"].n_unique(),
            "feature_cutoff": str(train["feature_cutoff"].first()),
            "n_features": len(ranking.FEATURE_COLUMNS),
        },
        metrics={},
        tags={"dagster.run_id": context.run.run_id, "dataset": "synthetic"},
        importance=importance,
        model_name=mlflow.model_name,
    )
    context.add_output_metadata(
        {
            "model_version": ref.version,
            "mlflow_run_id": ref.run_id,
            "model_uri": ref.model_uri,
            "feature_importance": dg.MetadataValue.md(
                frame_preview_markdown(importance.with_columns(pl.col("gain").round(1)), 20)
            ),
        }
    )
    return ref.to_dict()


@dg.asset(group_name=GROUP, kinds={"mlflow"}, pool=HISTORY_POOL)
def model_evaluation(
    context: dg.AssetExecutionContext,
    training_set: pl.DataFrame,
    ranker_model: dict,
    interactions: pl.LazyFrame,
    items: pl.DataFrame,
    users: pl.DataFrame,
    mlflow: MlflowResource,
    pipeline: PipelineResource,
) -> pl.DataFrame:
    """Ranker vs popularity on the temporal holdout (precision, recall, NDCG, MAP, MRR, hit rate at 10,
    coverage, novelty, diversity), logged to the ranker's MLflow run; then the promotion gate sets the
    `champion` or `challenger` alias."""
    params = pipeline.params()
    interactions = read_history(interactions)
    ref = registry.ModelRef(**ranker_model)
    booster, _ = registry.load_ranker(mlflow.tracking_uri, ref.version, ref.name)
    eval_rows = ranking.score_frame(booster, training_set.filter(pl.col("split") == "eval"))
    table, recall = training.evaluate_holdout(eval_rows, interactions, items, users, params)
    ranker_ndcg = training.metric(table, "ranker", "ndcg@10")
    pop_ndcg = training.metric(table, "popularity", "ndcg@10")
    champion = registry.alias_version(mlflow.tracking_uri, model_name=ref.name)
    champion_ndcg = None
    if champion and champion != ref.version:
        champ_booster, _ = registry.load_ranker(mlflow.tracking_uri, champion, ref.name)
        champ_rows = ranking.score_frame(champ_booster, training_set.filter(pl.col("split") == "eval"))
        champ_table, _ = training.evaluate_holdout(champ_rows, interactions, items, users, params)
        champion_ndcg = training.metric(champ_table, "ranker", "ndcg@10")
        table = pl.concat(
            [table, champ_table.filter(pl.col("model") == "ranker").with_columns(model=pl.lit("champion"))]
        )
    lift = ranker_ndcg / pop_ndcg - 1.0 if pop_ndcg > 0 else float("inf")
    logged = {
        f"ranker.{r['metric']}": r["value"] for r in table.filter(pl.col("model") == "ranker").iter_rows(named=True)
    }
    logged |= {
        f"popularity.{r['metric']}": r["value"]
        for r in table.filter(pl.col("model") == "popularity").iter_rows(named=True)
    }
    logged |= {f"candidate_recall.{k}": v for k, v in recall.items()} | {"ndcg_lift_over_popularity": lift}
    registry.log_run_metrics(mlflow.tracking_uri, ref.run_id, logged)
    decision = registry.promotion_gate(
        mlflow.tracking_uri, ref, ranker_ndcg, pop_ndcg, champion_ndcg, params.promotion_margin
    )
    context.add_output_metadata(
        {
            "metrics": dg.MetadataValue.md(metrics_markdown(table)),
            "ranker_ndcg@10": ranker_ndcg,
            "popularity_ndcg@10": pop_ndcg,
            "ndcg_lift_over_popularity": lift,
            "candidate_recall": dg.MetadataValue.json({k: round(v, 4) for k, v in recall.items()}),
            "gate_decision": decision.alias,
            "gate_reason": decision.reason,
            "model_version": ref.version,
        }
    )
    return table.with_columns(model_version=pl.lit(ref.version))
