"""Celery settings of the dagster-celery workers, read from the same environment as the executor.

`celery -A dagster_celery.app worker` imports a module named `dagster_celery_config` when one is on
PYTHONPATH; this is it. Broker, result backend and key prefix come from RECSYS_CELERY_* (see
deploy/ENVIRONMENT.md), so the workers and the runs that submit to them cannot disagree.

It also imports the code location and the model code (`orchestration.environment.FORKSERVER_PRELOAD`, what the
embedded profile's forkserver preloads) into the worker's main process, which forks the processes that execute
steps (the prefork pool; with `--max-tasks-per-child 1`, one per step): each step then starts with them loaded
instead of importing them again, about 5 s per step on 2 cores. `RECSYS_CELERY_PRELOAD=0` turns this off.
"""

import importlib
import os

from recsys_platform.config import Settings
from recsys_platform.deploy_profile import celery_app_settings

_settings = celery_app_settings(Settings.from_env().executor)

broker_url = _settings["broker"]
result_backend = _settings["backend"]
globals().update(_settings["config_source"])


def _preload() -> None:
    """Import FORKSERVER_PRELOAD (inside a function: Celery reads this module's names as settings)."""
    from orchestration.environment import FORKSERVER_PRELOAD

    for module in FORKSERVER_PRELOAD:
        importlib.import_module(module)


if os.environ.get("RECSYS_CELERY_PRELOAD", "1") != "0":
    _preload()
