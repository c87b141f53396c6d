"""The landing sensor evaluated by Dagster: run requests per touched hour, tags, run keys, cursor."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg

from recsys_platform.ingest.landing import LocalLandingZone, event_file_key, new_batch_id, partition_key_of
from recsys_platform.realtime import FIRST_FILE_TAG, LAST_FILE_TAG, PARTITION_TAG
from resources import LandingZoneResource
from sensors.landing import landing_sensor_for


def _job() -> dg.JobDefinition:
    @dg.op
    def noop() -> None:
        return None

    @dg.job
    def refresh() -> None:
        noop()

    return refresh


def test_sensor_requests_one_run_per_touched_hour_and_advances_its_cursor(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RECSYS_LANDING_SENSOR", "running")
    sensor = landing_sensor_for(_job())
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 1
    zone = LocalLandingZone(tmp_path)
    now = datetime.now(UTC)
    keys = [event_file_key(t, ".parquet", new_batch_id(t)) for t in (now - timedelta(minutes=60), now, now)]
    for k in keys:
        zone.write_bytes(k, b"x")
    resources = {"landing": LandingZoneResource(url=str(tmp_path))}
    instance = dg.DagsterInstance.ephemeral()
    with dg.build_sensor_context(instance=instance, resources=resources) as ctx:
        result = sensor(ctx)
    requests = sorted(result.run_requests, key=lambda r: r.partition_key)
    by_partition = {partition_key_of(k) for k in keys}
    assert [r.partition_key for r in requests] == sorted(by_partition)
    last = requests[-1]
    assert last.tags[PARTITION_TAG] == last.partition_key
    assert (last.tags[FIRST_FILE_TAG], last.tags[LAST_FILE_TAG]) == (min(keys[1:]), max(keys[1:]))
    assert last.run_key == f"{last.partition_key}|{max(keys[1:])}"
    with dg.build_sensor_context(cursor=result.cursor, instance=instance, resources=resources) as ctx:
        again = sensor(ctx)
    assert not again.run_requests and again.skip_reason is not None
    newer = event_file_key(now, ".parquet", new_batch_id(now + timedelta(seconds=1)))
    zone.write_bytes(newer, b"x")
    with dg.build_sensor_context(cursor=result.cursor, instance=instance, resources=resources) as ctx:
        third = sensor(ctx)
    assert [(r.tags[FIRST_FILE_TAG], r.tags[LAST_FILE_TAG]) for r in third.run_requests] == [(newer, newer)]


def test_sensor_is_stopped_by_default(monkeypatch) -> None:
    monkeypatch.delenv("RECSYS_LANDING_SENSOR", raising=False)
    assert landing_sensor_for(_job()).default_status == dg.DefaultSensorStatus.STOPPED


def test_no_second_run_is_requested_while_one_waits_in_the_queue(tmp_path: Path) -> None:
    from dagster._core.storage.dagster_run import DagsterRun

    job = _job()
    sensor = landing_sensor_for(job)
    zone = LocalLandingZone(tmp_path)
    now = datetime.now(UTC)
    key = event_file_key(now, ".parquet", new_batch_id(now))
    zone.write_bytes(key, b"x")
    instance = dg.DagsterInstance.ephemeral()
    waiting = DagsterRun(
        job_name=job.name,
        run_id="queued-1",
        status=dg.DagsterRunStatus.NOT_STARTED,
        tags={PARTITION_TAG: partition_key_of(key)},
    )
    instance.add_run(waiting)
    resources = {"landing": LandingZoneResource(url=str(tmp_path))}
    with dg.build_sensor_context(instance=instance, resources=resources) as ctx:
        result = sensor(ctx)
    assert not result.run_requests  # the queued run covers the new file when it starts
    assert key in result.cursor  # and the file is not handed out again
    instance.report_run_failed(waiting)  # no longer waiting: a newer file gets its own run
    newer = event_file_key(now, ".parquet", new_batch_id(now + timedelta(seconds=1)))
    zone.write_bytes(newer, b"x")
    with dg.build_sensor_context(cursor=result.cursor, instance=instance, resources=resources) as ctx:
        again = sensor(ctx)
    assert [r.tags[LAST_FILE_TAG] for r in again.run_requests] == [newer]


def test_an_evaluation_with_nothing_to_request_returns_as_soon_as_a_file_lands(tmp_path: Path) -> None:
    import threading
    import time

    sensor = landing_sensor_for(_job(), wait_seconds=10.0, poll_seconds=0.05)
    zone = LocalLandingZone(tmp_path)
    resources = {"landing": LandingZoneResource(url=str(tmp_path))}
    instance = dg.DagsterInstance.ephemeral()
    now = datetime.now(UTC)
    key = event_file_key(now, ".parquet", new_batch_id(now))
    timer = threading.Timer(0.5, zone.write_bytes, (key, b"x"))
    started = time.monotonic()
    timer.start()
    with dg.build_sensor_context(instance=instance, resources=resources) as ctx:
        result = sensor(ctx)
    waited = time.monotonic() - started
    timer.join()
    assert [r.tags[LAST_FILE_TAG] for r in result.run_requests] == [key]
    assert 0.5 <= waited < 2.0  # woke on the file, well before the 10 s budget
    started = time.monotonic()
    quiet = landing_sensor_for(_job(), wait_seconds=0.5, poll_seconds=0.05)
    with dg.build_sensor_context(cursor=result.cursor, instance=instance, resources=resources) as ctx:
        nothing = quiet(ctx)
    assert not nothing.run_requests and nothing.skip_reason is not None
    assert 0.45 <= time.monotonic() - started < 2.0  # nothing landed: it gave up after its budget


def test_the_definitions_sensor_watches_between_evaluations(tmp_path: Path) -> None:
    import threading

    from orchestration.definitions import defs

    sensor = defs.get_sensor_def("landing_zone_sensor")
    zone = LocalLandingZone(tmp_path)
    now = datetime.now(UTC)
    key = event_file_key(now, ".parquet", new_batch_id(now))
    timer = threading.Timer(0.3, zone.write_bytes, (key, b"x"))
    timer.start()
    resources = {"landing": LandingZoneResource(url=str(tmp_path))}
    with dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral(), resources=resources) as ctx:
        result = sensor(ctx)
    timer.join()
    assert [r.tags[LAST_FILE_TAG] for r in result.run_requests] == [key]  # landed after the evaluation began
