"""The embedded instance's event log (orchestration.instance_storage): what the CLI configures, and that it
stores, shares and forgets events like Dagster's own SQLite storage."""

from __future__ import annotations

import sqlite3

import dagster as dg
import pytest

from orchestration import instance_storage
from orchestration.instance_storage import BufferedSqliteEventLogStorage
from recsys_platform import cli

PARTITIONS = dg.StaticPartitionsDefinition([f"p{i}" for i in range(12)])


@dg.asset(partitions_def=PARTITIONS)
def hourly(context) -> None:  # noqa: ANN001 (string annotations confuse Dagster)
    context.add_output_metadata({"key": context.partition_key})


JOB = dg.Definitions(assets=[hourly], jobs=[dg.define_asset_job("hourly_job")])


@pytest.fixture
def dagster_home(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home" / "dagster"))
    cli._prepare_environment()
    return tmp_path / "home" / "dagster"


def _materialize(instance: dg.DagsterInstance, key: str) -> str:
    job = JOB.resolve_job_def("hourly_job")
    return job.execute_in_process(instance=instance, partition_key=key).run_id


def test_the_cli_selects_it_at_dagsters_default_event_log_location(dagster_home):
    with dg.DagsterInstance.get() as instance:
        storage = instance.event_log_storage
        assert type(storage) is BufferedSqliteEventLogStorage
        assert storage._base_dir == str(dagster_home / "history" / "runs")  # where Dagster's default keeps them
    cli._prepare_environment()  # idempotent: the block is added once
    assert (dagster_home / "dagster.yaml").read_text().count("event_log_storage:") == 1


def test_an_instance_that_configures_its_own_storage_keeps_it(tmp_path, monkeypatch):
    home = tmp_path / "dagster"
    home.mkdir()
    own = f"storage:\n  sqlite:\n    base_dir: {home}\n"
    (home / "dagster.yaml").write_text(own)
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    cli._prepare_environment()
    assert "event_log_storage" not in (home / "dagster.yaml").read_text()


def test_events_are_stored_flushed_at_checkpoints_and_read_by_another_instance(dagster_home):
    with dg.DagsterInstance.get() as writer:
        run_ids = [_materialize(writer, f"p{i}") for i in range(10)]
        storage = writer.event_log_storage
        assert len(storage._engines) <= instance_storage.OPEN_DATABASES  # older run databases are closed
        with storage.index_connection() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        # Another process (the webserver, the daemon) reads the same files while the writer keeps them open.
        with dg.DagsterInstance.from_ref(writer.get_ref()) as reader:
            for i, run_id in enumerate(run_ids):
                assert reader.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS
                materialized = reader.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
                assert [e.dagster_event.partition for e in materialized] == [f"p{i}"]
            assert reader.get_materialized_partitions(dg.AssetKey("hourly")) == {f"p{i}" for i in range(10)}
    # Nothing is left only in memory: the files alone hold every event.
    db = dagster_home / "history" / "runs" / f"{run_ids[-1]}.db"
    with sqlite3.connect(db) as conn:
        assert conn.execute(
            "SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'"
        ).fetchone() == (1,)


def test_deleting_a_run_forgets_its_events_and_closes_its_database(dagster_home):
    with dg.DagsterInstance.get() as instance:
        run_id = _materialize(instance, "p0")
        assert run_id in instance.event_log_storage._engines
        instance.delete_run(run_id)
        assert run_id not in instance.event_log_storage._engines
        assert instance.all_logs(run_id) == []
        assert instance.get_materialized_partitions(dg.AssetKey("hourly")) == set()
        # The storage keeps working after the wipe of every run.
        instance.event_log_storage.wipe()
        assert set(instance.event_log_storage._engines) <= {"index"}  # no run's database is held open
        _materialize(instance, "p1")
        assert instance.get_materialized_partitions(dg.AssetKey("hourly")) == {"p1"}
