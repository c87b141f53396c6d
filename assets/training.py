"""Training assets: model params, training set, ranker (MLflow), evaluation on two protocols and the gate.

Each step calls one function of `recsys_platform.model.procedure`, the procedure `evaluate` runs
whole on each protocol's holdout: what the gate measures is what `recommendations` serves.
"""

import dagster as dg
import polars as pl

from assets import groups
from assets.features import feature_cutoff
from assets.pools import HISTORY_POOL, in_pool
from recsys_platform.analytics.reporting import frame_preview_markdown
from recsys_platform.features.tables import POSITIVE_COLUMNS, latest_event_time, read_history, user_sample
from recsys_platform.model import fallback, gate, procedure, registry
from recsys_platform.model.candidates import FEATURES, signals_for
from recsys_platform.model.params import ModelParams
from recsys_platform.model.ranker import feature_importance
from recsys_platform.model.windows import require_enough
from resources import MlflowResource, PipelineResource

GROUP = groups.TRAINING


def _sampled(context, interactions: pl.LazyFrame, users: pl.DataFrame, signals, most: int, seed: int, setting: str):
    """(interactions, users, signals, sample) restricted to a seeded sample of `most` users (`setting` names the
    cap in the log); everything and None when there are no more. `signals` may be None."""
    sample = user_sample(interactions, most, seed)
    if sample is None:
        return interactions, users, signals, None
    context.log.info(f"a seeded sample of {sample.ids.len():,} of {sample.of:,} users ({setting})")
    kept = None if signals is None else sample.keep(signals)
    return sample.keep(interactions), sample.keep(users), kept, sample


def _fit_sample(context, interactions: pl.LazyFrame, users: pl.DataFrame, signals, pipeline: PipelineResource):
    """`_sampled` at `max_fit_users`, with the weight of each sampled user (`PairHistory.user_weight`; 1 for all)."""
    params = pipeline.params()
    interactions, users, signals, sample = _sampled(
        context, interactions, users, signals, params.max_fit_users, params.seed, "max_fit_users"
    )
    return interactions, users, signals, (sample.weight if sample is not None else 1.0)


@dg.asset(group_name=GROUP, kinds={"polars"}, **in_pool(HISTORY_POOL))
def model_params(
    context: dg.AssetExecutionContext,
    interactions: pl.LazyFrame,
    items: pl.DataFrame,
    users: pl.DataFrame,
    pipeline: PipelineResource,
) -> dict:
    """Settings read off the data (whether replays are recommended, the recency half-life in days) and the
    source settings picked on an inner per-user split (EASE l2, recency half-life of its profile): every
    parameter that defines the candidates and the feature values of the next ranker version. Above
    `max_fit_users` users, on a seeded sample of them at the whole base's scale (`_fit_sample`)."""
    require_enough(interactions)
    interactions, users, _, weight = _fit_sample(context, interactions, users, None, pipeline)
    params, report = procedure.choose_params(
        read_history(interactions), items, users, pipeline.model_params(), pipeline.params().max_training_users, weight
    )
    best = max(report["tuning_ndcg@10"].items(), key=lambda kv: kv[1]) if report["tuning_ndcg@10"] else ("", 0.0)
    context.add_output_metadata(
        {
            "params": dg.MetadataValue.json(params.to_dict()),
            "repeat_share": report["repeat_share"],
            "tuning_best": f"{best[0]}: nDCG@10 {best[1]:.4f}",
        }
    )
    return {"params": params.to_dict(), **report}


@dg.asset(group_name=GROUP, kinds={"polars", "parquet"}, **in_pool(HISTORY_POOL))
def training_set(
    context: dg.AssetExecutionContext,
    interactions: pl.LazyFrame,
    items: pl.DataFrame,
    users: pl.DataFrame,
    model_params: dict,
    session_signals: pl.LazyFrame,
    pipeline: PipelineResource,
) -> pl.DataFrame:
    """The ranker's rows: each sampled user's candidates (every source's top `depth`) with every feature as
    of the user's cutoff (their newest 20% of interactions held out), labelled with the relevance of the
    held-out pairs (favourite 3, completion 2, play 1). Features only ever read events before the cutoff,
    session signals (the kinds the features read, `candidates.signals_for`) included. Above `max_fit_users` users,
    the windows are cut from a seeded sample of them at the whole base's scale (`_fit_sample`)."""
    params = ModelParams.from_dict(model_params["params"])
    interactions, users, session_signals, weight = _fit_sample(context, interactions, users, session_signals, pipeline)
    df = procedure.training_set(
        read_history(interactions),
        items,
        users,
        params,
        pipeline.params().max_training_users,
        signals_for(session_signals),
        user_weight=weight,
    )
    positives = int((df["relevance"] > 0).sum())
    context.add_output_metadata(
        {
            "users": df["user_id"].n_unique(),
            "positives": positives,
            "candidate_recall": round(positives / max(int(df["label_pairs"][0]) if df.height else 1, 1), 4),
        }
    )
    return df


@dg.asset(group_name=GROUP, kinds={"polars", "parquet"}, **in_pool(HISTORY_POOL))
def popularity_model(interactions: pl.LazyFrame, users: pl.DataFrame) -> pl.DataFrame:
    """Popularity-count baseline (distinct users with a positive interaction), globally and per
    cold-start segment: the fallback the API serves to users it does not know."""
    positive = read_history(interactions, POSITIVE_COLUMNS, positive_only=True)
    return fallback.popularity_table(positive, users, feature_cutoff(interactions), k=100)


@dg.asset(group_name=GROUP, kinds={"lightgbm", "mlflow"}, **in_pool(HISTORY_POOL))
def ranker_model(
    context: dg.AssetExecutionContext,
    training_set: pl.DataFrame,
    model_params: dict,
    interactions: pl.LazyFrame,
    mlflow: MlflowResource,
    pipeline: PipelineResource,
) -> dict:
    """LightGBM LambdaRank over the candidates, early-stopped on 20% of the training users, logged to MLflow
    (params, tuning, feature importance, signature, input example) and registered as a new version that
    carries its model params and its newest training event (the gate compares it, as champion, only on
    held-out events after that)."""
    params = ModelParams.from_dict(model_params["params"])
    booster, facts = procedure.train(training_set, params, pipeline.params().ranker_threads)
    importance = pl.DataFrame(feature_importance(booster), schema=["feature", "gain"], orient="row")
    ref = registry.log_ranker(
        tracking_uri=mlflow.tracking_uri,
        artifact_uri=mlflow.artifact_uri,
        experiment=mlflow.experiment,
        model=booster,
        input_example=training_set.select([pl.col(c).cast(pl.Float32) for c in FEATURES]).head(20),
        params={
            "objective": "lambdarank",
            "n_features": len(FEATURES),
            **{f"model.{k}": v for k, v in params.to_dict().items()},
        },
        metrics={k: v for k, v in facts.items()},
        tags={"dagster.run_id": context.run.run_id},
        importance=importance,
        model_name=mlflow.model_name,
        model_params=params.to_dict(),
        documents={"model_params.json": model_params},
        labels_until=latest_event_time(interactions),
    )
    context.add_output_metadata(
        {
            "model_version": ref.version,
            "mlflow_run_id": ref.run_id,
            "model_uri": ref.model_uri,
            "training": dg.MetadataValue.json({k: round(v, 4) for k, v in facts.items()}),
            "feature_importance": dg.MetadataValue.md(
                frame_preview_markdown(importance.with_columns(pl.col("gain").round(1)), 20)
            ),
        }
    )
    return ref.to_dict()


@dg.multi_asset(
    outs={
        f"holdout_{protocol}": dg.AssetOut(
            kinds={"polars", "mlflow"},
            description=(
                f"The whole training procedure run on the {protocol} holdout ({procedure.HOLDOUTS[protocol]}): "
                "fitted on the known part and scored at 10 (precision, recall, NDCG, MAP, MRR, hit rate, coverage, "
                "novelty) beside all-time popularity, recent popularity, EASE, item-kNN and the user's own replays "
                "fitted on the same rows, and the serving champion as it is. Independent of this cycle's ranker."
            ),
            is_required=False,
        )
        for protocol in procedure.PROTOCOLS
    },
    group_name=GROUP,
    **in_pool(HISTORY_POOL),
    can_subset=True,
)
def holdouts(
    context: dg.AssetExecutionContext,
    interactions: pl.LazyFrame,
    items: pl.DataFrame,
    users: pl.DataFrame,
    session_signals: pl.LazyFrame,
    mlflow: MlflowResource,
    pipeline: PipelineResource,
):
    """Both holdouts in one step, evaluated at once (`procedure.evaluate_protocols`: the second protocol in its
    own process when the ranker has two threads or more): as two steps of an in-process run (the CLI's) they took
    turns, each leaving a core idle outside LightGBM's fits. On the quickstart's data, 2 cores, quiet, the same
    two evaluations took 43.3 s and 39.6 s one after the other and 30.9 s and 29.5 s side by side."""
    params = pipeline.params()
    champion_version = registry.alias_version(mlflow.tracking_uri, model_name=mlflow.model_name)
    loader = champion_version and registry.ScorerLoader(mlflow.tracking_uri, champion_version, mlflow.model_name)
    wanted = tuple(p for p in procedure.PROTOCOLS if f"holdout_{p}" in context.selected_output_names)
    interactions, users, session_signals, sample = _sampled(
        context, interactions, users, session_signals, params.max_holdout_users, params.seed, "max_holdout_users"
    )
    results = procedure.evaluate_protocols(
        read_history(interactions),
        items,
        users,
        wanted,
        pipeline.model_params(),
        params.max_training_users,
        params.ranker_threads,
        loader,
        signals_for(session_signals),
    )
    for protocol, (table, about) in results.items():
        yield dg.Output(
            table.with_columns(champion_version=pl.lit(champion_version, dtype=pl.String)),
            output_name=f"holdout_{protocol}",
            metadata={
                "ndcg@10": dg.MetadataValue.md(_ndcg_markdown(table, protocol)),
                "champion_version": champion_version or "none",
                "sampled_users": sample.ids.len() if sample is not None else 0,
                "facts": dg.MetadataValue.json({k: str(v) for k, v in about.items() if k != "tuning_ndcg@10"}),
            },
        )


@dg.asset(group_name=GROUP, kinds={"mlflow"}, **in_pool(HISTORY_POOL))
def model_evaluation(
    context: dg.AssetExecutionContext,
    ranker_model: dict,
    training_set: pl.DataFrame,
    holdout_per_user: pl.DataFrame,
    holdout_global: pl.DataFrame,
    mlflow: MlflowResource,
    pipeline: PipelineResource,
) -> pl.DataFrame:
    """The gate over both holdouts (`holdout_per_user`, `holdout_global`): the new ranker becomes `champion`
    only if it beats every baseline and personalised source list on the per-user holdout by `promotion_margin` and
    by `promotion_z` standard errors of its per-user gap to the best of them (and the serving champion,
    `model.gate`); otherwise the champion stays while it beats them, or the best personalised list is registered
    and served. The figures are logged to the ranker's MLflow run."""
    assert procedure.PROTOCOLS == ("per_user", "global"), "one input per protocol"
    params = pipeline.params()
    ref = registry.ModelRef(**ranker_model)
    both = pl.concat([holdout_per_user, holdout_global])
    champions = both["champion_version"].unique().to_list()
    if len(champions) > 1:
        raise RuntimeError(
            f"the serving champion changed while the holdouts ran (versions {sorted(map(str, champions))}): "
            "materialize holdout_per_user, holdout_global and model_evaluation again"
        )
    champion_version = champions[0] if champions else None
    table = both.drop("champion_version")
    decision = gate.decide(
        table,
        ref,
        example=training_set.select([pl.col(c).cast(pl.Float32) for c in FEATURES]).head(20),
        tracking_uri=mlflow.tracking_uri,
        artifact_uri=mlflow.artifact_uri,
        experiment=mlflow.experiment,
        margin=params.promotion_margin,
        z=params.promotion_z,
        champion=champion_version,
        run_tags={"dagster.run_id": context.run.run_id},
    )
    served = registry.alias_version(mlflow.tracking_uri, model_name=ref.name) or "none"
    logged = {f"{r['protocol']}.{r['model']}.{r['metric']}": r["value"] for r in table.iter_rows(named=True)}
    registry.log_run_metrics(mlflow.tracking_uri, ref.run_id, logged)
    context.add_output_metadata(
        {
            **{f"{p}_ndcg@10": dg.MetadataValue.md(_ndcg_markdown(table, p)) for p in procedure.PROTOCOLS},
            "metrics": dg.MetadataValue.md(_metrics_markdown(table)),
            "gate_decision": decision.alias,
            "gate_reason": decision.reason,
            "served_version": served,
            "model_version": ref.version,
            "champion_before": champion_version or "none",
        }
    )
    return table.with_columns(model_version=pl.lit(ref.version), served_version=pl.lit(served))


def _ndcg_markdown(table: pl.DataFrame, protocol: str) -> str:
    rows = table.filter((pl.col("protocol") == protocol) & (pl.col("metric") == "ndcg@10")).select("model", "value")
    return frame_preview_markdown(rows.with_columns(pl.col("value").round(4)), rows=rows.height)


def _metrics_markdown(table: pl.DataFrame) -> str:
    wide = table.with_columns(model=pl.col("protocol") + ":" + pl.col("model")).pivot(
        on="model", index="metric", values="value"
    )
    return frame_preview_markdown(wide.with_columns(pl.exclude("metric").round(4)), rows=wide.height, max_cols=20)
