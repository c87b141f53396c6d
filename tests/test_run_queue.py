"""The local instance's run queue (orchestration.run_queue): Dagster's queue with a half-second dequeue loop and the
refresh path's tag concurrency limits, as the CLI configures it."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from orchestration.run_queue import SubSecondRunQueue
from recsys_platform import cli
from recsys_platform.realtime import CONTRACTS_TAG, PARTITION_TAG


def test_the_cli_selects_it_and_the_daemon_dequeues_every_half_second(tmp_path: Path, monkeypatch) -> None:
    from dagster._daemon.controller import create_daemon_of_type
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home" / "dagster"))
    cli._prepare_environment()
    cli._prepare_environment()  # idempotent
    assert (tmp_path / "home" / "dagster" / "dagster.yaml").read_text().count("run_coordinator:") == 1
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_coordinator) is SubSecondRunQueue
        daemon = create_daemon_of_type(QueuedRunCoordinatorDaemon.daemon_type(), instance)
        assert daemon.interval_seconds == 0.5
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
        assert {(limit["key"], limit["limit"]) for limit in limits} == {(PARTITION_TAG, 1), (CONTRACTS_TAG, 1)}
        assert instance.run_retries_enabled


def test_without_dequeue_seconds_it_is_dagsters_queue() -> None:
    queue = SubSecondRunQueue(dequeue_interval_seconds=2)
    assert queue.dequeue_interval_seconds == 2


@pytest.mark.parametrize("key", ["run_queue", "run_coordinator"])
def test_an_instance_that_configures_its_own_queue_keeps_it(tmp_path: Path, monkeypatch, key: str) -> None:
    home = tmp_path / "dagster"
    home.mkdir()
    own = {
        "run_queue": "run_queue:\n  dequeue_interval_seconds: 3\n",
        "run_coordinator": "run_coordinator:\n  module: dagster.core.run_coordinator\n  class: DefaultRunCoordinator\n",
    }[key]
    (home / "dagster.yaml").write_text(own)
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    cli._prepare_environment()
    assert "SubSecondRunQueue" not in (home / "dagster.yaml").read_text()
