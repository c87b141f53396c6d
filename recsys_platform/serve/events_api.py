"""`POST /v1/events`: collect app events into the landing zone, answered per record like Kinesis PutRecords.

Each record is typed with `EventIn` (a wrong type rejects that record only, code `wrong_type`),
then checked with the ingestion rules (`recsys_platform.ingest.ingestion.validate_events`: unknown event
type or item, missing item, invalid duration or biometrics, impossible timestamps, oversized
fields). Accepted records are acknowledged only once the micro-batch file holding them is in the
landing zone (see `recsys_platform.realtime.collector`); rejected records are never written.
The response is 200 with `FailedRecordCount` and one entry per record, in request order; 503 if
the landing zone cannot be written (then nothing in the request was acknowledged).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator

from recsys_platform.config import Settings
from recsys_platform.ingest.landing import LandingZone, landing_zone_from_url
from recsys_platform.realtime.collector import EventCollector
from recsys_platform.serve.auth import require
from recsys_platform.serve.errors import errors
from recsys_platform.serve.observability import metrics_of

logger = logging.getLogger(__name__)

MAX_RECORDS_PER_REQUEST = 500
KNOWN_ITEMS_REFRESH_SECONDS = 60.0


class EventIn(BaseModel):
    """One app event (RAW_EVENT_SCHEMA); `event_id` is assigned by the server (uuid4) when missing."""

    model_config = ConfigDict(extra="forbid")

    event_id: str | None = Field(None, max_length=512)
    user_id: str
    event_type: str
    event_time: datetime = Field(description="ISO 8601; naive times are taken as UTC")
    session_id: str | None = None
    item_id: str | None = None
    seconds_listened: float | None = None
    query: str | None = None
    steps: int | None = None
    heart_rate: float | None = None

    @field_validator("event_time")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        try:
            return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        except OverflowError as exc:  # 9999-12-31T23:59:59-14:00 is in the year 10000 in UTC
            raise ValueError("is outside the years 1-9999 once converted to UTC") from exc


# Any JSON value: a record that is not an object is rejected on its own (`wrong_type`), not the whole request.
RecordIn = Annotated[Any, WithJsonSchema(EventIn.model_json_schema())]


class PutEventsIn(BaseModel):
    """A batch of events."""

    model_config = ConfigDict(extra="forbid")

    records: list[RecordIn] = Field(min_length=1, max_length=MAX_RECORDS_PER_REQUEST)


class RecordOut(BaseModel):
    """The outcome of one record: `EventId` and `LandingKey` when accepted, `ErrorCode`/`ErrorMessage` when not."""

    EventId: str | None = None
    LandingKey: str | None = None
    ErrorCode: str | None = None
    ErrorMessage: str | None = None


class PutEventsOut(BaseModel):
    """Per-record outcomes, in request order, like Kinesis PutRecords."""

    FailedRecordCount: int
    Records: list[RecordOut]
    AcceptedAt: str = Field(description="when the accepted records were durably in the landing zone (UTC)")


class KnownItems:
    """The catalog's item ids from the lake's `items` table, re-read at most once a minute."""

    def __init__(self, lake_url: str) -> None:
        self.path = Path(lake_url) / "items.parquet" if "://" not in lake_url else None
        self._ids: set[str] | None = None
        self._read_at = float("-inf")
        self._mtime: float | None = None

    def __call__(self) -> set[str] | None:
        """The item ids, or None (rule skipped; ingestion still checks) when no catalog is materialized."""
        now = time.monotonic()
        if self.path is None or now - self._read_at < KNOWN_ITEMS_REFRESH_SECONDS:
            return self._ids
        self._read_at = now
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return self._ids
        if mtime != self._mtime:
            import polars as pl

            self._ids = set(pl.read_parquet(self.path, columns=["item_id"])["item_id"].to_list())
            self._mtime = mtime
        return self._ids


def build_collector(settings: Settings, zone: LandingZone | None = None) -> EventCollector:
    """A collector on the configured landing zone, validating item ids against the lake's catalog; it waits
    `ServeSettings.ingest_linger_ms` for other requests to share a landing file."""
    return EventCollector(
        zone or landing_zone_from_url(settings.landing_url),
        known_items=KnownItems(settings.lake_url),
        linger_seconds=settings.serve.ingest_linger_ms / 1000.0,
    )


def _typed(record: Any) -> tuple[dict[str, Any] | None, str | None]:
    if not isinstance(record, dict):
        return None, f"record: expected a JSON object, got {type(record).__name__}"
    try:
        return EventIn.model_validate(record).model_dump(), None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "record"
        return None, f"{where}: {first.get('msg', 'invalid')} ({exc.error_count()} error(s))"


def events_router(collector: EventCollector | None = None) -> APIRouter:
    """The `POST /v1/events` router; the collector defaults to `build_collector` of the app's settings
    (`app.state.settings`) on first use."""
    router = APIRouter()
    holder: dict[str, EventCollector] = {}
    if collector is not None:
        holder["c"] = collector

    @router.post(
        "/v1/events",
        response_model=PutEventsOut,
        response_model_exclude_none=True,
        responses=errors(401, 413, 429, 503),
        dependencies=[Depends(require("ingest"))],
        tags=["events"],
    )
    async def put_events(body: PutEventsIn, request: Request) -> dict:
        """Validate a batch of events; append the accepted ones to the landing zone before answering."""
        typed: list[dict[str, Any] | None] = []
        type_errors: dict[int, str] = {}
        for i, raw in enumerate(body.records):
            record, error = _typed(raw)
            typed.append(record)
            if error is not None:
                type_errors[i] = error
        valid_idx = [i for i, r in enumerate(typed) if r is not None]
        try:
            if "c" not in holder:
                holder["c"] = build_collector(request.app.state.settings)
            result = await holder["c"].put_async([typed[i] for i in valid_idx])
        except Exception as exc:  # OSError locally, botocore errors on S3: nothing was acknowledged
            logger.error("landing zone write failed: %s", exc)
            raise HTTPException(503, f"landing zone unavailable, nothing was accepted: {exc}") from exc
        by_index = {valid_idx[r.index]: r for r in result.records}
        out = []
        for i in range(len(body.records)):
            if i in type_errors:
                out.append({"ErrorCode": "wrong_type", "ErrorMessage": type_errors[i]})
                continue
            r = by_index[i]
            if r.accepted:
                out.append({"EventId": r.event_id, "LandingKey": r.landing_key})
            else:
                out.append({"EventId": r.event_id, "ErrorCode": r.error_code, "ErrorMessage": r.error_message})
        failed = sum(1 for o in out if o.get("ErrorCode"))
        if (metrics := metrics_of(request.app.state)) is not None:
            if len(out) > failed:
                metrics.events.labels("accepted", "").inc(len(out) - failed)
            for o in out:
                if o.get("ErrorCode"):
                    metrics.events.labels("rejected", o["ErrorCode"]).inc()
        return {"FailedRecordCount": failed, "Records": out, "AcceptedAt": result.accepted_at.isoformat()}

    return router
