"""Near-real-time assets: session features per arrival hour and the refresh of touched users' recommendations.

The `refresh_realtime` job (orchestration/jobs.py) is what the landing sensor runs for each arrival hour
that received files: raw_events[hour] -> session_features[hour] -> realtime_recommendations[hour]. It runs in-process
(no per-step processes), at most one run per partition at a time (run tag
`recsys/refresh_partition`, limited by the instance's tag concurrency limits), and failed runs are
retried (`dagster/max_retries`; needs `run_retries: enabled: true` on the instance). Each run
refreshes the users of every file after the last file a successful refresh of its partition
covered (recorded as `last_file` in the materialization metadata), so queued runs coalesce and a
failed run's events are picked up by its retry or the next run, never lost or applied twice.
"""

import time
import warnings
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import polars as pl

from assets import groups
from assets.partitions import arrival_hours
from recsys_platform.ingest.landing import PARTITION_KEY_FORMAT
from recsys_platform.push.selection import schedule_pushes
from recsys_platform.realtime import FIRST_FILE_TAG
from resources import LandingZoneResource, MlflowResource, OnlineStoreResource, PipelineResource, PushQueueResource


def _this_and_previous_hour() -> dg.TimeWindowPartitionMapping:
    with warnings.catch_warnings():  # allow_nonexistent_upstream_partitions is beta; needed for the first hour
        warnings.simplefilter("ignore", category=dg.BetaWarning)
        return dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=0, allow_nonexistent_upstream_partitions=True)


def last_processed_file(context: dg.AssetExecutionContext) -> str | None:
    """The newest landing file a previous successful refresh of this partition covered."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=context.asset_key, asset_partitions=[context.partition_key]), limit=1
    ).records
    if not records or records[0].asset_materialization is None:
        return None
    value = records[0].asset_materialization.metadata.get("last_file")
    return str(value.value) if value is not None and value.value else None


def touched_user_ids(context: dg.AssetExecutionContext, events: pl.DataFrame) -> tuple[list[str], str | None, str]:
    """(users with events in files not refreshed yet, exclusive lower file key, inclusive upper file key).

    A run covers every file after the last one a previous refresh of the partition covered, so a run
    that waited in the queue also serves the files that landed meanwhile (the sensor requests no
    second queued run for a partition), and a failed run's files are covered by the next one. The
    first refresh of a partition starts at the files that triggered it; a manual run covers the hour.
    """
    if "source_file" not in events.columns or events.height == 0:
        return [], None, ""
    upper = str(events["source_file"].max())
    after = last_processed_file(context)
    files = pl.col("source_file")
    if after is not None:
        events = events.filter(files > pl.lit(after))
    elif context.run.tags.get(FIRST_FILE_TAG):
        events = events.filter(files >= pl.lit(context.run.tags[FIRST_FILE_TAG]))
    return sorted(events["user_id"].unique().to_list()), after, upper


@dg.asset(
    partitions_def=arrival_hours,
    group_name=groups.FEATURES,
    kinds={"polars", "parquet"},
    ins={"raw_events": dg.AssetIn(partition_mapping=_this_and_previous_hour())},
    backfill_policy=dg.BackfillPolicy.single_run(),
)
def session_features(
    context: dg.AssetExecutionContext,
    raw_events: pl.LazyFrame,
    users: pl.DataFrame,
    items: pl.DataFrame,
    pipeline: PipelineResource,
) -> Any:  # {partition_key: frame}, one per hour of the run (the lake IO manager stores each)
    """Current-session features (event-time windows of 10 minutes sliding by 5, watermark
    `watermark_minutes`) of every user with events in this arrival hour: content started/completed,
    sleep bounce rate, recent search terms and their topic-keyword vector, step and heart-rate trends,
    and whether it is night for the user. Reads this hour and the one before (windows cross hours)."""
    from recsys_platform.realtime.sessions import session_features as build

    start = time.perf_counter()
    events = raw_events.collect()
    watermark = pipeline.params().watermark_minutes
    hours = pl.col("arrival_time").dt.strftime(PARTITION_KEY_FORMAT)
    out = {}
    for key in context.partition_keys:
        active = sorted(events.filter(hours == key)["user_id"].unique()) if events.height else []
        out[key] = build(events, users, items, watermark, active)
    df = pl.concat(out.values())
    context.add_output_metadata(
        {
            "users": df.height,
            "night_users": int(df["is_night"].sum()) if df.height else 0,
            "with_search": int((df["search_terms"].list.len() > 0).sum()) if df.height else 0,
            "seconds": round(time.perf_counter() - start, 3),
        }
    )
    return out


@dg.asset(
    partitions_def=arrival_hours,
    group_name=groups.SERVING,
    kinds={"lightgbm", "sqlite", "redis"},
    deps=["interactions"],
    backfill_policy=dg.BackfillPolicy.single_run(),
)
def realtime_recommendations(
    context: dg.AssetExecutionContext,
    raw_events: pl.DataFrame,
    session_features: pl.DataFrame,
    items: pl.DataFrame,
    users: pl.DataFrame,
    online_store: OnlineStoreResource,
    mlflow: MlflowResource,
    pipeline: PipelineResource,
    push_queue: PushQueueResource,
    landing: LandingZoneResource,
) -> dg.MaterializeResult:
    """Re-scores only the users whose events triggered this run, with the model bound to the ACTIVE
    slot, re-weighted by their session context, and writes their recommendations and features to that
    slot (refused if a deploy flipped the slot meanwhile; then re-scored for the new slot). Then queues a
    push for the users whose top recommendation changed or whose events fired a push rule (per-day cap,
    quiet hours, opt-out, dedup: `push.selection`), delivered by `recsys push-worker`."""
    from recsys_platform.batch.rules import played_pairs
    from recsys_platform.model.serving import serving_recommender
    from recsys_platform.model.signals import touched_signals
    from recsys_platform.realtime import refresh

    started = time.perf_counter()
    params = pipeline.params()
    user_ids, after, upper = touched_user_ids(context, raw_events)
    batch = refresh.batch_interactions(pipeline.lake_url)
    since = (batch.select(pl.col("event_time").max()).collect().item() if batch is not None else None) or datetime.now(
        UTC
    )
    recent = refresh.recent_raw_events(pipeline.lake_url, since, user_ids) if user_ids else raw_events.head(0)
    mine = refresh.touched_interactions(batch, recent, items, user_ids)
    signals = touched_signals(refresh.batch_signals(pipeline.lake_url), recent, user_ids)
    now = datetime.now(UTC)
    user_feats = refresh.touched_user_features(mine, items, users, user_ids, now)
    t_read = time.perf_counter()

    def scored_for(version: str) -> pl.DataFrame:
        rec, _ = serving_recommender(
            lambda: batch.collect() if batch is not None else mine,
            items,
            users,
            now,
            version,
            mlflow.tracking_uri,
            mlflow.model_name,
            pipeline.lake_url,
            landing.s3_endpoint_url,
        )
        return refresh.score_touched(rec, mine, users, user_ids, now, 3 * params.top_n, signals)

    pushes = None
    with online_store.open() as store:
        report = refresh.refresh_users(
            store,
            user_feats,
            session_features,
            items,
            params.top_n,
            scored_for,
            now,
            played=played_pairs(mine),
            replay_policy=(params.max_replays, params.replay_window),
        )
        t_push = time.perf_counter()
        if params.push_on_refresh and report.rescored_users:
            with push_queue.open() as queue:
                pushes = schedule_pushes(
                    store, queue, recent, users, now, items, top_changed=sorted(report.top_changed)
                )
            report.timings["push_s"] = time.perf_counter() - t_push
    hour = context.partition_keys[-1]  # the newest arrival hour of the run (one, unless a range was run)
    written = refresh.write_refreshed(
        pipeline.lake_url, hour, context.run.run_id, refresh.refreshed_rows(report, hour, now)
    )
    timings = {
        "read_s": t_read - started,
        **report.timings,
        "total_s": time.perf_counter() - started,
    }
    if report.skipped:
        context.log.warning(f"refresh of {len(user_ids)} users: {report.skipped}")
    return dg.MaterializeResult(
        metadata={
            "touched_users": len(user_ids),
            "files_after": after or "",
            "last_file": upper,
            "rescored_users": report.rescored_users,
            "model_version": str(report.model_version),
            "slot": str(report.slot),
            "attempts": report.attempts,
            "timings": dg.MetadataValue.json({k: round(v, 4) for k, v in timings.items()}),
            "top_changed_users": len(report.top_changed),
            "lake_file": written or "",
            "pushes_enqueued": pushes.enqueued if pushes is not None else 0,
            "pushes_duplicate": pushes.duplicates if pushes is not None else 0,
        }
    )
