"""Stable hashing of ids: the same value on every machine, process and library version."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np


def sha256_uint64(values: Iterable[str], salt: str = "") -> np.ndarray:
    """First 8 bytes of sha256(salt + value) as unsigned 64-bit integers."""
    return np.fromiter(
        (int.from_bytes(hashlib.sha256(f"{salt}{v}".encode()).digest()[:8], "big") for v in values),
        dtype=np.uint64,
    )


def unit_interval(values: Iterable[str], salt: str = "") -> np.ndarray:
    """A stable uniform number in [0, 1) per value (53 bits of its sha256)."""
    return (sha256_uint64(values, salt) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
