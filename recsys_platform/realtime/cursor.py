"""The landing sensor's cursor: list only what is new, without missing files that become visible late.

Keys sort by arrival (batch ids start with the arrival timestamp), so a listing can resume after
a key. But two producers can name files in one order and finish writing them in the other; a
plain "last key seen" cursor would then skip the slower file forever. The cursor therefore
keeps a low-water key (every key at or before it is done) and the keys seen after it; the
low-water mark only advances past keys whose arrival timestamp is older than `grace_seconds`,
the longest a producer may take between naming a file and completing it. A sensor without a
cursor starts at the previous arrival hour (older files are the batch ingestion's job).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from recsys_platform.ingest.landing import (
    EVENTS_PREFIX,
    FILE_FORMATS,
    LandedFile,
    LandingZone,
    arrival_time_of,
    hour_prefix,
    partition_key_of,
)

DEFAULT_GRACE_SECONDS = 30.0
INITIAL_LOOKBACK_HOURS = 1


@dataclass(frozen=True)
class LandingCursor:
    """Low-water key plus the keys already handed out after it."""

    after: str | None = None
    seen: frozenset[str] = field(default_factory=frozenset)

    def to_json(self) -> str:
        """Serialize (the sensor stores cursors as strings)."""
        return json.dumps({"after": self.after, "seen": sorted(self.seen)}, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | None) -> LandingCursor:
        """Parse a stored cursor; a bare key (the old cursor format) is a low-water key."""
        if not raw:
            return cls()
        if not raw.startswith("{"):
            return cls(after=raw)
        doc = json.loads(raw)
        return cls(after=doc.get("after"), seen=frozenset(doc.get("seen", ())))


@dataclass(frozen=True)
class PartitionBatch:
    """New files of one arrival-hour partition found by one listing."""

    partition_key: str
    first_key: str
    last_key: str
    files: int


def advance(
    cursor: LandingCursor,
    listed: Iterable[LandedFile],
    now: datetime | None = None,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
) -> tuple[list[LandedFile], LandingCursor]:
    """(files not handed out before, the next cursor) from a listing after `cursor.after`, in key order."""
    now = now or datetime.now(UTC)
    horizon = now - timedelta(seconds=grace_seconds)
    files = sorted((f for f in listed if f.key.endswith(FILE_FORMATS)), key=lambda f: f.key)
    new = [f for f in files if f.key not in cursor.seen]
    after = cursor.after
    for f in files:
        arrived = arrival_time_of(f.key)
        if arrived is not None and arrived >= horizon:
            break  # a slower producer may still complete a file named before this one
        after = f.key
    seen = frozenset(f.key for f in files if after is None or f.key > after) | frozenset(
        k for k in cursor.seen if after is None or k > after
    )
    return new, LandingCursor(after=after, seen=seen)


def new_event_files(
    zone: LandingZone,
    cursor: LandingCursor,
    max_files: int,
    now: datetime | None = None,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
) -> tuple[list[PartitionBatch], LandingCursor]:
    """List event files after the cursor; group the new ones by arrival-hour partition."""
    if cursor.after is None and not cursor.seen:
        # First tick: history is the batch ingestion's job; start with the previous arrival hour.
        start = (now or datetime.now(UTC)) - timedelta(hours=INITIAL_LOOKBACK_HOURS)
        cursor = LandingCursor(after=hour_prefix(start)[:-1])
    listed = zone.list_files(EVENTS_PREFIX, start_after=cursor.after)
    new, nxt = advance(cursor, listed[: max_files + len(cursor.seen)], now, grace_seconds)
    new = new[:max_files]
    if len(new) == max_files:
        # Too many for one tick: hand out only these; the rest stay unseen for the next tick.
        handed = frozenset(f.key for f in new)
        nxt = LandingCursor(after=cursor.after, seen=cursor.seen | handed)
    groups: dict[str, list[str]] = {}
    for f in new:
        key = partition_key_of(f.key)
        if key is not None:
            groups.setdefault(key, []).append(f.key)
    batches = [PartitionBatch(p, min(keys), max(keys), len(keys)) for p, keys in sorted(groups.items())]
    return batches, nxt
