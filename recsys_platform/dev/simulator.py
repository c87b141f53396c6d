"""A live event stream for existing users and items: `recsys simulate` for demos and benchmarks.

Each second the simulator emits about `rate` events (Poisson) as one batch, either through the
events API (`POST /v1/events`, the way an app backend would) or straight into the landing zone
(validated by the same collector the API uses). Users advance through small sessions: open the
app, sometimes search, start an item, then complete it or leave early; wearable users report steps
and heart rate. Everything is seeded, so a run is reproducible for a given seed and start time.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl

from recsys_platform.dev.generator import SEARCH_WORDS

logger = logging.getLogger(__name__)

# Next-event probabilities of the simple session model.
EVENT_MIX: dict[str, float] = {
    "app_open": 0.12,
    "search": 0.08,
    "content_start": 0.32,
    "content_complete": 0.16,
    "content_exit": 0.14,
    "favorite": 0.04,
    "biometric": 0.14,
}


@dataclass
class SimulationStats:
    """Counts of one simulation run."""

    batches: int = 0
    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    errors: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


class EventStream:
    """Seeded generator of plausible app events for known users and items."""

    def __init__(self, users: list[str], items: pl.DataFrame, seed: int = 0) -> None:
        if not users or items.height == 0:
            raise ValueError("the simulator needs existing users and items (run the pipeline first)")
        self.users = np.array(users)
        self.item_ids = np.array(items["item_id"].to_list())
        self.item_types = np.array(items["content_type"].to_list())
        self.durations = items["duration_seconds"].to_numpy().astype(float)
        self.rng = np.random.default_rng(seed)
        self._kinds = np.array(list(EVENT_MIX))
        self._p = np.array(list(EVENT_MIX.values())) / sum(EVENT_MIX.values())
        self._playing: dict[str, int] = {}
        # Content is reproducible for a seed; event ids are unique per stream, or a rerun would be deduplicated.
        self.run_id = uuid.uuid4().hex[:12]
        self.sent = 0

    def batch(self, n: int, now: datetime | None = None) -> list[dict[str, Any]]:
        """`n` events at (about) `now`, as API records."""
        now = now or datetime.now(UTC)
        users = self.users[self.rng.integers(0, len(self.users), size=n)]
        kinds = self.rng.choice(self._kinds, size=n, p=self._p)
        return [self._event(str(u), str(k), now) for u, k in zip(users, kinds, strict=True)]

    def _event(self, user: str, kind: str, now: datetime) -> dict[str, Any]:
        self.sent += 1
        record: dict[str, Any] = {
            "event_id": f"sim-{self.run_id}-{self.sent}",
            "user_id": user,
            "event_type": kind,
            "event_time": now.isoformat(),
            "session_id": f"sim-{user}",
        }
        if kind in ("content_start", "content_complete", "content_exit", "favorite"):
            idx = self._playing.get(user)
            if idx is None or kind == "content_start":
                idx = int(self.rng.integers(0, len(self.item_ids)))
            self._playing[user] = idx
            record["item_id"] = str(self.item_ids[idx])
            if kind == "content_complete":
                record["seconds_listened"] = float(self.durations[idx])
                self._playing.pop(user, None)
            elif kind == "content_exit":
                record["seconds_listened"] = round(float(self.rng.uniform(2, self.durations[idx])), 1)
                self._playing.pop(user, None)
        elif kind == "search":
            words = list(SEARCH_WORDS.values())
            record["query"] = words[int(self.rng.integers(0, len(words)))]
        elif kind == "biometric":
            record["steps"] = int(self.rng.poisson(600))
            record["heart_rate"] = round(float(self.rng.normal(70, 8)), 1)
        return record


def api_sender(base_url: str, timeout: float = 10.0) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """Send batches to `POST {base_url}/v1/events`; returns the response document."""
    import httpx

    client = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout)

    def send(records: list[dict[str, Any]]) -> dict[str, Any]:
        response = client.post("/v1/events", json={"records": records})
        response.raise_for_status()
        return response.json()

    return send


def landing_sender(collector: Any) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """Write batches straight into the landing zone through an `EventCollector` (same validation)."""
    from recsys_platform.serve.events_api import EventIn

    def send(records: list[dict[str, Any]]) -> dict[str, Any]:
        result = collector.put([EventIn.model_validate(r).model_dump() for r in records])
        return {
            "FailedRecordCount": result.failed_count,
            "Records": [{"ErrorCode": r.error_code} for r in result.records],
        }

    return send


def run_simulation(
    stream: EventStream,
    send: Callable[[list[dict[str, Any]]], dict[str, Any]],
    rate: float,
    duration: float | None,
    on_batch: Callable[[SimulationStats], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SimulationStats:
    """Send about `rate` events per second, one batch per second, for `duration` seconds (None: until stopped)."""
    stats = SimulationStats()
    started = time.monotonic()
    tick = 0
    while duration is None or time.monotonic() - started < duration:
        if should_stop is not None and should_stop():
            break
        n = int(stream.rng.poisson(rate)) if rate > 0 else 0
        if n:
            records = stream.batch(n)
            stats.batches += 1
            stats.sent += n
            try:
                doc = send(records)
            except Exception as exc:  # keep streaming; the count says how many batches failed
                stats.errors += 1
                logger.warning("batch of %d events failed: %s", n, exc)
            else:
                failed = int(doc.get("FailedRecordCount", 0))
                stats.rejected += failed
                stats.accepted += n - failed
                for rec in doc.get("Records", ()):
                    if rec.get("ErrorCode"):
                        stats.reasons[rec["ErrorCode"]] = stats.reasons.get(rec["ErrorCode"], 0) + 1
            if on_batch is not None:
                on_batch(stats)
        tick += 1
        time.sleep(max(0.0, started + tick - time.monotonic()))
    return stats
