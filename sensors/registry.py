"""Registry sensor: redeploy the online store whenever the `champion` alias moves in MLflow."""

from typing import Any

import dagster as dg

from recsys_platform.config import CHAMPION_ALIAS
from resources import MlflowResource


def champion_sensor_for(job: Any, interval_seconds: int = 30) -> dg.SensorDefinition:
    """A sensor that requests `job` when the champion alias points at a new version."""

    @dg.sensor(
        name="champion_alias_sensor",
        job=job,
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="Watches the MLflow registry alias `champion` (moved by the promotion gate or by hand in "
        "the MLflow UI) and redeploys the standby slot with that version.",
    )
    def champion_alias_sensor(context: dg.SensorEvaluationContext, mlflow: MlflowResource):
        from recsys_platform.model.registry import alias_version

        version = alias_version(mlflow.tracking_uri, CHAMPION_ALIAS, mlflow.model_name)
        if version is None:
            return dg.SkipReason("no champion registered yet")
        if version == context.cursor:
            return dg.SkipReason(f"champion still v{version}")
        context.update_cursor(version)
        return dg.RunRequest(run_key=f"champion-v{version}", tags={"recsys/champion_version": version})

    return champion_alias_sensor
