"""The jobs: each selects asset groups (`assets/groups.py`) or a selection declared here from the asset
definitions themselves, never a hand-kept list of asset-key strings."""

from __future__ import annotations

import dagster as dg

from assets import groups, ingestion, partitions, push, realtime, serving
from assets import recommendation_sets as sets

# Selections used by more than one job (and by tests that materialize parts of the graph).
INGESTION = dg.AssetSelection.groups(groups.INGESTION)
LIFECYCLE = dg.AssetSelection.groups(groups.LIFECYCLE)
REALTIME = dg.AssetSelection.assets(realtime.session_features, realtime.realtime_recommendations)
SHARDED = dg.AssetSelection.assets(sets.batch_scores, sets.recommendation_sets, sets.recommendation_export)
SHARD_KEYS = partitions.SHARD_KEYS
REFRESH_MAX_RETRIES = 3

ingest_job = dg.define_asset_job(
    "ingest_events",
    selection=INGESTION,
    description="Ingest the catalog, the profiles and the event files of one or more arrival hours "
    "(what the landing sensor runs).",
)
training_cycle_job = dg.define_asset_job(
    "training_cycle",
    selection=dg.AssetSelection.all() - INGESTION - REALTIME - SHARDED - LIFECYCLE,
    description="Features, training, evaluation and gate, batch recommendations, blue-green deploy, catalog.",
)
deploy_job = dg.define_asset_job(
    "deploy_champion",
    selection=dg.AssetSelection.assets(
        serving.recommendations, serving.feature_store_snapshot, serving.analyst_catalog
    ),
    description="Re-score with the current champion and deploy it to the standby slot, then flip.",
)
push_job = dg.define_asset_job(
    "enqueue_pushes",
    selection=dg.AssetSelection.assets(push.push_notifications),
    description="Enqueue push notifications for users who just completed a session or searched for sleep "
    "content at night (delivered by `recsys push-worker`).",
)
refresh_realtime_job = dg.define_asset_job(
    "refresh_realtime",
    # Without the asset checks of raw_events: importing and running the suites here would add ~10 s to every
    # refresh, so they run right after it in their own run (raw_events_contracts, sensors/contracts.py).
    selection=(dg.AssetSelection.assets(ingestion.raw_events) | REALTIME).without_checks(),
    executor_def=dg.in_process_executor,
    tags={"dagster/max_retries": str(REFRESH_MAX_RETRIES), "dagster/retry_strategy": "ALL_STEPS"},
    description="Near-real-time refresh of one arrival hour (what the landing sensor runs): ingest its files, "
    "session features, re-score the users who produced the new events and write them to the active slot.",
)
raw_events_contracts_job = dg.define_asset_job(
    "raw_events_contracts",
    selection=dg.AssetSelection.checks_for_assets(ingestion.raw_events),
    # One process a run, forked from the warm run worker (orchestration.run_launcher), which has imported Great
    # Expectations: this job runs after every refresh, beside the next one, on the same cores. With the default
    # executor each run started an interpreter, a forkserver that imported the project again, and a process per
    # check that imported Great Expectations. Freshness benchmark, 2 cores, 50 probes: event -> changed list p50
    # 1.78 s and p95 4.15 s before, 1.24 s and 2.05 s after.
    executor_def=dg.in_process_executor,
    description="The raw-events contracts (GX suite and file reconciliation) of one arrival hour, on their own "
    "after each refresh_realtime run (raw_events_contracts_after_refresh), off the refresh's latency path; a "
    "failing contract fails the run, which run_failure_alerts reports.",
)
recommendation_sets_job = dg.define_asset_job(
    "recommendation_sets_batch",
    # the catalog is rebuilt too, so analysts get views over the sets as soon as the first shard lands
    selection=SHARDED | dg.AssetSelection.assets(serving.analyst_catalog),
    partitions_def=partitions.user_shards,
    description="Batch-score one user shard with the champion, apply the recommendation-set rules, export "
    "JSON lines, refresh the analyst catalog (on demand: launch or backfill shards; scheduled every 2 days).",
)

served_log_job = dg.define_asset_job(
    "load_served_log",
    selection=dg.AssetSelection.assets(ingestion.served_log),
    description="Load one arrival hour of the served log (the lists the API returned) from the landing zone into "
    "the lake; hourly by served_log_hourly, and with every ingest_events run.",
)
retention_job = dg.define_asset_job(
    "apply_retention",
    selection=LIFECYCLE,
    description="Delete what is past its retention (config/retention.yaml): old event files and partitions, "
    "biometric samples sooner, old exports.",
)

JOBS = [
    retention_job,
    ingest_job,
    training_cycle_job,
    deploy_job,
    push_job,
    refresh_realtime_job,
    recommendation_sets_job,
]
