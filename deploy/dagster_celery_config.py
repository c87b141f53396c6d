"""Celery settings of the dagster-celery workers, read from the same environment as the executor.

`celery -A dagster_celery.app worker` imports a module named `dagster_celery_config` when one is on
PYTHONPATH; this is it. Broker, result backend and key prefix come from RECSYS_CELERY_* (see
deploy/ENVIRONMENT.md), so the workers and the runs that submit to them cannot disagree.
"""

from recsys_platform.config import Settings
from recsys_platform.deploy_profile import celery_app_settings

_settings = celery_app_settings(Settings.from_env().executor)

broker_url = _settings["broker"]
result_backend = _settings["backend"]
globals().update(_settings["config_source"])
