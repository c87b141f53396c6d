"""The period of the Dagster daemon's sensor loop, which Dagster 1.13 fixes at 5 seconds.

The sensor daemon evaluates the sensors that are due, then sleeps until 5 s have passed since the loop began
(`MIN_INTERVAL_LOOP_TIME` in `dagster._daemon.sensor`); there is no instance setting for it, so a sensor's
`minimum_interval_seconds` below 5 has no effect. The landing sensor watches the zone while it has nothing to
request (sensors/landing.py), which covers a quiet stream, but under a steady one every evaluation returns at once
with a request and the next one came 5 s later: at 5147d40 a refresh run could start only every 5 s.

`WarmRunLauncher(sensor_loop_seconds=...)` sets the period in the process that builds the launcher, which is the
daemon (it launches the runs); elsewhere the value is read by nobody. The daemon builds its launcher when it
launches its first run, so until then the loop keeps its 5 s (the landing sensor's watching covers that time).
"""

from __future__ import annotations

import logging

log = logging.getLogger("recsys.sensor_loop")


def set_sensor_loop_seconds(seconds: float) -> bool:
    """Make the daemon's sensor loop start every `seconds` (at most); False if this Dagster has no such setting."""
    from dagster._daemon import sensor

    if not isinstance(getattr(sensor, "MIN_INTERVAL_LOOP_TIME", None), int | float):
        log.warning("dagster._daemon.sensor has no MIN_INTERVAL_LOOP_TIME: the sensor loop keeps Dagster's period")
        return False
    sensor.MIN_INTERVAL_LOOP_TIME = seconds  # read at every iteration of execute_sensor_iteration_loop
    return True
