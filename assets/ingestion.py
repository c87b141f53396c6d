"""Ingestion assets: landed events per arrival hour (with quarantine), catalog and profiles."""

from datetime import UTC, datetime

import dagster as dg
import polars as pl

from assets import groups
from assets.partitions import arrival_hours
from assets.pools import RAW_EVENTS_POOL, in_pool
from recsys_platform import schemas
from recsys_platform.ingest.ingestion import imported_event_floors, ingest_files, read_table_updates
from recsys_platform.ingest.landing import ITEMS_PREFIX, PARTITION_KEY_FORMAT, USERS_PREFIX
from recsys_platform.serve.served_log import read_served_hour
from resources import LandingZoneResource

GROUP = groups.INGESTION


@dg.asset(group_name=GROUP, kinds={"polars", "parquet"})
def items(context: dg.AssetExecutionContext, landing: LandingZoneResource) -> pl.DataFrame:
    """The content catalog (meditations, sleep stories, music, ...): every catalog file in the
    landing zone's items/ folder, later files overriding earlier rows by item_id."""
    df = read_table_updates(landing.zone(), ITEMS_PREFIX, schemas.ITEM_SCHEMA, "item_id")
    context.add_output_metadata({"by_content_type": dg.MetadataValue.json(_counts(df, "content_type"))})
    return df


@dg.asset(group_name=GROUP, kinds={"polars", "parquet"})
def users(context: dg.AssetExecutionContext, landing: LandingZoneResource) -> pl.DataFrame:
    """User profiles (tenure, country, language, habits, household): every profile file in the
    landing zone's users/ folder, later files overriding earlier rows by user_id."""
    df = read_table_updates(landing.zone(), USERS_PREFIX, schemas.USER_SCHEMA, "user_id")
    context.add_output_metadata({"by_household": dg.MetadataValue.json(_counts(df, "household_type"))})
    return df


def _counts(df: pl.DataFrame, col: str) -> dict[str, int]:
    return {str(k): int(v) for k, v in df.group_by(col).len().sort(col).iter_rows()} if df.height else {}


@dg.multi_asset(
    outs={
        "raw_events": dg.AssetOut(
            description="App events that landed in each arrival hour: validated, typed and deduplicated "
            "by event_id. Event time and arrival time are both kept; late events land in their arrival hour.",
            group_name=GROUP,
            kinds={"polars", "parquet"},
        ),
        "quarantined_events": dg.AssetOut(
            description="Rows and files rejected from raw_events, each with a reason code, the source file "
            "and the line/row number. Nothing is dropped silently.",
            group_name=GROUP,
            kinds={"polars", "parquet"},
        ),
    },
    partitions_def=arrival_hours,
    backfill_policy=dg.BackfillPolicy.single_run(),
    **in_pool(RAW_EVENTS_POOL),
)
def raw_events(context: dg.AssetExecutionContext, landing: LandingZoneResource, items: pl.DataFrame):
    """Ingest every file landed in the run's arrival hours."""
    zone = landing.zone()
    by_partition = zone.files_by_partition(context.partition_keys)
    known = set(items["item_id"].to_list())
    # Once per run, the imports that landed in these hours: their history is accepted back to its earliest time.
    floors = imported_event_floors(zone, context.partition_keys)
    events: dict[str, pl.DataFrame] = {}
    quarantined: dict[str, pl.DataFrame] = {}
    totals = {"rows_in": 0, "valid": 0, "quarantined": 0, "duplicates": 0, "files": 0, "unreadable_files": 0}
    reasons: dict[str, int] = {}
    for key in sorted(by_partition):
        hour = datetime.strptime(key, PARTITION_KEY_FORMAT).replace(tzinfo=UTC)
        result = ingest_files(zone, by_partition[key], key, hour, known, floors)
        events[key], quarantined[key] = result.events, result.quarantined
        for name in totals:
            totals[name] += result.stats[name]
        for reason, n in result.quarantined.group_by("reason").len().iter_rows():
            reasons[reason] = reasons.get(reason, 0) + n
    if len(context.partition_keys) == 1 and not events:
        # A partition with no files yet: store an empty, typed partition (idempotent).
        only = context.partition_keys[0]
        events[only] = schemas.empty_frame(schemas.EVENT_SCHEMA)
        quarantined[only] = schemas.empty_frame(schemas.QUARANTINE_SCHEMA)
    reconciled = totals["rows_in"] == totals["valid"] + totals["quarantined"] + totals["duplicates"]
    meta = {
        **totals,
        "partitions_with_files": len(by_partition),
        "reconciled": reconciled,
        "quarantine_reasons": dg.MetadataValue.json(reasons),
    }
    if not reconciled:
        raise dg.Failure(description=f"row reconciliation failed: {totals}", metadata=meta)
    single = len(context.partition_keys) == 1
    yield dg.Output(events[context.partition_keys[0]] if single else events, "raw_events", metadata=meta)
    yield dg.Output(
        quarantined[context.partition_keys[0]] if single else quarantined,
        "quarantined_events",
        metadata={"quarantined_rows": totals["quarantined"], "reasons": dg.MetadataValue.json(reasons)},
    )


@dg.asset(
    partitions_def=arrival_hours,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name=GROUP,
    kinds={"polars", "parquet"},
)
def served_log(context: dg.AssetExecutionContext, landing: LandingZoneResource):
    """Every list served in each arrival hour (one row per list the API returned: user, experiment and arm,
    source, model version, slot, item ids in served order, request id, time), from the landing zone's
    `served/` files, which the API writes in batches off its request path."""
    zone = landing.zone()
    frames = {key: read_served_hour(zone, key) for key in context.partition_keys}
    rows = sum(f.height for f in frames.values())
    by_arm: dict[str, int] = {}
    for frame in frames.values():
        for arm, n in frame.group_by("arm").len().iter_rows():
            by_arm[str(arm)] = by_arm.get(str(arm), 0) + n
    context.add_output_metadata({"lists_served": rows, "by_arm": dg.MetadataValue.json(by_arm)})
    return frames
