"""The online store interface: two slots (blue/green) of key-value namespaces and one pointer.

Contract every backend implements (see `OnlineStore`):

- A slot is `"blue"` or `"green"`. Each slot holds namespaces (`recs`, `user_features`,
  `popular`, `similar`, `items`, ...) mapping a string key to a JSON-encoded UTF-8 string.
- Each slot has a binding (`SlotInfo`): the model version and snapshot it holds, its state
  (`"empty"` -> `"writing"` -> `"ready"`), and, once sealed, row counts and checksums per namespace.
- The pointer (`Pointer`) names the active slot. Only a `"ready"` slot can become active, and the
  active slot can never be prepared (wiped); so the slot behind the pointer is always complete.
- `read` resolves the pointer once and reads every requested key from that one slot in one
  consistent snapshot: a result never mixes slots or model versions, even during a flip. `aread` is the
  same read for an event loop (the serving API's request path).
- `write_batch` is atomic: a batch is fully visible or not at all. It is refused with
  `StaleWriteError` when the slot is bound to another model version (or to none).
- Backend outages raise `StoreUnavailableError` with a human-readable reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

SLOTS: tuple[str, ...] = ("blue", "green")
NAMESPACES: tuple[str, ...] = ("recs", "user_features", "popular", "similar", "items")
SLOT_STATES: tuple[str, ...] = ("empty", "writing", "ready")

_NAMESPACE_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_CHECKSUM_MOD = 1 << 128


class OnlineStoreError(Exception):
    """Base class of every online-store error."""


class StoreUnavailableError(OnlineStoreError):
    """The backend cannot be reached or read (Redis down, SQLite file unreadable, ...)."""


class NothingDeployedError(StoreUnavailableError):
    """No slot is active yet: nothing has been deployed to this store."""


class StaleWriteError(OnlineStoreError):
    """A write was tagged with a model version the target slot is not bound to."""


class SlotStateError(OnlineStoreError):
    """An operation is not allowed in the slot's current state (e.g. preparing the active slot)."""


@dataclass(frozen=True)
class Pointer:
    """Which slot serves reads, and what it holds."""

    active_slot: str
    model_version: str
    snapshot_id: str
    deployed_at: str


@dataclass(frozen=True)
class SlotInfo:
    """The binding of one slot: version, snapshot, state and (once sealed) counts and checksums."""

    slot: str
    model_version: str | None = None
    snapshot_id: str | None = None
    state: str = "empty"
    written_at: str | None = None
    row_counts: dict[str, int] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)

    @property
    def checksum(self) -> str | None:
        """One checksum over all namespaces (None until sealed)."""
        if self.state != "ready":
            return None
        return combined_checksum(self.checksums)

    def as_dict(self) -> dict:
        """JSON-friendly representation."""
        return {
            "slot": self.slot,
            "model_version": self.model_version,
            "snapshot_id": self.snapshot_id,
            "state": self.state,
            "written_at": self.written_at,
            "row_counts": dict(self.row_counts),
            "checksums": dict(self.checksums),
            "checksum": self.checksum,
        }


@dataclass(frozen=True)
class ReadResult:
    """Values read from one slot; `deployed_at` identifies the flip that made the slot active."""

    slot: str
    model_version: str
    snapshot_id: str
    values: dict[str, str | None]
    extra_values: dict[str, dict[str, str | None]] = field(default_factory=dict)
    deployed_at: str | None = None

    def same_source(self, other: ReadResult) -> bool:
        """True when both results come from the same slot under the same flip."""
        return (self.slot, self.model_version, self.snapshot_id, self.deployed_at) == (
            other.slot,
            other.model_version,
            other.snapshot_id,
            other.deployed_at,
        )


def validate_slot(slot: str) -> str:
    """Return `slot` or raise ValueError if it is not blue/green."""
    if slot not in SLOTS:
        raise ValueError(f"unknown slot {slot!r}; expected one of {SLOTS}")
    return slot


def other_slot(slot: str) -> str:
    """The slot that is not `slot`."""
    return SLOTS[1 - SLOTS.index(validate_slot(slot))]


def validate_namespace(namespace: str) -> str:
    """Return `namespace` or raise ValueError if it is not a lowercase identifier."""
    if not _NAMESPACE_RE.match(namespace):
        raise ValueError(f"invalid namespace {namespace!r}: expected a lowercase identifier")
    return namespace


def check_row(key: object, value: object) -> str:
    """Return `value` if the row is str -> str, else raise TypeError."""
    if not isinstance(key, str) or not isinstance(value, str):
        raise TypeError(f"rows must be str -> str (JSON text), got {type(key).__name__} -> {type(value).__name__}")
    return value


def row_digest(key: str, value: str) -> int:
    """128-bit digest of one row; summed (mod 2^128) into an order-independent checksum."""
    h = hashlib.blake2b(key.encode(), digest_size=16)
    h.update(b"\x00")
    h.update(value.encode())
    return int.from_bytes(h.digest(), "big")


def namespace_checksum(rows: Iterable[tuple[str, str]]) -> tuple[int, str]:
    """Row count and order-independent checksum (hex) of (key, value) rows with unique keys."""
    total = 0
    count = 0
    for key, value in rows:
        total += row_digest(key, value)
        count += 1
    return count, f"{total % _CHECKSUM_MOD:032x}"


def combined_checksum(checksums: Mapping[str, str]) -> str:
    """One checksum over per-namespace checksums (sorted by namespace)."""
    h = hashlib.blake2b(digest_size=16)
    for ns in sorted(checksums):
        h.update(f"{ns}={checksums[ns]};".encode())
    return h.hexdigest()


class OnlineStore(ABC):
    """Two-slot key-value store; see the module docstring for the contract."""

    url: str
    #: True when reads are local and sub-millisecond, so servers may run them on the event loop.
    inline_reads: bool = False

    @abstractmethod
    def prepare_slot(self, slot: str, model_version: str, snapshot_id: str) -> SlotInfo:
        """Wipe `slot` and bind it to (model_version, snapshot_id), state "writing".

        Raises SlotStateError if `slot` is the active slot.
        """

    @abstractmethod
    def write_batch(self, slot: str, namespace: str, rows: Mapping[str, str], model_version: str) -> int:
        """Upsert `rows` into `slot`/`namespace` atomically; return the number of rows written.

        Raises StaleWriteError if the slot is not bound to `model_version`.
        """

    @abstractmethod
    def seal_slot(self, slot: str) -> SlotInfo:
        """Compute row counts and checksums per namespace and mark the slot "ready"."""

    @abstractmethod
    def read(
        self, namespace: str, keys: Sequence[str], *, extra: Mapping[str, Sequence[str]] | None = None
    ) -> ReadResult:
        """Read `keys` of `namespace` (and `extra` namespace -> keys) from the active slot.

        The pointer is resolved once and all values come from one consistent snapshot of that
        slot. Missing keys map to None. Raises NothingDeployedError if no slot is active.
        """

    async def aread(
        self, namespace: str, keys: Sequence[str], *, extra: Mapping[str, Sequence[str]] | None = None
    ) -> ReadResult:
        """`read` for an event loop, same contract. By default `read` itself when reads are inline (local and
        sub-millisecond), else `read` in a worker thread; a backend with an async client overrides it."""
        if self.inline_reads:
            return self.read(namespace, keys, extra=extra)
        return await asyncio.to_thread(self.read, namespace, keys, extra=extra)

    @abstractmethod
    def read_slot(
        self,
        slot: str,
        namespace: str,
        keys: Sequence[str],
        *,
        extra: Mapping[str, Sequence[str]] | None = None,
    ) -> ReadResult:
        """Read keys from a given slot regardless of the pointer (used for verification)."""

    @abstractmethod
    def flip(self, slot: str, expected_model_version: str) -> Pointer:
        """Atomically point reads at `slot`; it must be "ready" and bound to the expected version.

        Raises SlotStateError otherwise. The other slot is left intact.
        """

    @abstractmethod
    def pointer(self) -> Pointer | None:
        """The current pointer, or None if nothing was ever deployed."""

    @abstractmethod
    def slot_info(self, slot: str) -> SlotInfo:
        """The binding of one slot."""

    def describe(self) -> dict:
        """Pointer and both slots' bindings as a JSON-friendly dict."""
        pointer = self.pointer()
        return {
            "backend": type(self).__name__,
            "pointer": None if pointer is None else pointer.__dict__.copy(),
            "slots": {slot: self.slot_info(slot).as_dict() for slot in SLOTS},
        }

    @abstractmethod
    def forget_keys(self, namespaces: Sequence[str], keys: Sequence[str]) -> int:
        """Delete `keys` from `namespaces` in both slots, whatever their state (forgetting a user); return how
        many values were deleted. The sealed row counts and checksums are left as they were deployed."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""

    async def aclose(self) -> None:
        """Release connections, those of `aread` included (call it on the loop that read)."""
        self.close()

    def __enter__(self) -> OnlineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
