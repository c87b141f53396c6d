"""Two-slot (blue-green) online feature store: one narrow interface, SQLite and Redis backends."""

from __future__ import annotations

from recsys_platform.schemas import GLOBAL_SEGMENT
from recsys_platform.serve.online_store.base import (
    NAMESPACES,
    SLOTS,
    NothingDeployedError,
    OnlineStore,
    OnlineStoreError,
    Pointer,
    ReadResult,
    SlotInfo,
    SlotStateError,
    StaleWriteError,
    StoreUnavailableError,
    other_slot,
)
from recsys_platform.sqlite_client import SQLITE_SCHEME, sqlite_path

__all__ = [
    "GLOBAL_SEGMENT",
    "NAMESPACES",
    "SLOTS",
    "NothingDeployedError",
    "OnlineStore",
    "OnlineStoreError",
    "Pointer",
    "ReadResult",
    "SlotInfo",
    "SlotStateError",
    "StaleWriteError",
    "StoreUnavailableError",
    "open_online_store",
    "other_slot",
]


def open_online_store(url: str, create: bool = True) -> OnlineStore:
    """Open the store at `sqlite:///abs/path.sqlite` or `redis://host:port/db[?prefix=name]`.

    `create=False` (readers: the API, `recsys deploy`) makes a SQLite file that does not exist an error on
    first use instead of a new empty store: a mistyped path must not pass for a store with nothing deployed."""
    if url.startswith(SQLITE_SCHEME):
        from recsys_platform.serve.online_store.sqlite import SQLiteOnlineStore

        return SQLiteOnlineStore(sqlite_path(url), create=create)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from recsys_platform.serve.online_store.redis import RedisOnlineStore

        return RedisOnlineStore(url)
    raise ValueError(f"unsupported online store URL {url!r}: expected sqlite:///<abs path> or redis://host:port/db")
