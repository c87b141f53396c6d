"""The served log: every list the API returns (and the batch export writes), kept so outcomes can be tied to
what the user actually saw.

The request path only appends a row to an in-memory buffer; a background task writes the buffer as one Parquet
file per flush (every FLUSH_SECONDS, or sooner at MAX_BUFFERED rows) into the landing zone under
`served/dt=YYYY-MM-DD/hr=HH/<batch>.parquet`, off the event loop. The `served_log` asset reads an arrival hour's
files into the lake (hourly partitions), and the analyst catalog has it as a view. Rows follow
`schemas.SERVED_LOG_SCHEMA` (one row per list: items in served order). RECSYS_SERVED_LOG=0
(`ServeSettings.served_log`) turns it off.
A process killed between flushes loses at most FLUSH_SECONDS of log rows, never an answer.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import polars as pl

from recsys_platform import schemas
from recsys_platform.ingest.landing import LandingZone, hour_prefix, new_batch_id, parquet_bytes, partition_prefix

logger = logging.getLogger(__name__)

SERVED_PREFIX = "served/"
FLUSH_SECONDS = 1.0
MAX_BUFFERED = 20_000


def served_key(at: datetime) -> str:
    """The landing key of a served-log file written at `at` (the events' layout, under `served/`)."""
    return f"{hour_prefix(at, SERVED_PREFIX)}{new_batch_id(at)}.parquet"


_COLUMNS = tuple(schemas.SERVED_LOG_SCHEMA)
_SEP = "\x1f"  # joins a list's item ids in the buffer (ids never contain control characters)


def encode(columns: Sequence[Sequence]) -> bytes:
    """Buffered columns (SERVED_LOG_SCHEMA's, in order) as one Parquet file of SERVED_LOG_SCHEMA. The buffer holds
    cheap Python values (epoch seconds, the item ids joined by one string) column by column, so the writer thread
    turns each into a typed polars column directly, holding the interpreter lock for little of the time: the
    event loop waits for that lock during a flush, which shows in the API's tail latency. A second's buffer of one
    worker under benchmarks/serve.py (9,000 rows) kept a busy thread waiting 3.3 ms (median of 12) against 6.4 ms
    when the buffer held rows that were transposed here (~1 ms of Python, a gen-0 collection at times 15 ms)."""
    raw = {
        name: pl.Series(name, values, dtype=pl.String)
        for name, values in zip(_COLUMNS[1:-1], columns[1:-1], strict=True)
    }
    frame = pl.DataFrame(
        {
            "served_at": pl.Series("served_at", columns[0], dtype=pl.Float64),
            **raw,
            "item_ids": pl.Series("item_ids", columns[-1], dtype=pl.String),
        }
    ).with_columns(
        served_at=(pl.col("served_at") * 1e6).cast(pl.Int64).cast(pl.Datetime("us", "UTC")),
        item_ids=pl.when(pl.col("item_ids") == "")
        .then(pl.lit([], dtype=pl.List(pl.String)))
        .otherwise(pl.col("item_ids").str.split(_SEP)),
    )
    return parquet_bytes(frame.select(list(_COLUMNS)))


def _empty_columns() -> tuple[list, ...]:
    return tuple([] for _ in _COLUMNS)


class ServedLog:
    """The API's buffer of served lists and its background writer. Recording, forgetting and flushing run on
    the event loop's thread (the routes that call them are `async`), so the columns always grow together."""

    def __init__(self, zone: Callable[[], LandingZone], flush_seconds: float = FLUSH_SECONDS) -> None:
        self._zone_factory = zone
        self._zone: LandingZone | None = None
        self.flush_seconds = flush_seconds
        self._columns = _empty_columns()  # SERVED_LOG_SCHEMA's columns, in order
        self._task: asyncio.Task | None = None
        self.files_written = 0
        self.rows_dropped = 0

    def record(
        self,
        *,
        request_id: str | None,
        surface: str,
        user_id: str,
        experiment: str | None,
        arm: str | None,
        source: str,
        model_version: str,
        slot: str,
        item_ids: list[str],
    ) -> None:
        """Buffer one served list (O(1) on the request path)."""
        columns = self._columns
        if len(columns[0]) >= MAX_BUFFERED:  # the writer is far behind (landing zone down): shed, never block
            self.rows_dropped += 1
            return
        row = (
            time.time(),
            request_id,
            surface,
            user_id,
            experiment,
            arm,
            source,
            model_version,
            slot,
            _SEP.join(item_ids),
        )
        for column, value in zip(columns, row, strict=True):
            column.append(value)

    @property
    def buffered(self) -> int:
        """Rows recorded and not yet written."""
        return len(self._columns[0])

    def forget(self, user_id: str) -> int:
        """Drop the user's rows not yet written (forgetting a user must not be undone by the next flush)."""
        before = self.buffered
        users = self._columns[_COLUMNS.index("user_id")]
        keep = [i for i, user in enumerate(users) if user != user_id]
        if len(keep) < before:
            self._columns = tuple([column[i] for i in keep] for column in self._columns)
        return before - self.buffered

    def start(self) -> None:
        """Start the background writer on the running loop."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_seconds)
            await self.flush()

    async def flush(self) -> None:
        """Write what is buffered as one landing file (in a worker thread); keep the rows if the write fails."""
        if not self.buffered:
            return
        columns, self._columns = self._columns, _empty_columns()
        try:
            if self._zone is None:
                self._zone = self._zone_factory()
            zone, key = self._zone, served_key(datetime.now(UTC))
            # Encoding and writing both in a worker thread: the event loop only swaps the buffer.
            await asyncio.to_thread(lambda: zone.write_bytes(key, encode(columns)))
            self.files_written += 1
        except Exception as exc:  # noqa: BLE001 - the log must never take the API down
            logger.warning("served log: %d rows not written yet (%s); retrying on the next flush", len(columns[0]), exc)
            self._columns = tuple(old + new for old, new in zip(columns, self._columns, strict=True))

    async def aclose(self) -> None:
        """Stop the writer and flush what is left."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self.flush()


def read_served_hour(zone: LandingZone, partition_key: str) -> pl.DataFrame:
    """Every served-log row that landed in one arrival hour."""
    files = [f for f in zone.list_files(partition_prefix(partition_key, SERVED_PREFIX)) if f.key.endswith(".parquet")]
    frames = [pl.read_parquet(io.BytesIO(zone.read_bytes(f.key))) for f in files]
    if not frames:
        return schemas.empty_frame(schemas.SERVED_LOG_SCHEMA)
    return schemas.conform(pl.concat(frames, how="diagonal_relaxed"), schemas.SERVED_LOG_SCHEMA)


def export_served_rows(sets: pl.DataFrame, at: datetime) -> pl.DataFrame:
    """Served-log rows for the lists a batch export delivers: one per user and set (surface `export:<set>`),
    items in rank order; experiment, arm and source from the rows' `context` (`arm:<experiment>/<arm>/<source>`,
    see `batch.scoring.apply_experiment_arms`), else source `set`."""
    if sets.height == 0:
        return schemas.empty_frame(schemas.SERVED_LOG_SCHEMA)
    tagged = pl.col("context").fill_null("").str.starts_with("arm:")
    parts = pl.col("context").str.strip_prefix("arm:").str.split("/")
    lists = (
        sets.sort("set_name", "user_id", "rank")
        .group_by("set_name", "user_id", maintain_order=True)
        .agg(
            item_ids=pl.col("item_id"), model_version=pl.col("model_version").first(), context=pl.col("context").first()
        )
    )
    return schemas.conform(
        lists.select(
            served_at=pl.lit(at, dtype=pl.Datetime("us", "UTC")),
            request_id=pl.lit(None, dtype=pl.String),
            surface=pl.lit("export:") + pl.col("set_name"),
            user_id="user_id",
            experiment=pl.when(tagged).then(parts.list.get(0, null_on_oob=True)),
            arm=pl.when(tagged).then(parts.list.get(1, null_on_oob=True)),
            source=pl.when(tagged).then(parts.list.get(2, null_on_oob=True)).otherwise(pl.lit("set")),
            model_version="model_version",
            slot=pl.lit(None, dtype=pl.String),
            item_ids="item_ids",
        ),
        schemas.SERVED_LOG_SCHEMA,
    )
