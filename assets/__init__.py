"""Dagster software-defined assets: thin wrappers that call the recsys_platform core."""
