"""Near-real-time path: event collection, landing cursor, session features, context re-weighting, refresh.

Run tags shared by the landing sensor and the refresh job are defined here (the core never imports dagster).
"""

from __future__ import annotations

from recsys_platform.config import SENSOR_STATUS_ENV

PARTITION_TAG = "recsys/refresh_partition"
# The hour of a raw-events contracts run: its own concurrency key, so a contracts run (GX, seconds) never holds up
# the next refresh of its hour, as it did while it carried PARTITION_TAG.
CONTRACTS_TAG = "recsys/contracts_partition"
FIRST_FILE_TAG = "recsys/first_file"
LAST_FILE_TAG = "recsys/last_file"
FILES_TAG = "recsys/files"

__all__ = [
    "CONTRACTS_TAG",
    "FILES_TAG",
    "FIRST_FILE_TAG",
    "LAST_FILE_TAG",
    "PARTITION_TAG",
    "SENSOR_STATUS_ENV",
]
