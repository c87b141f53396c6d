"""Concurrency pools of the assets (Dagster's `pool=`). The production instance (deploy/dagster.yaml,
`concurrency.pools.default_limit: 1`) runs one step of each pool at a time across every run and worker;
the embedded instance sets no limit. Raise one with `dagster instance concurrency set <pool> <n>`."""

# One raw_events ingestion at a time, so two runs never write the same arrival hour.
RAW_EVENTS_POOL = "raw_events"
# Steps that hold the whole interaction history (or a frame of its size) in memory: at 1M users each
# takes 3-13 GiB, so two at once on one host (two Celery workers) passed 18 GiB. Light steps still overlap.
HISTORY_POOL = "history"
