"""Partitioning of the event assets: one partition per arrival hour of the landing zone."""

import dagster as dg

from recsys_platform.config import Settings

arrival_hours = dg.HourlyPartitionsDefinition(
    start_date=Settings.from_env().partition_start, end_offset=1, timezone="UTC"
)
