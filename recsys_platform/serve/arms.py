"""Which arm of a live experiment a request is in, and what that arm is served: read from the recommendation-set
file (RECSYS_RECOMMENDATION_SETS) and re-read when it changes, so editing the experiment changes what each arm
gets on the next request, without a redeploy."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from recsys_platform.batch.set_config import ExperimentConfig, SetsConfigError, load_sets_config
from recsys_platform.experiments.ab_tests import arm_of, is_live

logger = logging.getLogger(__name__)

# The surface the recommendations endpoint is: the home screen's "Recommended for you" carousel.
API_SURFACE = "recommended_for_you"
RELOAD_CHECK_SECONDS = 2.0


@dataclass(frozen=True)
class Assignment:
    """A user's arm in the live experiment of a surface and what it serves (`source`, and the set for "set")."""

    experiment: str | None
    arm: str | None
    source: str
    set_name: str | None


NO_EXPERIMENT = Assignment(None, None, "model", None)


class ArmRouter:
    """The experiments of one recommendation-set file, re-read at most every RELOAD_CHECK_SECONDS when its
    modification time changes. A file that stops validating keeps the last good experiments (and logs why)."""

    def __init__(self, path: Path | str | None) -> None:
        self.path = Path(path) if path else None
        self._experiments: tuple[ExperimentConfig, ...] = ()
        self._mtime: float | None = None
        self._checked = float("-inf")
        self._lock = threading.Lock()
        self._reload(force=True)

    def _reload(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < RELOAD_CHECK_SECONDS:
            return
        with self._lock:
            self._checked = now
            if self.path is None:
                return
            try:
                mtime = self.path.stat().st_mtime
            except OSError:
                return
            if mtime == self._mtime:
                return
            try:
                self._experiments = load_sets_config(self.path).experiments
            except (SetsConfigError, OSError, ValueError) as exc:
                logger.error("experiments not reloaded from %s, keeping the previous ones: %s", self.path, exc)
            self._mtime = mtime

    def assign(self, user_id: str, surface: str = API_SURFACE, now: datetime | None = None) -> Assignment:
        """The user's arm in the first live experiment on `surface` that declares `serves`, or NO_EXPERIMENT."""
        self._reload()
        now = now or datetime.now(UTC)
        for exp in self._experiments:
            if exp.changes_serving and exp.surface == surface and is_live(exp, now):
                arm = arm_of(user_id, exp)
                source = exp.source_of(arm)
                return Assignment(exp.name, arm, source, exp.surface if source == "set" else None)
        return NO_EXPERIMENT
