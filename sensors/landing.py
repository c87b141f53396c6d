"""Landing sensor: turn newly landed event files into refresh runs for the touched arrival hours."""

import time
from typing import Any

import dagster as dg

from recsys_platform.config import Settings
from recsys_platform.realtime import FILES_TAG, FIRST_FILE_TAG, LAST_FILE_TAG, PARTITION_TAG, SENSOR_STATUS_ENV
from recsys_platform.realtime.cursor import LandingCursor, new_event_files
from resources import LandingZoneResource

MAX_FILES_PER_TICK = 5000
# How long an evaluation with nothing to request keeps watching the landing zone, and how often it lists it. Four
# seconds keeps the daemon's other sensors (evaluated one after another) within seconds; a listing of the current
# hour's folder costs a few milliseconds.
WAIT_SECONDS = 4.0
POLL_SECONDS = 0.1


def _default_status(running: bool | None) -> dg.DefaultSensorStatus:
    if running is None:  # a caller other than the root (which passes its settings' choice)
        running = Settings.from_env().landing_sensor_running
    return dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED


def _partitions_with_waiting_runs(context: dg.SensorEvaluationContext, job_name: str) -> set:
    from dagster._core.storage.dagster_run import RunsFilter

    waiting = context.instance.get_runs(
        RunsFilter(job_name=job_name, statuses=[dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED])
    )
    return {run.tags.get(PARTITION_TAG) for run in waiting}


def landing_sensor_for(
    job: Any,
    interval_seconds: int = 1,
    wait_seconds: float = 0.0,
    poll_seconds: float = POLL_SECONDS,
    running: bool | None = None,
) -> dg.SensorDefinition:
    """A cursor-based sensor over events/ that requests `job` for each touched hour partition; it starts switched
    on when `running` (default: `Settings.landing_sensor_running` of the environment).

    With `wait_seconds`, an evaluation that has nothing to request keeps listing every `poll_seconds` until a file
    it can request a run for lands (then it returns at once) or `wait_seconds` have passed: the daemon starts a
    sensor evaluation only every few seconds, so without this a file waited for the next one."""

    @dg.sensor(
        name="landing_zone_sensor",
        job=job,
        minimum_interval_seconds=interval_seconds,
        default_status=_default_status(running),
        description="Lists only event files after its cursor (keys sort by arrival; files named up to 30 s "
        "earlier that completed late are still picked up) and requests one refresh run per touched arrival "
        "hour (none while a run for that hour still waits in the queue: it will cover them). While there is "
        f"nothing to request it keeps watching for up to {wait_seconds:g} s, so a run is requested as soon as a "
        "file lands. Run keys name the newest file, so re-deliveries are harmless. "
        f"{SENSOR_STATUS_ENV}=running starts it by default.",
    )
    def landing_zone_sensor(context: dg.SensorEvaluationContext, landing: LandingZoneResource):
        zone = landing.zone()
        start = LandingCursor.from_json(context.cursor)
        cursor = start
        deadline = time.monotonic() + wait_seconds
        while True:
            batches, cursor = new_event_files(zone, cursor, MAX_FILES_PER_TICK)
            # A refresh run covers every file after the last refreshed one, so a partition with a run still
            # waiting in the queue needs no second one: that run will pick these files up when it starts.
            waiting = _partitions_with_waiting_runs(context, job.name) if batches else set()
            batches = [b for b in batches if b.partition_key not in waiting]
            if batches or time.monotonic() + poll_seconds > deadline:
                break
            time.sleep(poll_seconds)
        requests = [
            dg.RunRequest(
                run_key=f"{b.partition_key}|{b.last_key}",
                partition_key=b.partition_key,
                tags={
                    PARTITION_TAG: b.partition_key,
                    FIRST_FILE_TAG: b.first_key,
                    LAST_FILE_TAG: b.last_key,
                    FILES_TAG: str(b.files),
                    "recsys/trigger": "landing",
                },
            )
            for b in batches
        ]
        cursor_json = cursor.to_json() if cursor != start else context.cursor
        if not requests:
            return dg.SensorResult(skip_reason=dg.SkipReason("no new event files since cursor"), cursor=cursor_json)
        return dg.SensorResult(run_requests=requests, cursor=cursor_json)

    return landing_zone_sensor
