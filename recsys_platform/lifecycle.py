"""Data lifecycle: forget a user everywhere the platform keeps them.

`forget_user` removes one user's rows and keys from every store the platform writes:

* the landing zone: landed event files (rows of the user; a file left empty is deleted) and the refused rows
  kept by `recsys import`;
* the lake: every Parquet table with a `user_id` column, and quarantined rows whose raw payload names the user
  (so the next training cycle, which reads only the lake and the landing zone, never sees them again);
* the JSON-lines exports and the push outbox under RECSYS_HOME;
* both slots of the online store (recommendations and features) and the push queue.

Each removal rewrites a file atomically (the same write path as the lake and the landing zone), so a reader
sees the old file or the new one. An audit record (a SHA-256 of the id, never the id; when; what was removed
where) is appended to `audit/forgotten_users.jsonl` in the lake. What is already inside a trained model
version is not edited: the models keep item-item weights and item factors, no user rows, and the next cycle
trains without the user.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from recsys_platform import schemas
from recsys_platform.config import Settings
from recsys_platform.ingest.landing import (
    landing_zone_from_url,
    parquet_bytes,
    partition_hour,
    partition_key_of,
    read_import_manifests,
    replace_whole,
)

logger = logging.getLogger(__name__)

AUDIT_KEY = "audit/forgotten_users.jsonl"
# Online-store namespaces keyed by user id.
USER_NAMESPACES = ("recs", "user_features", "sets")


@dataclass
class ForgetReport:
    """What was removed for one user, by store and file (counts of rows, keys or messages)."""

    user_sha256: str
    at: str
    removed: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Everything removed."""
        return sum(self.removed.values())


def user_digest(user_id: str) -> str:
    """The audit trail's name for a user: SHA-256 of the id."""
    return hashlib.sha256(user_id.encode()).hexdigest()


_UNPARSABLE = object()


def _rewritten(
    key: str,
    data: bytes,
    drop_rows: Callable[[pl.DataFrame], pl.Expr],
    drop_record: Callable[[Any, bytes], bool],
    keep_empty: bool = False,
) -> tuple[bytes | None, int]:
    """One Parquet or JSON-lines file without the rows `drop_rows` (a Parquet frame's mask) or `drop_record`
    (a parsed JSON line, `_UNPARSABLE` when it does not parse, and its bytes) pick: (new content, rows dropped).
    The content is `data` itself when nothing is dropped, and None when nothing is left unless `keep_empty`
    (a lake table keeps an empty file with its columns, for the readers of the table)."""
    if key.endswith(".jsonl"):
        kept, removed = [], 0
        for line in data.splitlines(keepends=True):
            try:
                record = json.loads(line)
            except ValueError:
                record = _UNPARSABLE
            if drop_record(record, line):
                removed += 1
            else:
                kept.append(line)
        if not removed:
            return data, 0
        return (b"".join(kept) or (b"" if keep_empty else None)), removed
    frame = pl.read_parquet(io.BytesIO(data))
    kept_frame = frame.filter(~drop_rows(frame).fill_null(False))
    removed = frame.height - kept_frame.height
    if not removed:
        return data, 0
    return (parquet_bytes(kept_frame) if kept_frame.height or keep_empty else None), removed


def _user_rows(user_id: str, raw_user_key: str = "user_id") -> Callable[[pl.DataFrame], pl.Expr]:
    """The mask of a user's rows: by the `user_id` column, and by the `raw_user_key` field of the raw JSON payload
    of quarantined or refused rows."""

    def mask(frame: pl.DataFrame) -> pl.Expr:
        mine = pl.lit(False)
        if "user_id" in frame.columns:
            mine = mine | (pl.col("user_id").cast(pl.String) == user_id)
        if "raw" in frame.columns and frame.schema["raw"] == pl.String:
            path = f"$.{raw_user_key}" if raw_user_key.isidentifier() else f"$['{raw_user_key}']"
            mine = mine | (pl.col("raw").str.json_path_match(path) == user_id)
        return mine

    return mask


def _user_record(user_id: str, raw_user_key: str = "user_id") -> Callable[[Any, bytes], bool]:
    """Whether a JSON line is the user's: by its user field, by the user field of its raw payload, and (when it
    does not parse) by quoting the user's id."""
    quoted = json.dumps(user_id).encode()

    def mine(record: Any, line: bytes) -> bool:
        if record is _UNPARSABLE:
            return quoted in line
        if not isinstance(record, dict):
            return False
        if user_id in (str(record.get("user_id")), str(record.get(raw_user_key))):
            return True
        try:
            raw = json.loads(record["raw"]) if isinstance(record.get("raw"), str) else None
        except ValueError:
            raw = None
        return isinstance(raw, dict) and str(raw.get(raw_user_key)) == user_id

    return mine


def _without_user(
    key: str, data: bytes, user_id: str, raw_user_key: str = "user_id", keep_empty: bool = False
) -> tuple[bytes | None, int]:
    """(new content, rows removed) of one file without `user_id`'s rows (`_rewritten`)."""
    return _rewritten(key, data, _user_rows(user_id, raw_user_key), _user_record(user_id, raw_user_key), keep_empty)


def _forget_in_landing(settings: Settings, user_id: str, removed: dict[str, int]) -> None:
    zone = landing_zone_from_url(settings.landing_url)
    columns = {m.import_id: m.user_column for m in read_import_manifests(zone)}
    for f in zone.list_files(""):
        if not f.key.endswith((".parquet", ".jsonl")):
            continue
        column = "user_id"
        if f.key.startswith("imports/"):
            column = columns.get(f.key.split("/")[1], "user_id")
        new, n = _without_user(f.key, zone.read_bytes(f.key), user_id, column)
        if not n:
            continue
        if new is None:
            zone.delete(f.key)
        else:
            zone.write_bytes(f.key, new)
        removed[f"landing:{f.key}"] = n


def _forget_in_lake(settings: Settings, user_id: str, removed: dict[str, int]) -> None:
    from upath import UPath

    root = UPath(settings.lake_url)
    if not root.exists():
        return
    for path in sorted(root.rglob("*.parquet")):
        if path.name.startswith("."):
            continue
        new, n = _without_user(path.name, path.read_bytes(), user_id, keep_empty=True)
        if n:
            replace_whole(path, new)
            removed[f"lake:{path.relative_to(root)}"] = n


def _forget_in_home_files(settings: Settings, user_id: str, removed: dict[str, int]) -> None:
    for path in sorted([*settings.exports_dir.glob("**/*.jsonl"), *settings.home.glob("push_outbox*.jsonl")]):
        new, n = _without_user(path.name, path.read_bytes(), user_id, keep_empty=True)
        if n:
            replace_whole(path, new)
            removed[f"home:{path.relative_to(settings.home)}"] = n


def _append_audit(settings: Settings, report: ForgetReport) -> None:
    from upath import UPath

    path = UPath(settings.lake_url) / AUDIT_KEY
    before = path.read_bytes() if path.exists() else b""
    if getattr(path, "protocol", "") in ("", "file", "local"):
        Path(str(path)).parent.mkdir(parents=True, exist_ok=True)
    replace_whole(path, before + json.dumps(asdict(report), sort_keys=True).encode() + b"\n")


def forget_user(user_id: str, settings: Settings) -> ForgetReport:
    """Remove `user_id` from the landing zone, the lake, the exports, the online store and the push queue, and
    record an audit line; ValueError for an id no path of the platform accepts."""
    if not re.match(schemas.ID_PATTERN, user_id):
        raise ValueError(f"user id {user_id!r} is not {schemas.ID_RULE}: no such user can exist")
    from recsys_platform.push import open_push_queue
    from recsys_platform.serve.online_store import open_online_store

    report = ForgetReport(user_digest(user_id), datetime.now(UTC).isoformat(timespec="seconds"))
    _forget_in_landing(settings, user_id, report.removed)
    _forget_in_lake(settings, user_id, report.removed)
    _forget_in_home_files(settings, user_id, report.removed)
    with open_online_store(settings.online_store_url) as store:
        if n := store.forget_keys(USER_NAMESPACES, [user_id]):
            report.removed["online_store"] = n
    with open_push_queue(settings.push_queue_url) as queue:
        if n := queue.forget_user(user_id):
            report.removed["push_queue"] = n
    _append_audit(settings, report)
    logger.warning("forgot user %s: %d rows, keys and messages removed", report.user_sha256[:12], report.total)
    return report


# --- retention ------------------------------------------------------------------------------------------------

RETENTION_TABLES = (
    "raw_events",
    "quarantined_events",
    "session_features",
    "realtime_recommendations",
    "biometric_samples",
    "exports",
)
# Lake tables partitioned by arrival hour whose files are deleted whole when their hour is past retention.
_PARTITIONED_TABLES = ("raw_events", "quarantined_events", "session_features", "realtime_recommendations")


def load_retention(path: Path | None = None) -> dict[str, int]:
    """Days per table from `path` (default: `Settings.retention_path`, config/retention.yaml or RECSYS_RETENTION);
    ValueError for unknown tables or bad days."""
    import yaml

    path = path or Settings.from_env().retention_path
    doc = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(doc) - set(RETENTION_TABLES))
    if unknown:
        raise ValueError(f"{path}: unknown table(s) {unknown}; retention applies to {list(RETENTION_TABLES)}")
    bad = {k: v for k, v in doc.items() if not isinstance(v, int) or isinstance(v, bool) or v < 1}
    if bad:
        raise ValueError(f"{path}: retention must be a whole number of days >= 1, got {bad}")
    return dict(doc)


def _drop_biometrics(key: str, data: bytes, keep_empty: bool = False) -> tuple[bytes | None, int]:
    """A landed or lake events file without its biometric rows (`_rewritten`)."""
    return _rewritten(
        key,
        data,
        lambda frame: pl.col("event_type") == "biometric" if "event_type" in frame.columns else pl.lit(False),
        lambda record, _: isinstance(record, dict) and record.get("event_type") == "biometric",
        keep_empty,
    )


@dataclass
class RetentionReport:
    """What one retention pass removed: files deleted and rows removed, per table."""

    cutoffs: dict[str, str]
    files_deleted: dict[str, int] = field(default_factory=dict)
    rows_removed: dict[str, int] = field(default_factory=dict)

    def count(self, table: str, files: int = 0, rows: int = 0) -> None:
        """Add to a table's counts."""
        if files:
            self.files_deleted[table] = self.files_deleted.get(table, 0) + files
        if rows:
            self.rows_removed[table] = self.rows_removed.get(table, 0) + rows


def apply_retention(
    zone: Any, lake_url: str, exports_dir: Path, days: dict[str, int], now: datetime | None = None
) -> RetentionReport:
    """Delete what `days` says is past retention at `now`: landed event files (`zone`, a LandingZone) and lake
    partitions by arrival hour, biometric rows of older hours, old exports. Each file is deleted or replaced
    whole; running it twice is a no-op."""
    from upath import UPath

    now = now or datetime.now(UTC)
    cut = {table: now - timedelta(days=d) for table, d in days.items()}
    report = RetentionReport({t: c.isoformat(timespec="seconds") for t, c in cut.items()})

    def expired(table: str, hour: datetime | None) -> bool:
        return hour is not None and table in cut and hour < cut[table]

    for f in zone.list_files("events/"):
        hour = partition_hour(partition_key_of(f.key) or "")
        if expired("raw_events", hour):
            zone.delete(f.key)
            report.count("landing_events", files=1)
        elif expired("biometric_samples", hour) and f.key.endswith((".parquet", ".jsonl")):
            new, n = _drop_biometrics(f.key, zone.read_bytes(f.key))
            if n and new is None:
                zone.delete(f.key)
            elif n:
                zone.write_bytes(f.key, new)
            report.count("biometric_samples", rows=n)
    lake = UPath(lake_url)
    for table in _PARTITIONED_TABLES:
        for path in sorted((lake / table).glob("*.parquet")) if (lake / table).exists() else []:
            hour = partition_hour(path.stem.split(".")[0])  # <hour>.parquet, or <hour>.<run>.parquet
            if expired(table, hour):
                path.unlink()
                report.count(table, files=1)
            elif table == "raw_events" and expired("biometric_samples", hour):
                new, n = _drop_biometrics(path.name, path.read_bytes(), keep_empty=True)
                if n:
                    replace_whole(path, new)
                    report.count("biometric_samples", rows=n)
    if "exports" in cut and exports_dir.exists():
        for path in exports_dir.rglob("*"):
            if path.is_file() and datetime.fromtimestamp(path.stat().st_mtime, UTC) < cut["exports"]:
                path.unlink()
                report.count("exports", files=1)
    logger.info("retention: files deleted %s, rows removed %s", report.files_deleted, report.rows_removed)
    return report
