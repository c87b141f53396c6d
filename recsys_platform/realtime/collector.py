"""Event collection: validate a batch of records and append the accepted ones to the landing zone.

Durability: a record is acknowledged only after the micro-batch file holding it is complete in
the landing zone (local rename or S3 put). Concurrent requests are group-committed: one writer
takes everything queued (up to `max_records`) and writes it as one Parquet file, so under load
there is about one file per write time, and an idle collector writes at once (no timer wait).
`linger_seconds` (default 0, at most 1) trades acknowledgement latency for fewer files.
Rejected records are answered with a reason code and never written.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import polars as pl

from recsys_platform import schemas
from recsys_platform.ingest.ingestion import validate_events
from recsys_platform.ingest.landing import (
    PARTITION_KEY_FORMAT,
    LandingZone,
    event_file_key,
    new_batch_id,
    parquet_bytes,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_RECORDS = 5000
MAX_LINGER_SECONDS = 1.0
API_SOURCE = "api"


@dataclass(frozen=True)
class RecordResult:
    """The outcome of one record: accepted (with its event id and landing key) or rejected with a reason."""

    index: int
    event_id: str | None
    error_code: str | None = None
    error_message: str | None = None
    landing_key: str | None = None

    @property
    def accepted(self) -> bool:
        """True when the record was written."""
        return self.error_code is None


@dataclass(frozen=True)
class PutResult:
    """Per-record outcomes of one batch, in request order, and when the accepted ones became durable."""

    records: list[RecordResult]
    accepted_at: datetime

    @property
    def failed_count(self) -> int:
        """Number of rejected records."""
        return sum(not r.accepted for r in self.records)


def validate_records(
    records: Sequence[Mapping[str, Any]], known_items: set[str] | None, arrival: datetime
) -> tuple[pl.DataFrame, dict[int, tuple[str, str]]]:
    """Apply the ingestion rules to typed records; return (accepted rows, {index: (reason, detail)})."""
    frame = pl.DataFrame(
        [{**{k: r.get(k) for k in schemas.RAW_EVENT_SCHEMA}, "source_row": i} for i, r in enumerate(records)],
        schema={**schemas.RAW_EVENT_SCHEMA, "source_row": pl.Int64()},
    ).with_columns(
        arrival_time=pl.lit(arrival, dtype=pl.Datetime("us", "UTC")),
        source_file=pl.lit(API_SOURCE),
    )
    partition_key = f"{arrival:{PARTITION_KEY_FORMAT}}"
    valid, rejected = validate_events(frame, known_items, partition_key)
    errors = {
        int(row["source_row"]): (str(row["reason"]), str(row["detail"] or ""))
        for row in rejected.select("source_row", "reason", "detail").iter_rows(named=True)
    }
    return valid.select(list(schemas.RAW_EVENT_SCHEMA)), errors


def encode_batch(rows: pl.DataFrame) -> bytes:
    """Serialize accepted events as a landing-zone Parquet file (RAW_EVENT_SCHEMA columns)."""
    return parquet_bytes(rows.select(list(schemas.RAW_EVENT_SCHEMA)))


class EventCollector:
    """Validates event batches and group-commits the accepted rows into landing-zone files."""

    def __init__(
        self,
        zone: LandingZone,
        known_items: Callable[[], set[str] | None] | None = None,
        max_records: int = DEFAULT_MAX_RECORDS,
        linger_seconds: float = 0.0,
    ) -> None:
        self.zone = zone
        self._known_items = known_items or (lambda: None)
        self.max_records = max_records
        self.linger_seconds = min(max(linger_seconds, 0.0), MAX_LINGER_SECONDS)
        self._pending: list[tuple[pl.DataFrame, asyncio.Future]] = []
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task | None = None
        self.files_written = 0

    def prepare(
        self, records: Sequence[Mapping[str, Any]], arrival: datetime | None = None
    ) -> tuple[pl.DataFrame, list[RecordResult]]:
        """Assign missing event ids and validate; return (rows to write, per-record results without keys)."""
        arrival = arrival or datetime.now(UTC)
        filled = [dict(r) if r.get("event_id") else {**r, "event_id": str(uuid.uuid4())} for r in records]
        valid, errors = validate_records(filled, self._known_items(), arrival)
        results = [
            RecordResult(i, filled[i].get("event_id"), *errors[i])
            if i in errors
            else RecordResult(i, filled[i]["event_id"])
            for i in range(len(filled))
        ]
        return valid, results

    def write_now(self, rows: pl.DataFrame) -> str | None:
        """Write rows as one landing file synchronously; return its key (None when there is nothing to write)."""
        if rows.height == 0:
            return None
        arrival = datetime.now(UTC)
        key = event_file_key(arrival, ".parquet", new_batch_id(arrival))
        self.zone.write_bytes(key, encode_batch(rows))
        self.files_written += 1
        return key

    def put(self, records: Sequence[Mapping[str, Any]]) -> PutResult:
        """Validate and durably write one batch from synchronous code (one file per call)."""
        valid, results = self.prepare(records)
        key = self.write_now(valid)
        return PutResult(_with_key(results, key), datetime.now(UTC))

    async def put_async(self, records: Sequence[Mapping[str, Any]]) -> PutResult:
        """Validate one batch and wait until its accepted rows are in a landing file (group commit)."""
        valid, results = self.prepare(records)
        if valid.height == 0:
            return PutResult(results, datetime.now(UTC))
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._pending.append((valid, future))
        self._ensure_writer()
        assert self._wake is not None
        self._wake.set()
        key = await future
        return PutResult(_with_key(results, key), datetime.now(UTC))

    def _ensure_writer(self) -> None:
        if self._writer is None or self._writer.done():
            self._wake = asyncio.Event()
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    async def _write_loop(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.linger_seconds and sum(f.height for f, _ in self._pending) < self.max_records:
                await asyncio.sleep(self.linger_seconds)
            while self._pending:
                batch, taken = [], 0
                while self._pending and (not batch or taken + self._pending[0][0].height <= self.max_records):
                    frame, fut = self._pending.pop(0)
                    batch.append((frame, fut))
                    taken += frame.height
                rows = pl.concat([f for f, _ in batch], how="vertical_relaxed")
                started = time.perf_counter()
                try:
                    key = await asyncio.to_thread(self.write_now, rows)
                except Exception as exc:  # nothing was acknowledged: every waiting request gets the error
                    logger.exception("landing write failed for %d records", rows.height)
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                logger.debug(
                    "wrote %d events to %s in %.1f ms", rows.height, key, 1000 * (time.perf_counter() - started)
                )
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(key)

    async def aclose(self) -> None:
        """Stop the writer task once everything queued is written."""
        while self._pending:
            await asyncio.sleep(0.01)
        if self._writer is not None:
            self._writer.cancel()
            try:
                await self._writer
            except asyncio.CancelledError:
                pass


def _with_key(results: list[RecordResult], key: str | None) -> list[RecordResult]:
    return [RecordResult(r.index, r.event_id, landing_key=key) if r.accepted else r for r in results]
