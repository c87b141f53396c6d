"""Build the online-store payload of one model version from the offline tables.

Namespaces (values are JSON): `recs` (per user), `user_features` (per user, with `segment`),
`popular` (per segment and `__global__`), `similar` (per item), `items` (metadata).
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterator, Mapping
from datetime import datetime

import polars as pl

ONLINE_USER_FEATURES = (
    "segment",
    "user_completes",
    "user_starts",
    "user_active_days",
    "user_night_share",
    "user_sleep_share",
    "user_movement_share",
    "user_level_played",
    "user_has_kids",
    "language",
    "preferred_daypart",
)
RECOMMENDATION_COLUMNS = ("user_id", "rank", "item_id", "score")  # what a slot's lists hold of recommendations
ITEM_METADATA = (
    "title",
    "content_type",
    "topic",
    "narrator",
    "duration_seconds",
    "level",
    "series_id",
    "language",
    "is_kids",
)


def _lists(df: pl.DataFrame, key: str, generated_at: datetime) -> dict[str, str]:
    """Group ranked rows per `key` into {"items": [...], "generated_at": ...} JSON strings."""
    if df.height == 0:
        return {}
    encoded = (
        df.sort(key, "rank")
        .group_by(key, maintain_order=True)
        .agg(items=pl.struct(pl.exclude(key, "rank")))
        .select(
            key,
            value=pl.struct(pl.col("items"), generated_at=pl.lit(generated_at.isoformat())).struct.json_encode(),
        )
    )
    return dict(zip(encoded[key].to_list(), encoded["value"].to_list(), strict=True))


# Users whose lists are encoded at a time when a slot is written or checked (`EncodedLists`).
LIST_CHUNK_KEYS = 50_000


class EncodedLists(Mapping[str, str]):
    """`_lists` of the ranked rows of `df` (the same JSON per key), encoded `chunk` keys at a time as they are iterated
    and one key at a time when looked up, never all at once: at 1M users the lists as one dict were 1M Python strings
    of ~4 KB each beside the rows they came from. `meta` (joined on item_id per chunk) adds item columns."""

    def __init__(
        self, df: pl.DataFrame, key: str, generated_at: datetime, meta: pl.DataFrame | None = None, chunk: int = 0
    ):
        self._rows = df.sort(key, "rank")
        self._key, self._generated_at, self._meta = key, generated_at, meta
        self._chunk = chunk or LIST_CHUNK_KEYS
        counts = self._rows[key].unique_counts()  # per key, in order: the rows are sorted by key
        self._keys = self._rows[key].unique(maintain_order=True).to_list()
        self._ends = counts.cum_sum().to_list()

    def _encode(self, start: int, end: int) -> dict[str, str]:
        """The lists of keys `start`..`end` (positions in the sorted keys)."""
        lo = self._ends[start - 1] if start else 0
        rows = self._rows.slice(lo, self._ends[end - 1] - lo)
        if self._meta is not None:
            rows = rows.join(self._meta, on="item_id", how="left", maintain_order="left")
        return _lists(rows, self._key, self._generated_at)

    def __getitem__(self, key: str) -> str:
        at = bisect.bisect_left(self._keys, key)  # the keys are sorted (polars' string order is Python's)
        if at == len(self._keys) or self._keys[at] != key:
            raise KeyError(key)
        return self._encode(at, at + 1)[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def items(self) -> Iterator[tuple[str, str]]:  # type: ignore[override]
        """(key, JSON) of every key in key order, a chunk of keys encoded at a time."""
        for start in range(0, len(self._keys), self._chunk):
            yield from self._encode(start, min(start + self._chunk, len(self._keys))).items()


def _records(df: pl.DataFrame, key: str, columns: tuple[str, ...]) -> dict[str, str]:
    cols = [c for c in columns if c in df.columns]
    encoded = df.select(key, value=pl.struct(cols).struct.json_encode())
    return dict(zip(encoded[key].to_list(), encoded["value"].to_list(), strict=True))


def build_payload(
    recommendations: pl.DataFrame,
    user_features: pl.DataFrame,
    popularity: pl.DataFrame,
    similar: pl.DataFrame,
    items: pl.DataFrame,
    generated_at: datetime,
) -> dict[str, Mapping[str, str]]:
    """Every namespace of a slot, from the offline tables of one model version (the users' lists encoded as they are
    written and checked: `EncodedLists`)."""
    meta = items.select("item_id", "content_type", "is_kids")
    recs = recommendations.select("user_id", "rank", "item_id", pl.col("score").round(6))
    pop = popularity.select("segment", "rank", "item_id", pl.col("score").round(3)).join(meta, on="item_id", how="left")
    sim = (
        similar.select("item_id", "rank", pl.col("similar_item_id"), pl.col("score").round(6))
        .join(meta.rename({"item_id": "similar_item_id"}), on="similar_item_id", how="left")
        .rename({"item_id": "source_item_id"})
        .rename({"similar_item_id": "item_id"})
    )
    return {
        "recs": EncodedLists(recs, "user_id", generated_at, meta),
        "user_features": _records(user_features, "user_id", ONLINE_USER_FEATURES),
        "popular": _lists(pop, "segment", generated_at),
        "similar": _lists(sim, "source_item_id", generated_at),
        "items": _records(items, "item_id", ITEM_METADATA),
    }


def snapshot_id_of(payload: Mapping[str, Mapping[str, str]], model_version: str) -> str:
    """A content hash of a payload and its model version."""
    digest = hashlib.sha256(model_version.encode())
    for ns in sorted(payload):
        digest.update(ns.encode())
        digest.update(str(len(payload[ns])).encode())
        for key in sorted(payload[ns])[:: max(1, len(payload[ns]) // 500)]:
            digest.update(key.encode())
            digest.update(payload[ns][key].encode())
    return digest.hexdigest()[:16]
