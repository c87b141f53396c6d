"""Batch recommendation sets by user shard (scores, rules, JSON-lines export) and experiment assets."""

from datetime import UTC, datetime

import dagster as dg
import polars as pl

from assets import groups
from assets.features import feature_cutoff
from assets.partitions import SHARD_KEYS, user_shards
from assets.pools import HISTORY_POOL, in_pool
from recsys_platform import schemas
from recsys_platform.analytics.reporting import frame_preview_markdown
from recsys_platform.batch import scoring as bs
from recsys_platform.config import CHAMPION_ALIAS, POPULARITY_VERSION
from recsys_platform.experiments import ab_tests as experiments
from recsys_platform.features.tables import latest_event_time, read_history
from recsys_platform.ingest.landing import parquet_bytes
from recsys_platform.model import fallback, registry
from recsys_platform.model.candidates import signals_for
from recsys_platform.model.serving import serving_recommender
from recsys_platform.serve import deployment
from recsys_platform.serve.online_store import StaleWriteError
from recsys_platform.serve.served_log import export_served_rows, served_key
from resources import LandingZoneResource, MlflowResource, OnlineStoreResource, PipelineResource
from resources.recommendation_sets import RecommendationSetsResource

ALL_EVENT_HOURS = dg.AssetIn("raw_events", partition_mapping=dg.AllPartitionMapping())
ALL_SERVED_HOURS = dg.AssetIn("served_log", partition_mapping=dg.AllPartitionMapping())


def _checked_config(resource: RecommendationSetsResource):
    config = resource.config()
    if config.batch.shards != len(SHARD_KEYS):
        raise dg.Failure(
            f"batch.shards is {config.batch.shards} in {resource.config_path} but the code location was loaded "
            f"with {len(SHARD_KEYS)} shards: reload the code location so the partitions match"
        )
    return config


@dg.asset(
    group_name=groups.SERVING,
    partitions_def=user_shards,
    backfill_policy=dg.BackfillPolicy.single_run(),
    kinds={"lightgbm", "polars", "parquet"},
    deps=["model_evaluation"],
)
def batch_scores(
    context: dg.AssetExecutionContext,
    interactions: pl.DataFrame,
    items: pl.DataFrame,
    users: pl.DataFrame,
    popularity_model: pl.DataFrame,
    session_signals: pl.LazyFrame,
    mlflow: MlflowResource,
    pipeline: PipelineResource,
    set_config: RecommendationSetsResource,
    landing: LandingZoneResource,
):  # {shard: frame}, one per shard of the run (the lake IO manager stores each)
    """Up to `batch.items_per_user` items per eligible user of this shard (stable hash of the user id):
    the `champion` version's ranked candidates, then the other recommendable items by recency-weighted EASE
    and popularity; the popularity baseline when there is no champion. A run over several shards loads the
    champion once and writes one file per shard."""
    config = _checked_config(set_config)
    cutoff, now = feature_cutoff(interactions), datetime.now(UTC)
    eligible = bs.eligible_users(users, interactions, cutoff, config.eligibility)
    keys = context.partition_keys
    champion = registry.alias_version(mlflow.tracking_uri, CHAMPION_ALIAS, mlflow.model_name)
    if champion is None:
        context.log.warning("no champion model registered: batch scores come from the popularity baseline")
        empty = pl.DataFrame(schema={"user_id": pl.String, "item_id": pl.String})

        def scored(key: str) -> pl.DataFrame:
            mine = bs.users_of_shard(eligible, key, config.batch.shards)
            recs = fallback.popularity_recommendations(
                popularity_model, mine, empty, items, users, config.batch.items_per_user
            )
            return recs.with_columns(
                shard=pl.lit(key), model_version=pl.lit(POPULARITY_VERSION), generated_at=pl.lit(now, dtype=bs.TS)
            ).select(list(schemas.BATCH_SCORE_SCHEMA))
    else:
        signals = signals_for(session_signals)
        rec, version = serving_recommender(
            interactions,
            items,
            users,
            cutoff,
            champion,
            mlflow.tracking_uri,
            mlflow.model_name,
            pipeline.lake_url,
            landing.s3_endpoint_url,
            lightgbm=True,  # ~160 candidate rows per user: the compiled ranker, not the numpy trees (ranker_predict.py)
            signals=signals,
        )

        def scored(key: str) -> pl.DataFrame:
            return bs.score_shard(rec, version, interactions, users, eligible, key, config.batch, cutoff, now, signals)

    out = {key: scored(key) for key in keys}
    every = pl.concat(out.values())
    per_user = every.group_by("user_id").len()["len"]
    context.add_output_metadata(
        {
            "model_version": every["model_version"].first() if every.height else "none",
            "eligible_users_all_shards": eligible.len(),
            "users": per_user.len(),
            "mean_items_per_user": float(per_user.mean() or 0.0),
            "feature_cutoff": cutoff.isoformat(),
        }
    )
    return out


@dg.asset(
    group_name=groups.SERVING,
    partitions_def=user_shards,
    backfill_policy=dg.BackfillPolicy.single_run(),
    kinds={"polars", "parquet"},
    ins={"raw_events": ALL_EVENT_HOURS},
)
def recommendation_sets(
    context: dg.AssetExecutionContext,
    batch_scores: pl.DataFrame,
    items: pl.DataFrame,
    users: pl.DataFrame,
    interactions: pl.DataFrame,
    raw_events: pl.LazyFrame,
    popularity_model: pl.DataFrame,
    set_config: RecommendationSetsResource,
):  # {shard: frame}, one per shard of the run (the lake IO manager stores each)
    """Named sets (recommended for you, sleep tonight, because you searched, new for you) made from this
    shard's batch scores by each set's rules, in the order the YAML declares; for a live experiment, its
    surface set is what each user's arm is served (`serves:`: the set, the model's ranking or the popularity
    list; `context` = `arm:<arm>`). Metadata counts, per set and rule, the rows each rule removed or moved, and
    the users per arm. A run over several shards builds them at once and writes one file per shard."""
    config = _checked_config(set_config)
    now = datetime.now(UTC)
    searches = bs.last_search_queries(raw_events.select("user_id", "event_type", "event_time", "query"))
    ctx = bs.rule_context(users, interactions, searches, now.date(), feature_cutoff(interactions))
    sets, counts = bs.build_sets(batch_scores, items, ctx, config)
    sets, arms = bs.apply_experiment_arms(sets, batch_scores, popularity_model, users, items, config, now)
    per_set = sets.group_by("set_name").agg(rows=pl.len(), users=pl.col("user_id").n_unique()).sort("set_name")
    counts_by_set = {
        name: [{k: v for k, v in row.items() if k != "set_name"} for row in part.iter_rows(named=True)]
        for (name,), part in counts.partition_by("set_name", as_dict=True, maintain_order=True).items()
    }
    context.add_output_metadata(
        {
            "sets": dg.MetadataValue.md(frame_preview_markdown(per_set, rows=per_set.height)),
            "rule_counts": dg.MetadataValue.md(frame_preview_markdown(counts, rows=counts.height)),
            "rule_counts_by_set": dg.MetadataValue.json(counts_by_set),
            "users_by_arm": dg.MetadataValue.json(arms),
        }
    )
    return bs.split_by_shard(sets, context.partition_keys, config.batch.shards)


@dg.asset(
    group_name=groups.SERVING,
    partitions_def=user_shards,
    backfill_policy=dg.BackfillPolicy.single_run(),
    kinds={"json"},
)
def recommendation_export(
    context: dg.AssetExecutionContext,
    recommendation_sets: pl.DataFrame,
    set_config: RecommendationSetsResource,
    online_store: OnlineStoreResource,
    landing: LandingZoneResource,
) -> dg.MaterializeResult:
    """JSON lines in the managed-recommender batch format, one file per set and shard
    (`exports/recommendation_sets/<set>/<shard>.jsonl`), one line per user: userId, itemList, modelVersion; and
    the same sets in the active slot of the online store (namespace `sets`, what `GET
    /v1/users/{user_id}/sets/{set_name}` and an experiment's `set` arm serve) when it serves their version."""
    config = _checked_config(set_config)
    keys = context.partition_keys
    written: dict[str, object] = {}
    for key, part in bs.split_by_shard(recommendation_sets, keys, config.batch.shards).items():
        for name, file in bs.export_sets(part, set_config.exports / "recommendation_sets", key).items():
            written[name if len(keys) == 1 else f"{name}/{key}"] = file
    online: dict[str, object] = {}
    with online_store.open() as store:
        for version, rows in bs.online_rows(recommendation_sets).items():
            try:
                online[version] = deployment.write_user_updates(store, version, "sets", rows)
            except StaleWriteError as exc:  # the sets come from another version than the one being served
                online[version] = f"not written: {exc}"
                context.log.warning("sets of model %s not written to the online store: %s", version, exc)
    # What was exported goes to the served log, like every list the API returns.
    now = datetime.now(UTC)
    logged = export_served_rows(recommendation_sets, now)
    if logged.height:
        landing.zone().write_bytes(served_key(now), parquet_bytes(logged))
    return dg.MaterializeResult(
        metadata={
            "files": dg.MetadataValue.json(written),
            "lines": sum(w["users"] for w in written.values()),
            "online_store_users": dg.MetadataValue.json(online),
            "served_log_rows": logged.height,
        }
    )


@dg.asset(
    group_name=groups.EXPERIMENTS,
    kinds={"polars", "parquet"},
    ins={
        "raw_events": ALL_EVENT_HOURS,
        "served_log": ALL_SERVED_HOURS,
    },
    **in_pool(HISTORY_POOL),
)
def experiment_exposures(
    context: dg.AssetExecutionContext,
    raw_events: pl.LazyFrame,
    served_log: pl.LazyFrame,
    set_config: RecommendationSetsResource,
) -> pl.DataFrame:
    """One row per user and configured experiment: the first time the API served the user the experiment's
    surface (from the served log, with the arm recorded then); for an experiment the served log has no rows of
    (served before the log existed, or apps that read only the batch export), the first app open inside the
    window with the user's arm (sha256 of experiment name and user id by the arm weights) stands in."""
    config = set_config.config()
    opens = raw_events.filter(pl.col("event_type") == "app_open").select("user_id", "event_type", "event_time")
    opens = opens.collect()
    frames, sources = [], {}
    for exp in config.experiments:
        if opens.height == 0:
            break
        start, end = experiments.experiment_window(exp, opens["event_time"].max())
        served = experiments.served_exposures(served_log, exp, start, end)
        sources[exp.name] = "served_log" if served.height else "first_app_open"
        frames.append(served if served.height else experiments.log_exposures(opens, exp, start, end))
    out = pl.concat(frames) if frames else pl.DataFrame(schema=schemas.EXPOSURE_SCHEMA)
    by_arm = out.group_by("experiment", "arm").len().sort("experiment", "arm")
    context.add_output_metadata(
        {
            "exposed_by_arm": dg.MetadataValue.md(frame_preview_markdown(by_arm, by_arm.height)),
            "exposure_source": dg.MetadataValue.json(sources),
        }
    )
    return out


@dg.asset(
    group_name=groups.EXPERIMENTS,
    kinds={"scipy", "matplotlib", "parquet"},
    ins={"served_log": ALL_SERVED_HOURS},
    **in_pool(HISTORY_POOL),
)
def experiment_analysis(
    context: dg.AssetExecutionContext,
    experiment_exposures: pl.DataFrame,
    interactions: pl.LazyFrame,
    served_log: pl.LazyFrame,
    set_config: RecommendationSetsResource,
) -> pl.DataFrame:
    """Per experiment, metric and arm: mean with 95% CI, difference vs control with its CI and p-value
    (Welch t-test for means, two-proportion z-test for rates): completion days, 24-hour completion, content
    starts, and where the served log holds the experiment's lists, the 24-hour click-through on served items,
    the served lists' nDCG@10 against later starts and their repeat-listen share; a table and a plot in the
    metadata."""
    config = set_config.config()
    tables, md = [], []
    for exp in config.experiments:
        exposed = experiment_exposures.filter(pl.col("experiment") == exp.name)
        if exposed.height == 0:
            continue
        _, end = experiments.experiment_window(exp, latest_event_time(interactions))
        # Outcomes count from each user's exposure on: read the window from the first exposure only.
        window = read_history(interactions, ("user_id", "event_type", "event_time"), exposed["exposed_at"].min(), end)
        outcomes = experiments.user_outcomes(exposed, window, end)
        served = experiments.served_outcomes(exposed, served_log, interactions, exp, end)
        if served.height:
            outcomes = outcomes.join(served, on="user_id", how="left").with_columns(
                pl.col(m).fill_null(0.0) for m in experiments.SERVED_METRICS
            )
        table = experiments.analyze(outcomes, exp.control, weights=exp.arms)
        png = experiments.plot_analysis(table)
        path = set_config.exports / "experiments" / f"{exp.name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        md.append(f"### {exp.name}\n\n{experiments.analysis_markdown(table, png)}\n\nplot: `{path}`")
        tables.append(table)
    out = pl.concat(tables) if tables else pl.DataFrame(schema=experiments.ANALYSIS_SCHEMA)
    context.add_output_metadata({"analysis": dg.MetadataValue.md("\n\n".join(md) or "no exposures yet")})
    return out
