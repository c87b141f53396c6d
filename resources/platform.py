"""Configurable resources wrapping the core: landing zone, online store, MLflow, pipeline settings."""

from pathlib import Path

import dagster as dg
from dagster_aws.s3 import S3Resource

from recsys_platform.config import REGISTERED_MODEL_NAME, PipelineParams, fields_of
from recsys_platform.ingest.landing import LandingZone, LocalLandingZone, S3LandingZone
from recsys_platform.model.params import ModelParams
from recsys_platform.serve.online_store import OnlineStore, open_online_store

_DEFAULTS = PipelineParams()


class LandingZoneResource(dg.ConfigurableResource):
    """Where event, catalog and profile files land: a local directory or s3://bucket/prefix."""

    url: str
    s3: S3Resource | None = None

    def zone(self) -> LandingZone:
        """Open the landing zone (S3 through the dagster-aws client)."""
        if self.url.startswith("s3://"):
            bucket, _, prefix = self.url[len("s3://") :].partition("/")
            client = (self.s3 or S3Resource()).get_client()
            return S3LandingZone(client, bucket, prefix)
        return LocalLandingZone(self.url)


class OnlineStoreResource(dg.ConfigurableResource):
    """The two-slot online store (sqlite:///path or redis://host:port/db)."""

    url: str

    def open(self) -> OnlineStore:
        """Open a connection to the store."""
        return open_online_store(self.url)


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking server / registry and the experiment this code location logs to."""

    tracking_uri: str
    artifact_uri: str | None = None
    experiment: str = "recsys-synthetic"
    model_name: str = REGISTERED_MODEL_NAME


class PipelineResource(dg.ConfigurableResource):
    """Modelling tunables (defaults from `PipelineParams`) and the analyst catalog location."""

    lake_url: str
    catalog_path: str
    top_n: int = _DEFAULTS.top_n
    candidates_per_source: int = _DEFAULTS.candidates_per_source
    recent_exclusion_days: float = _DEFAULTS.recent_exclusion_days
    watermark_minutes: int = _DEFAULTS.watermark_minutes
    seed: int = _DEFAULTS.seed
    ranker_threads: int = _DEFAULTS.ranker_threads
    promotion_margin: float = _DEFAULTS.promotion_margin
    max_training_users: int = _DEFAULTS.max_training_users
    training_windows: str = _DEFAULTS.training_windows
    max_replays: int = _DEFAULTS.max_replays
    replay_window: int = _DEFAULTS.replay_window
    push_on_refresh: bool = _DEFAULTS.push_on_refresh

    def params(self) -> PipelineParams:
        """The core's parameter object."""
        return PipelineParams(**{name: getattr(self, name) for name in fields_of(PipelineParams)})

    def model_params(self) -> ModelParams:
        """The model's starting params (`PipelineParams.model_params`)."""
        return self.params().model_params()

    @property
    def analyst_catalog(self) -> Path:
        """Path of the DuckDB analyst catalog."""
        return Path(self.catalog_path)
