"""Dagster resources and IO managers: storage, landing zone, online store, MLflow, settings."""

from resources.lake import LakeIOManager, PolarsParquetIOManager
from resources.platform import LandingZoneResource, MlflowResource, OnlineStoreResource, PipelineResource
from resources.push import PushQueueResource

__all__ = [
    "LakeIOManager",
    "LandingZoneResource",
    "MlflowResource",
    "OnlineStoreResource",
    "PipelineResource",
    "PolarsParquetIOManager",
    "PushQueueResource",
]
