"""The Celery workers' main process imports the code location before it forks the processes that execute steps
(deploy/dagster_celery_config.py), as the embedded profile's forkserver does; RECSYS_CELERY_PRELOAD=0 turns it off."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from orchestration.environment import FORKSERVER_PRELOAD
from recsys_platform.config import PROJECT_ROOT

# What `celery -A dagster_celery.app worker` does first: import the app, which reads dagster_celery_config.
PROBE = (
    "import sys, json, dagster_celery.app; "
    "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('orchestration', 'recsys_platform.model')))))"
)


def _loaded(preload: str | None) -> set[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECSYS_", "DAGSTER_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT / "deploy"), str(PROJECT_ROOT)])
    if preload is not None:
        env["RECSYS_CELERY_PRELOAD"] = preload
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_the_worker_process_imports_the_code_location_before_forking_steps() -> None:
    loaded = _loaded(None)
    assert {m for m in FORKSERVER_PRELOAD if m != "dagster"} <= loaded
    assert "orchestration.definitions" not in _loaded("0")
