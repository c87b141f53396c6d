"""The local instance's run queue: Dagster's QueuedRunCoordinator, dequeuing every half second.

Dagster's `dequeue_interval_seconds` is a whole number of seconds, so a queued run waited half a second on average
before the daemon looked at the queue. A refresh run under a steady stream waits in the queue while the previous
refresh of its hour finishes (one run per hour at a time), then for the next dequeue: with the warm run worker
that wait was a quarter of the event -> changed-list time. `dequeue_seconds` sets the period of the daemon's run
queue loop below a second (Dagster's interval daemon sleeps in half-second steps, so 0.5 is the shortest that
takes effect); everything else (limits, tag concurrency) is Dagster's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dagster import Field
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._serdes import ConfigurableClassData

from recsys_platform.realtime import CONTRACTS_TAG, PARTITION_TAG


class SubSecondRunQueue(QueuedRunCoordinator):
    """QueuedRunCoordinator whose daemon dequeues every `dequeue_seconds` (a float) when it is set."""

    def __init__(self, dequeue_seconds: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dequeue_seconds = dequeue_seconds

    @property
    def dequeue_interval_seconds(self) -> float:  # type: ignore[override]  (Dagster's is an int)
        return self.dequeue_seconds if self.dequeue_seconds is not None else super().dequeue_interval_seconds

    @classmethod
    def config_type(cls) -> dict[str, Field]:
        seconds = Field(float, is_required=False, description="Period of the daemon's run queue loop, in seconds.")
        return {**super().config_type(), "dequeue_seconds": seconds}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]) -> SubSecondRunQueue:
        coordinator = super().from_config_value(inst_data, config_value)
        coordinator.dequeue_seconds = config_value.get("dequeue_seconds")
        return coordinator


# Dagster instance settings the refresh path relies on (merged into DAGSTER_HOME/dagster.yaml by the CLI): one refresh
# run and one contracts run per arrival-hour partition at a time, a half-second run queue, automatic run retries.
INSTANCE_YAML = f"""\
run_coordinator:
  module: orchestration.run_queue
  class: SubSecondRunQueue
  config:
    dequeue_seconds: 0.5
    tag_concurrency_limits:
      - key: "{PARTITION_TAG}"
        value:
          applyLimitPerUniqueValue: true
        limit: 1
      - key: "{CONTRACTS_TAG}"
        value:
          applyLimitPerUniqueValue: true
        limit: 1
run_retries:
  enabled: true
"""
