"""Concurrency pools of the assets. A pooled step is limited twice, so by default a run of the whole graph holds one
history-sized step at a time whatever runs it:

- across runs and workers, by the instance: Dagster's `pool=`, which the production instance limits
  (deploy/dagster.yaml, `concurrency.pools.default_limit: 1`; raise one with `dagster instance concurrency set
  <pool> <n>`). The embedded instance sets no limit;
- within a run, by the multiprocess executor (the embedded default, also what a run launched from the UI uses): its
  `tag_concurrency_limits` read op tags, not pools, so each pooled step also carries its pool as the POOL_TAG op tag
  (`orchestration.environment.multiprocess_executor`; RECSYS_POOL_LIMIT, default 1, 0 for no limit).
"""

# One raw_events ingestion at a time, so two runs never write the same arrival hour.
RAW_EVENTS_POOL = "raw_events"
# Steps that hold the whole interaction history (or a frame of its size) in memory: at 1M users each
# takes 3-13 GiB, so two at once on one host (two Celery workers) passed 18 GiB, and two at once in one
# multiprocess run (the UI's default of one step per core) peaked at 12.8 GiB against 10.3 GiB one at a time.
# Light steps still overlap.
HISTORY_POOL = "history"
POOL_TAG = "recsys/pool"


def in_pool(pool: str) -> dict:
    """The decorator arguments (`@dg.asset(..., **in_pool(HISTORY_POOL))`) that put a step in `pool`."""
    return {"pool": pool, "op_tags": {POOL_TAG: pool}}
