"""Sensors and schedules: landing zone, model registry, retraining cadence."""
