"""Landing sensor: turn newly landed event files into runs for the touched arrival hours."""

from typing import Any

import dagster as dg

from recsys_platform.landing import EVENTS_PREFIX, FILE_FORMATS, partition_key_of
from resources import LandingZoneResource

MAX_FILES_PER_TICK = 5000


def landing_sensor_for(job: Any, interval_seconds: int = 5) -> dg.SensorDefinition:
    """A cursor-based sensor over events/ that requests `job` for each touched hour partition."""

    @dg.sensor(
        name="landing_zone_sensor",
        job=job,
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="Lists only files after its cursor (the last key seen; keys sort by arrival) and requests "
        "a refresh run per touched arrival hour. Run keys include the newest file, so re-deliveries are harmless.",
    )
    def landing_zone_sensor(context: dg.SensorEvaluationContext, landing: LandingZoneResource):
        files = landing.zone().list_files(EVENTS_PREFIX, start_after=context.cursor or None)
        files = [f for f in files if f.key.endswith(FILE_FORMATS)][:MAX_FILES_PER_TICK]
        if not files:
            return dg.SkipReason("no new files since cursor")
        newest: dict[str, str] = {}
        for f in files:
            key = partition_key_of(f.key)
            if key is not None:
                newest[key] = max(newest.get(key, ""), f.key)
        context.update_cursor(files[-1].key)
        return [
            dg.RunRequest(run_key=f"{partition}|{last}", partition_key=partition, tags={"recsys/trigger": "landing"})
            for partition, last in sorted(newest.items())
        ]

    return landing_zone_sensor
