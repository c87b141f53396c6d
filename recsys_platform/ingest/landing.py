"""Landing zone: where producers drop event, catalog and profile files (local dir or S3).

Layout (keys are relative to the zone's root):
    events/dt=YYYY-MM-DD/hr=HH/<batch-id>.{parquet,jsonl}
    items/<batch-id>.{parquet,jsonl}
    users/<batch-id>.{parquet,jsonl}
    imports/<import-id>/manifest.json        what one import landed (see `ImportManifest`)
    imports/<import-id>/refused.{parquet,jsonl}   the rows it refused, each with its reason

Batch ids start with the arrival timestamp, so lexicographic key order is arrival order and
a listing can resume after a cursor key. A file is visible only once complete: local writes
go to a temporary name and are renamed; S3 puts are atomic.
"""

from __future__ import annotations

import io
import json
import logging
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys_platform.config import Settings

if TYPE_CHECKING:
    import polars as pl

logger = logging.getLogger(__name__)

EVENTS_PREFIX = "events/"
ITEMS_PREFIX = "items/"
USERS_PREFIX = "users/"
IMPORTS_PREFIX = "imports/"
IMPORT_MANIFEST_NAME = "manifest.json"
FILE_FORMATS = (".parquet", ".jsonl")
PARTITION_KEY_FORMAT = "%Y-%m-%d-%H:00"


@dataclass(frozen=True)
class LandedFile:
    """One complete file in the landing zone."""

    key: str
    size: int


def new_batch_id(arrival: datetime | None = None) -> str:
    """Return a batch id that sorts by arrival time."""
    arrival = arrival or datetime.now(UTC)
    return f"{arrival:%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}"


def hour_prefix(arrival: datetime, root: str = EVENTS_PREFIX) -> str:
    """Return the prefix of the arrival hour under `root`, e.g. events/dt=2026-01-02/hr=05/."""
    return f"{root}dt={arrival:%Y-%m-%d}/hr={arrival:%H}/"


def event_file_key(arrival: datetime, fmt: str = ".parquet", batch_id: str | None = None) -> str:
    """Return the key of a new event batch file that arrived at `arrival`."""
    return f"{hour_prefix(arrival)}{batch_id or new_batch_id(arrival)}{fmt}"


def partition_key_of(key: str) -> str | None:
    """Return the hourly partition key (YYYY-MM-DD-HH:00) an events key belongs to."""
    parts = key.split("/")
    if len(parts) < 4 or parts[0] != "events":
        return None
    dt, hr = parts[1], parts[2]
    if not (dt.startswith("dt=") and hr.startswith("hr=")):
        return None
    return f"{dt[3:]}-{hr[3:]}:00"


def arrival_time_of(key: str) -> datetime | None:
    """Return the arrival time encoded in a batch file's name, if it follows the batch-id format."""
    stem = key.rsplit("/", 1)[-1].split("-", 1)[0]
    try:
        return datetime.strptime(stem, "%Y%m%dT%H%M%S%f").replace(tzinfo=UTC)
    except ValueError:
        return None


def partition_hour(partition_key: str) -> datetime | None:
    """The UTC arrival hour of an hourly partition key (YYYY-MM-DD-HH:00), or None for anything else."""
    try:
        return datetime.strptime(partition_key, PARTITION_KEY_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def partition_prefix(partition_key: str, root: str = EVENTS_PREFIX) -> str:
    """Return the prefix under `root` for an hourly partition key (YYYY-MM-DD-HH:00)."""
    return hour_prefix(datetime.strptime(partition_key, PARTITION_KEY_FORMAT), root)


def replace_whole(path: Any, data: bytes) -> None:
    """Write or replace a lake file whole at a local path or UPath (local: `write_durably`, a temporary file
    renamed over it; object stores write whole objects), so a reader never sees half of it."""
    if getattr(path, "protocol", "") in ("", "file", "local"):
        local = Path(str(path.path if hasattr(path, "path") else path))
        local.parent.mkdir(parents=True, exist_ok=True)
        write_durably(local, data)
    else:
        path.write_bytes(data)


def parquet_bytes(frame: pl.DataFrame) -> bytes:
    """`frame` as the bytes of one Parquet file (zstd), for a landing zone or an atomic rewrite."""
    buf = io.BytesIO()
    frame.write_parquet(buf, compression="zstd")
    return buf.getvalue()


@dataclass(frozen=True)
class ImportManifest:
    """What one import landed, kept in the landing zone so that every later process (ingestion, an
    analyst) can read it: the earliest event time it landed, which ingestion accepts for the import's
    own event files however old (`recsys_platform.ingest.ingestion.imported_event_floors`), and the counts of
    source rows kept, merged and refused. `status` is "landing" until every file is written, then "landed".
    """

    import_id: str
    dataset: str
    source: str
    status: str
    imported_at: str
    partition_key: str
    earliest_event_time: str
    latest_event_time: str
    rows: dict[str, int]  # in = kept + merged + refused
    refused_by_reason: dict[str, int]
    events: int
    items: int
    users: int
    event_files: list[str]
    table_files: list[str]
    refused_file: str | None = None
    time_shift_seconds: float | None = None
    warnings: list[str] = field(default_factory=list)
    user_column: str = "user_id"  # the source column of the user id (what refused rows' raw payload names it)

    @property
    def key(self) -> str:
        """Where the manifest lives in the landing zone."""
        return import_manifest_key(self.import_id)

    def earliest(self) -> datetime:
        """The earliest event time the import landed, as a UTC datetime."""
        parsed = datetime.fromisoformat(self.earliest_event_time)
        return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)

    def to_json(self) -> bytes:
        """The manifest as indented JSON."""
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ImportManifest:
        """Parse a manifest; fields this version does not know are ignored."""
        raw = json.loads(data)
        manifest = cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})
        manifest.earliest()  # a manifest whose floor does not parse is unreadable, not a crash later
        return manifest


def import_manifest_key(import_id: str) -> str:
    """Return the key of an import's manifest, e.g. imports/<import-id>/manifest.json."""
    return f"{IMPORTS_PREFIX}{import_id}/{IMPORT_MANIFEST_NAME}"


def read_import_manifests(zone: LandingZone, partition_keys: Iterable[str] | None = None) -> list[ImportManifest]:
    """Every import manifest in the zone, oldest first, or only those of imports that landed in the given
    arrival hours (an import id starts with its arrival time): one listing of imports/, one read per import.

    A manifest that cannot be fetched raises (a transient S3 error must fail the run, to be retried,
    rather than let ingestion misjudge that import's events); one that does not parse is logged and skipped."""
    hours = set(partition_keys) if partition_keys is not None else None
    out = []
    for f in zone.list_files(IMPORTS_PREFIX):
        import_id, _, name = f.key[len(IMPORTS_PREFIX) :].partition("/")
        if name != IMPORT_MANIFEST_NAME:
            continue
        if hours is not None:
            arrival = arrival_time_of(import_id)
            if arrival is not None and f"{arrival:{PARTITION_KEY_FORMAT}}" not in hours:
                continue
        data = zone.read_bytes(f.key)
        try:
            out.append(ImportManifest.from_json(data))
        except (ValueError, TypeError, KeyError) as exc:
            logger.error("skipping unreadable import manifest %s: %s: %s", f.key, type(exc).__name__, exc)
    return out


class LandingZone(ABC):
    """Where files land. Implementations: a local directory and an S3 bucket/prefix."""

    @abstractmethod
    def list_files(self, prefix: str, start_after: str | None = None) -> list[LandedFile]:
        """List complete files under `prefix` with key > `start_after`, in key order."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """Return a file's content."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Write a file so that it becomes visible only when complete."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove a file (a no-op if it is gone): only for forgetting a user's data, never in ingestion."""

    @property
    @abstractmethod
    def url(self) -> str:
        """Where the zone is, for messages."""

    def partition_files(self, partition_key: str) -> list[LandedFile]:
        """List the data files that landed in one arrival-hour partition."""
        return [f for f in self.list_files(partition_prefix(partition_key)) if f.key.endswith(FILE_FORMATS)]

    def files_by_partition(self, partition_keys: Iterable[str]) -> dict[str, list[LandedFile]]:
        """Every file landed in the given arrival hours, by hour (hours without files left out). One
        listing per day with several of the hours, one per hour otherwise: never a listing of every
        file ever landed (14k+ keys at 1M users, seconds per listing on S3)."""
        wanted = set(partition_keys)
        days: dict[str, list[str]] = {}
        for key in sorted(wanted):
            days.setdefault(partition_prefix(key).rsplit("/hr=", 1)[0] + "/", []).append(key)
        prefixes = [day if len(keys) > 1 else partition_prefix(keys[0]) for day, keys in days.items()]
        out: dict[str, list[LandedFile]] = {}
        for prefix in prefixes:
            for f in self.list_files(prefix):
                if (key := partition_key_of(f.key)) in wanted:
                    out.setdefault(key, []).append(f)
        return out


def write_durably(path: Path, data: bytes) -> None:
    """Replace a local file whole and durably: the bytes to a temporary file, fsynced, renamed over `path`, then
    the directory fsynced. Readers see the old file or the new one; once this returns, a power cut keeps it."""
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class LocalLandingZone(LandingZone):
    """A landing zone on the local file system."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return str(self.root)

    def list_files(self, prefix: str, start_after: str | None = None) -> list[LandedFile]:
        base = self.root / prefix
        if not base.exists():
            return []
        out: list[LandedFile] = []
        self._walk(base, prefix.rstrip("/"), start_after, out)
        return sorted(out, key=lambda f: f.key)  # plain key order, exactly as S3 lists

    def _walk(self, directory: Path, rel: str, start_after: str | None, out: list[LandedFile]) -> None:
        # Sorted walk that prunes whole directories at or before the cursor, so listing
        # a zone with a year of hourly folders costs only the folders after the cursor.
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            key = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_dir():
                if start_after and not start_after.startswith(key + "/") and key + "/" < start_after:
                    continue
                self._walk(Path(entry.path), key, start_after, out)
            elif not entry.name.startswith("."):
                if start_after is None or key > start_after:
                    out.append(LandedFile(key=key, size=entry.stat().st_size))

    def read_bytes(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def delete(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)

    def write_bytes(self, key: str, data: bytes) -> None:
        replace_whole(self.root / key, data)


class S3LandingZone(LandingZone):
    """A landing zone in an S3 bucket under a prefix, through a boto3 S3 client."""

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def list_files(self, prefix: str, start_after: str | None = None) -> list[LandedFile]:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        if start_after:
            kwargs["StartAfter"] = self.prefix + start_after
        out: list[LandedFile] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(**kwargs):
            for obj in page.get("Contents", []):
                key = obj["Key"][len(self.prefix) :]
                name = key.rsplit("/", 1)[-1]
                if name and not name.startswith("."):  # skip folder markers and hidden files
                    out.append(LandedFile(key=key, size=int(obj["Size"])))
        return out

    def read_bytes(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()

    def write_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)


def landing_zone_from_url(url: str, s3_client: Any | None = None) -> LandingZone:
    """Open a landing zone from a path or an s3://bucket/prefix URL."""
    if url.startswith("s3://"):
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if s3_client is None:
            import boto3

            s3_client = boto3.client("s3", endpoint_url=Settings.from_env().s3_endpoint_url)
        return S3LandingZone(s3_client, bucket, prefix)
    return LocalLandingZone(url)
