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
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from recsys_platform import schemas
from recsys_platform.config import Settings

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


def _quoted(user_id: str) -> str:
    return json.dumps(user_id)


def _drop_user_rows(frame: pl.DataFrame, user_id: str, raw_user_key: str = "user_id") -> pl.DataFrame:
    """`frame` without the user's rows: by its `user_id` column, and by the `raw_user_key` field of the raw JSON
    payload of quarantined or refused rows."""
    keep = pl.lit(True)
    if "user_id" in frame.columns:
        keep = keep & (pl.col("user_id").cast(pl.String) != user_id).fill_null(True)
    if "raw" in frame.columns and frame.schema["raw"] == pl.String:
        path = f"$.{raw_user_key}" if raw_user_key.isidentifier() else f"$['{raw_user_key}']"
        keep = keep & (pl.col("raw").str.json_path_match(path) != user_id).fill_null(True)
    return frame.filter(keep)


def _drop_user_lines(data: bytes, user_id: str, raw_user_key: str = "user_id") -> tuple[bytes, int]:
    """JSON lines without the user's records (and without unparsable lines that quote the user's id)."""
    kept, removed = [], 0
    quoted = _quoted(user_id).encode()
    for line in data.splitlines(keepends=True):
        try:
            record = json.loads(line)
        except ValueError:
            mine = quoted in line
        else:
            mine = isinstance(record, dict) and user_id in (str(record.get("user_id")), str(record.get(raw_user_key)))
            if not mine and isinstance(record, dict) and isinstance(record.get("raw"), str):
                try:
                    raw = json.loads(record["raw"])
                except ValueError:
                    raw = None
                mine = isinstance(raw, dict) and str(raw.get(raw_user_key)) == user_id
        if mine:
            removed += 1
        else:
            kept.append(line)
    return b"".join(kept), removed


def _without_user(key: str, data: bytes, user_id: str, raw_user_key: str = "user_id") -> tuple[bytes | None, int]:
    """(new content, rows removed) of one Parquet or JSON-lines file; content None when nothing is left."""
    if key.endswith(".jsonl"):
        out, removed = _drop_user_lines(data, user_id, raw_user_key)
        return (out or None), removed
    frame = pl.read_parquet(io.BytesIO(data))
    kept = _drop_user_rows(frame, user_id, raw_user_key)
    removed = frame.height - kept.height
    if not removed:
        return data, 0
    if kept.height == 0:
        return None, removed
    buf = io.BytesIO()
    kept.write_parquet(buf)
    return buf.getvalue(), removed


def _forget_in_landing(settings: Settings, user_id: str, removed: dict[str, int]) -> None:
    from recsys_platform.ingest.landing import landing_zone_from_url, read_import_manifests

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
        new, n = _without_user(path.name, path.read_bytes(), user_id)
        if not n:
            continue
        rel = str(path.relative_to(root))
        if new is None:
            # An empty table keeps its schema: readers of the table (DuckDB views) must still find the columns.
            frame = pl.read_parquet(io.BytesIO(path.read_bytes())).clear()
            buf = io.BytesIO()
            frame.write_parquet(buf)
            new = buf.getvalue()
        _atomic_write(path, new)
        removed[f"lake:{rel}"] = n


def _forget_in_home_files(settings: Settings, user_id: str, removed: dict[str, int]) -> None:
    for path in sorted([*settings.exports_dir.glob("**/*.jsonl"), *settings.home.glob("push_outbox*.jsonl")]):
        new, n = _drop_user_lines(path.read_bytes(), user_id)
        if n:
            _atomic_write(path, new)
            removed[f"home:{path.relative_to(settings.home)}"] = n


def _atomic_write(path: Any, data: bytes) -> None:
    """Replace a file whole (local: a temporary file renamed over it; object stores write whole objects)."""
    if getattr(path, "protocol", "") in ("", "file", "local"):
        from recsys_platform.ingest.landing import write_durably

        write_durably(Path(str(path.path if hasattr(path, "path") else path)), data)
    else:
        path.write_bytes(data)


def _append_audit(settings: Settings, report: ForgetReport) -> None:
    from upath import UPath

    path = UPath(settings.lake_url) / AUDIT_KEY
    before = path.read_bytes() if path.exists() else b""
    if getattr(path, "protocol", "") in ("", "file", "local"):
        Path(str(path)).parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, before + json.dumps(asdict(report), sort_keys=True).encode() + b"\n")


def forget_user(user_id: str, settings: Settings | None = None) -> ForgetReport:
    """Remove `user_id` from the landing zone, the lake, the exports, the online store and the push queue, and
    record an audit line; ValueError for an id no path of the platform accepts."""
    if not re.match(schemas.ID_PATTERN, user_id):
        raise ValueError(f"user id {user_id!r} is not {schemas.ID_RULE}: no such user can exist")
    from recsys_platform.push import open_push_queue
    from recsys_platform.serve.online_store import open_online_store

    settings = settings or Settings.from_env()
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

RETENTION_PATH_ENV = "RECSYS_RETENTION"
RETENTION_TABLES = ("raw_events", "quarantined_events", "session_features", "biometric_samples", "exports")
# Lake tables partitioned by arrival hour whose files are deleted whole when their hour is past retention.
_PARTITIONED_TABLES = ("raw_events", "quarantined_events", "session_features")


def load_retention(path: Path | None = None) -> dict[str, int]:
    """Days per table from config/retention.yaml (or RECSYS_RETENTION); ValueError for unknown tables or bad days."""
    import yaml

    from recsys_platform.config import PROJECT_ROOT

    path = path or Path(os.environ.get(RETENTION_PATH_ENV) or PROJECT_ROOT / "config" / "retention.yaml")
    doc = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(doc) - set(RETENTION_TABLES))
    if unknown:
        raise ValueError(f"{path}: unknown table(s) {unknown}; retention applies to {list(RETENTION_TABLES)}")
    bad = {k: v for k, v in doc.items() if not isinstance(v, int) or isinstance(v, bool) or v < 1}
    if bad:
        raise ValueError(f"{path}: retention must be a whole number of days >= 1, got {bad}")
    return dict(doc)


def _hour_of(partition_key: str) -> datetime | None:
    try:
        return datetime.strptime(partition_key, "%Y-%m-%d-%H:%M").replace(tzinfo=UTC)
    except ValueError:
        return None


def _drop_biometrics(key: str, data: bytes) -> tuple[bytes | None, int]:
    """A landed or lake events file without its biometric rows: (content or None when empty, rows removed)."""
    if key.endswith(".jsonl"):
        kept, removed = [], 0
        for line in data.splitlines(keepends=True):
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict) and record.get("event_type") == "biometric":
                removed += 1
            else:
                kept.append(line)
        return (b"".join(kept) or None), removed
    frame = pl.read_parquet(io.BytesIO(data))
    if "event_type" not in frame.columns:
        return data, 0
    kept = frame.filter((pl.col("event_type") != "biometric").fill_null(True))
    if kept.height == frame.height:
        return data, 0
    buf = io.BytesIO()
    kept.write_parquet(buf)
    return buf.getvalue(), frame.height - kept.height


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
    from datetime import timedelta

    from upath import UPath

    from recsys_platform.ingest.landing import partition_key_of

    now = now or datetime.now(UTC)
    cut = {table: now - timedelta(days=d) for table, d in days.items()}
    report = RetentionReport({t: c.isoformat(timespec="seconds") for t, c in cut.items()})

    def expired(table: str, hour: datetime | None) -> bool:
        return hour is not None and table in cut and hour < cut[table]

    for f in zone.list_files("events/"):
        hour = _hour_of(partition_key_of(f.key) or "")
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
            hour = _hour_of(path.stem)
            if expired(table, hour):
                path.unlink()
                report.count(table, files=1)
            elif table == "raw_events" and expired("biometric_samples", hour):
                new, n = _drop_biometrics(path.name, path.read_bytes())
                if n:
                    _atomic_write(path, new if new is not None else _empty_like(path))
                    report.count("biometric_samples", rows=n)
    if "exports" in cut and exports_dir.exists():
        for path in exports_dir.rglob("*"):
            if path.is_file() and datetime.fromtimestamp(path.stat().st_mtime, UTC) < cut["exports"]:
                path.unlink()
                report.count("exports", files=1)
    logger.info("retention: files deleted %s, rows removed %s", report.files_deleted, report.rows_removed)
    return report


def _empty_like(path: Any) -> bytes:
    buf = io.BytesIO()
    pl.read_parquet(io.BytesIO(path.read_bytes())).clear().write_parquet(buf)
    return buf.getvalue()
