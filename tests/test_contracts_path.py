"""Contracts on the near-real-time path: each successful refresh run is followed by a run of the raw-events checks
of its hour (GX suite and reconciliation), which passes on what ingestion wrote and fails (so alerts) when the
hour breaks its contract."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from orchestration.definitions import build_definitions
from recsys_platform.config import Settings
from recsys_platform.dev.generator import GeneratorConfig, generate, write_to_landing
from recsys_platform.ingest.landing import LocalLandingZone, partition_key_of
from recsys_platform.realtime import CONTRACTS_TAG, PARTITION_TAG
from tests.conftest import FIXED_END


def test_a_successful_refresh_requests_the_contracts_of_its_hour(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    defs = build_definitions(Settings.from_env())
    sensor = defs.resolve_sensor_def("raw_events_contracts_after_refresh")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING

    @dg.op
    def noop() -> None:
        pass

    @dg.job
    def refresh_stand_in() -> None:
        noop()

    with dg.instance_for_test() as instance:
        result = refresh_stand_in.execute_in_process(instance=instance, tags={PARTITION_TAG: "2026-03-02-14:00"})
        context = dg.build_run_status_sensor_context(
            sensor_name=sensor.name,
            dagster_instance=instance,
            dagster_run=result.dagster_run,
            dagster_event=result.get_run_success_event(),
        )
        request = sensor(context)
        assert isinstance(request, dg.RunRequest)
        assert request.tags["dagster/partition"] == "2026-03-02-14:00"
        assert request.run_key == f"contracts-{result.run_id}"
        # its own concurrency key: a contracts run never holds up the next refresh of the hour
        assert request.tags[CONTRACTS_TAG] == "2026-03-02-14:00" and PARTITION_TAG not in request.tags
        # while a contracts run of the hour still waits in the queue, the next refresh needs no other one
        instance.add_run(
            dg.DagsterRun(
                job_name="raw_events_contracts",
                run_id="waiting-contracts",
                status=dg.DagsterRunStatus.NOT_STARTED,  # queued: the same wait, without a code origin
                tags={CONTRACTS_TAG: "2026-03-02-14:00"},
            )
        )
        again = refresh_stand_in.execute_in_process(instance=instance, tags={PARTITION_TAG: "2026-03-02-14:00"})
        skipped = sensor(
            dg.build_run_status_sensor_context(
                sensor_name=sensor.name,
                dagster_instance=instance,
                dagster_run=again.dagster_run,
                dagster_event=again.get_run_success_event(),
            )
        )
    assert isinstance(skipped, dg.SkipReason) and "still waiting" in skipped.skip_message


def test_the_contracts_run_passes_on_ingested_hours_and_fails_on_a_broken_one(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    settings = Settings.from_env()
    ds = generate(GeneratorConfig(n_users=40, days=2, seed=3, end=FIXED_END))
    zone = LocalLandingZone(settings.landing_url)
    write_to_landing(ds, zone)
    keys = sorted({k for f in zone.list_files("events/") if (k := partition_key_of(f.key))})
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        tags = {ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]}
        assert defs.resolve_job_def("ingest_events").execute_in_process(instance=instance, tags=tags).success
        contracts = defs.resolve_job_def("raw_events_contracts")
        hour = keys[-1]
        ok = contracts.execute_in_process(instance=instance, tags={"dagster/partition": hour})
        assert ok.success and {e.check_name for e in ok.get_asset_check_evaluations()} == {
            "raw_events_expectations",
            "raw_events_reconciliation",
        }
        part = Path(settings.lake_url) / "raw_events" / f"{hour}.parquet"
        frame = pl.read_parquet(part)
        frame.with_columns(event_type=pl.lit("teleport")).write_parquet(part)  # the hour breaks its contract
        broken = contracts.execute_in_process(instance=instance, tags={"dagster/partition": hour}, raise_on_error=False)
    assert not broken.success
    failed = [e for e in broken.get_asset_check_evaluations() if not e.passed]
    assert "raw_events_expectations" in {e.check_name for e in failed}
