"""Read path: personalized recommendations with popularity fallback, and similar items."""

from __future__ import annotations

import json
import logging
from collections.abc import Generator
from dataclasses import dataclass

import msgspec

from recsys_platform.serve.online_store import GLOBAL_SEGMENT, OnlineStore, OnlineStoreError, ReadResult

logger = logging.getLogger(__name__)

# A cold user needs a second read (popular[segment] + popular[__global__]); it is only accepted if no
# flip happened in between, so a response never mixes versions. Retries are only needed during a flip.
_MAX_CONSISTENT_READ_ATTEMPTS = 5


class ItemNotFoundError(OnlineStoreError):
    """The item has no entry in the active slot's `similar` namespace."""


class SetNotFoundError(OnlineStoreError):
    """The active slot holds no such set for the user."""


class InconsistentReadError(OnlineStoreError):
    """Consecutive reads kept landing on different deployments (flips faster than reads)."""


class RecommendedItem(msgspec.Struct):
    """One recommended item at its position in the list: the API's item, fields in its JSON order.

    A msgspec Struct, not a dataclass, so a stored list decodes straight into these (in C, ~1 us for 50 items'
    worth of fields) and a response encodes straight from them: the hot route builds no dict per item."""

    item_id: str
    score: float = 0.0
    rank: int = 0
    content_type: str | None = None
    is_kids: bool = False


class _StoredList(msgspec.Struct):
    """A stored ranked list as the writers produce it (`{"items": [...], "generated_at": ...}`)."""

    items: list[RecommendedItem] = []
    generated_at: str | None = None


_decode_stored = msgspec.json.Decoder(_StoredList).decode


@dataclass(frozen=True)
class Recommendations:
    """A ranked list and where it came from (slot, model version, snapshot, source)."""

    key: str
    items: list[RecommendedItem]
    model_version: str
    slot: str
    snapshot_id: str
    generated_at: str | None
    source: str


def _stored(raw: str | dict) -> _StoredList:
    """A stored list decoded and typed; values of looser types (ids as numbers, null flags, scores as text) go
    through the per-field conversions the read path has always applied."""
    try:
        return _decode_stored(raw) if isinstance(raw, str) else msgspec.convert(raw, _StoredList)
    except msgspec.ValidationError:
        doc = json.loads(raw) if isinstance(raw, str) else raw
        items = [
            RecommendedItem(
                item_id=str(entry["item_id"]),
                score=float(entry.get("score", 0.0)),
                content_type=entry.get("content_type"),
                is_kids=bool(entry.get("is_kids", False)),
            )
            for entry in doc.get("items", ())
        ]
        return _StoredList(items, doc.get("generated_at"))


def _rank(
    raw: str | dict, k: int, content_type: str | None, exclude_kids: bool
) -> tuple[list[RecommendedItem], str | None]:
    """Filter a stored `{"items": [...], "generated_at": ...}` list (JSON text, or already parsed) and keep the top
    k, ranked 1..n in the filtered order."""
    doc = _stored(raw)
    if content_type is None and not exclude_kids:
        items = doc.items[:k]
    else:
        items = [
            i
            for i in doc.items
            if (content_type is None or i.content_type == content_type) and not (exclude_kids and i.is_kids)
        ][:k]
    for rank, item in enumerate(items, 1):
        item.rank = rank
    return items, doc.generated_at


def _segment(raw_features: str | None) -> str | None:
    if raw_features is None:
        return None
    try:
        segment = json.loads(raw_features).get("segment")
    except (ValueError, AttributeError):
        logger.warning("unreadable user_features value; using the global fallback")
        return None
    return segment if isinstance(segment, str) and segment else None


def _result(
    key: str, read: ReadResult, raw: str | dict, k: int, content_type: str | None, exclude_kids: bool, source: str
) -> Recommendations:
    items, generated_at = _rank(raw, k, content_type, exclude_kids)
    return Recommendations(key, items, read.model_version, read.slot, read.snapshot_id, generated_at, source)


def _set_list(raw_sets: str | None, set_name: str) -> dict | None:
    """The stored list of one named set from a user's `sets` value ({set name: {"items": [...]}}), parsed."""
    if raw_sets is None:
        return None
    try:
        entry = json.loads(raw_sets).get(set_name)
    except (ValueError, AttributeError):
        logger.warning("unreadable sets value; serving the model's list")
        return None
    return entry if isinstance(entry, dict) else None


# One read of `_recommend_steps`: (namespace, keys, extra namespaces -> keys).
ReadRequest = tuple[str, list[str], dict[str, list[str]]]


def _recommend_steps(
    user_id: str, k: int, content_type: str | None, exclude_kids: bool, source: str, set_name: str | None
) -> Generator[ReadRequest, ReadResult, Recommendations]:
    """`recommend` without I/O: yields each store read it needs, is sent its result, returns the answer; so the
    blocking `recommend` and the event loop's `recommend_async` are one piece of logic."""
    popularity = source == "popularity"
    for _ in range(_MAX_CONSISTENT_READ_ATTEMPTS):
        # Hot path: one read. Popularity lists are only fetched for cold users (and the popularity arm, which reads
        # only the features its segment comes from, not the user's list).
        extra = {} if popularity else {"user_features": [user_id]}
        if source == "set" and set_name:
            extra["sets"] = [user_id]
        read = yield ("user_features" if popularity else "recs", [user_id], extra)
        if source == "set" and set_name:
            user_set = _set_list(read.extra_values["sets"].get(user_id), set_name)
            if user_set is not None:
                return _result(user_id, read, user_set, k, content_type, exclude_kids, "recommendation_set")
        if not popularity and (raw_recs := read.values.get(user_id)) is not None:
            return _result(user_id, read, raw_recs, k, content_type, exclude_kids, "personalized")
        features = read.values if popularity else read.extra_values["user_features"]
        segment = _segment(features.get(user_id))
        keys = [GLOBAL_SEGMENT] if segment in (None, GLOBAL_SEGMENT) else [segment, GLOBAL_SEGMENT]
        fallback = yield ("popular", keys, {})
        if not fallback.same_source(read):
            continue  # a flip happened between the two reads; start again on the new slot
        popular = next((fallback.values[key] for key in keys if fallback.values.get(key) is not None), None)
        served = "popularity" if popularity else "popularity_fallback"
        if popular is None:  # nothing to fall back on: an empty list, not an error
            return Recommendations(user_id, [], read.model_version, read.slot, read.snapshot_id, None, served)
        return _result(user_id, read, popular, k, content_type, exclude_kids, served)
    raise InconsistentReadError(f"pointer flipped during {_MAX_CONSISTENT_READ_ATTEMPTS} consecutive reads")


def recommend(
    store: OnlineStore,
    user_id: str,
    k: int = 10,
    content_type: str | None = None,
    exclude_kids: bool = False,
    source: str = "model",
    set_name: str | None = None,
) -> Recommendations:
    """Top-k recommendations for a user from one slot, from `source`: "model" (the user's ranked list),
    "set" (their rules-processed set `set_name`, else the model's list) or "popularity" (the popularity list
    of their segment); popularity by segment for cold users whatever the source."""
    steps = _recommend_steps(user_id, k, content_type, exclude_kids, source, set_name)
    try:
        namespace, keys, extra = next(steps)
        while True:
            namespace, keys, extra = steps.send(store.read(namespace, keys, extra=extra))
    except StopIteration as done:
        return done.value


async def recommend_async(
    store: OnlineStore,
    user_id: str,
    k: int = 10,
    content_type: str | None = None,
    exclude_kids: bool = False,
    source: str = "model",
    set_name: str | None = None,
) -> Recommendations:
    """`recommend` on an event loop: the same answer, the store read with `aread`."""
    steps = _recommend_steps(user_id, k, content_type, exclude_kids, source, set_name)
    try:
        namespace, keys, extra = next(steps)
        while True:
            namespace, keys, extra = steps.send(await store.aread(namespace, keys, extra=extra))
    except StopIteration as done:
        return done.value


def similar_items(store: OnlineStore, item_id: str, k: int = 10) -> Recommendations:
    """Top-k neighbours of an item; ItemNotFoundError if the active slot does not know it."""
    read = store.read("similar", [item_id])
    raw = read.values.get(item_id)
    if raw is None:
        raise ItemNotFoundError(f"item {item_id!r} is unknown to model {read.model_version}")
    return _result(item_id, read, raw, k, None, False, "item_similarity")


def user_set(store: OnlineStore, user_id: str, set_name: str, k: int = 20) -> Recommendations:
    """The top k of a user's named set in the active slot; SetNotFoundError when it holds none."""
    read = store.read("sets", [user_id])
    raw = _set_list(read.values.get(user_id), set_name)
    if raw is None:
        raise SetNotFoundError(f"no set {set_name!r} for user {user_id!r} in model {read.model_version}")
    return _result(user_id, read, raw, k, None, False, "recommendation_set")
