"""Partitioning of the assets: one partition per arrival hour of the landing zone (the event assets) and one
per user shard (the batch recommendation sets).

Dagster needs an asset's partitions when the asset is defined, that is when its module is imported, so the
first arrival hour (RECSYS_PARTITION_START) and the number of shards (`batch.shards` of the set file) are the
settings read at import time: here, once, through `settings_at_load`. Everything else reaches the assets through
their resources (`orchestration.environment.build_resources`), built from the Settings the root is given.
"""

from functools import cache

import dagster as dg

from recsys_platform.batch.scoring import shard_keys
from recsys_platform.batch.set_config import load_sets_config
from recsys_platform.config import Settings


@cache
def settings_at_load() -> Settings:
    """The settings the code location is loaded with, read once (the partitions below, and the root's `defs`)."""
    return Settings.from_env()


arrival_hours = dg.HourlyPartitionsDefinition(
    start_date=settings_at_load().partition_start, end_offset=1, timezone="UTC"
)
SHARD_KEYS = shard_keys(load_sets_config(settings_at_load().recommendation_sets_path).batch.shards)
user_shards = dg.StaticPartitionsDefinition(SHARD_KEYS)
