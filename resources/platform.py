"""Configurable resources wrapping the core: landing zone, online store, MLflow, pipeline settings."""

from dataclasses import fields
from pathlib import Path
from typing import get_type_hints

import dagster as dg
import pydantic
from dagster_aws.s3 import S3Resource

from recsys_platform.config import REGISTERED_MODEL_NAME, PipelineParams, fields_of
from recsys_platform.ingest.landing import LandingZone, LocalLandingZone, S3LandingZone
from recsys_platform.model.params import ModelParams
from recsys_platform.serve.online_store import OnlineStore, open_online_store


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

    @property
    def s3_endpoint_url(self) -> str | None:
        """The S3-compatible endpoint of the deployment's buckets (RECSYS_S3_ENDPOINT_URL: one for the landing zone,
        the lake and the catalog; None: AWS's own), for the assets that read the lake outside the IO manager."""
        return self.s3.endpoint_url if self.s3 is not None else None


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


class _PipelineResource(dg.ConfigurableResource):
    """Modelling tunables (every field of `PipelineParams`, with its default) and the analyst catalog location."""

    lake_url: str
    catalog_path: str

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


# One declaration of the tunables: the resource takes each field of `PipelineParams` (name, type, default) as a
# flat config field of its own, which the Dagster UI shows and run config sets, instead of a hand-kept copy.
_TUNABLES = get_type_hints(PipelineParams)
PipelineResource = pydantic.create_model(
    "PipelineResource",
    __base__=_PipelineResource,
    __module__=__name__,
    __doc__=_PipelineResource.__doc__,
    **{f.name: (_TUNABLES[f.name], f.default) for f in fields(PipelineParams)},
)
