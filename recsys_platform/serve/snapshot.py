"""Build the online-store payload of one model version from the offline tables.

Namespaces (values are JSON): `recs` (per user), `user_features` (per user, with `segment`),
`popular` (per segment and `__global__`), `similar` (per item), `items` (metadata).
"""

from __future__ import annotations

import hashlib
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
) -> dict[str, dict[str, str]]:
    """Every namespace of a slot, from the offline tables of one model version."""
    meta = items.select("item_id", "content_type", "is_kids")
    recs = recommendations.select("user_id", "rank", "item_id", pl.col("score").round(6)).join(
        meta, on="item_id", how="left"
    )
    pop = popularity.select("segment", "rank", "item_id", pl.col("score").round(3)).join(meta, on="item_id", how="left")
    sim = (
        similar.select("item_id", "rank", pl.col("similar_item_id"), pl.col("score").round(6))
        .join(meta.rename({"item_id": "similar_item_id"}), on="similar_item_id", how="left")
        .rename({"item_id": "source_item_id"})
        .rename({"similar_item_id": "item_id"})
    )
    return {
        "recs": _lists(recs, "user_id", generated_at),
        "user_features": _records(user_features, "user_id", ONLINE_USER_FEATURES),
        "popular": _lists(pop, "segment", generated_at),
        "similar": _lists(sim, "source_item_id", generated_at),
        "items": _records(items, "item_id", ITEM_METADATA),
    }


def snapshot_id_of(payload: dict[str, dict[str, str]], model_version: str) -> str:
    """A content hash of a payload and its model version."""
    digest = hashlib.sha256(model_version.encode())
    for ns in sorted(payload):
        digest.update(ns.encode())
        digest.update(str(len(payload[ns])).encode())
        for key in sorted(payload[ns])[:: max(1, len(payload[ns]) // 500)]:
            digest.update(key.encode())
            digest.update(payload[ns][key].encode())
    return digest.hexdigest()[:16]
