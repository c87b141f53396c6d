"""EASE item weights fitted once per batch `interactions` table, reused by every refresh run.

Fitting EASE inverts an items x items matrix (about a second for a thousand items on two cores);
refreshes run every few seconds, so the weights are cached as a file keyed by the fingerprint of
the batch table. Touched users are scored with their *current* interaction rows (batch + new
events) against the cached weights, so the collaborative source sees the newest plays.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from pathlib import Path

import numpy as np
import polars as pl

from recsys_platform.collaborative import EaseModel, InteractionMatrix, build_interaction_matrix, fit_ease

logger = logging.getLogger(__name__)

EASE_L2 = 200.0  # the value candidates.build_context fits with


def _positive(interactions: pl.DataFrame) -> pl.DataFrame:
    return interactions.filter(pl.col("weight") > 0).select("user_id", "item_id", "weight")


def cached_ease_weights(
    batch: pl.DataFrame, fingerprint: str | None, cache_dir: Path | None
) -> tuple[np.ndarray, pl.Series] | None:
    """(item weights, item ids) of EASE fitted on the batch interactions, from the file cache when possible."""
    path = None
    if fingerprint and cache_dir is not None:
        digest = hashlib.sha256(f"{fingerprint}|{EASE_L2}".encode()).hexdigest()[:16]
        path = cache_dir / f"ease-{digest}.npz"
        if path.exists():
            with np.load(path, allow_pickle=False) as npz:
                return npz["weights"], pl.Series("item_id", npz["item_ids"].astype(str))
    positive = _positive(batch)
    if positive.height == 0:
        return None
    model = fit_ease(positive, l2=EASE_L2, binary=True)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp.npz")
        np.savez(tmp, weights=model.weights, item_ids=np.asarray(model.data.item_ids.to_list(), dtype=str))
        os.replace(tmp, path)
        logger.info("cached EASE weights (%d items) at %s", len(model.data.item_ids), path)
    return model.weights, model.data.item_ids


def ease_for_users(weights: np.ndarray, item_ids: pl.Series, mine: pl.DataFrame) -> EaseModel | None:
    """An EASE model over the touched users' current rows and the cached weights (unknown items ignored)."""
    positive = _positive(mine).join(pl.DataFrame({"item_id": item_ids}), on="item_id", how="semi")
    if positive.height == 0:
        return None
    rows = build_interaction_matrix(positive, binary=True)
    # Re-index the users' columns onto the cached item order.
    lookup = dict(zip(item_ids.to_list(), range(len(item_ids)), strict=True))
    col_map = np.array([lookup[i] for i in rows.item_ids.to_list()], dtype=np.int64)
    coo = rows.matrix.tocoo()
    import scipy.sparse as sp

    matrix = sp.csr_matrix(
        (coo.data, (coo.row, col_map[coo.col])), shape=(rows.matrix.shape[0], len(item_ids)), dtype=np.float32
    )
    return EaseModel(InteractionMatrix(matrix=matrix, user_ids=rows.user_ids, item_ids=item_ids), weights, EASE_L2)


def file_fingerprint(path: str) -> str | None:
    """Identity of a lake file (path, size, mtime) for cache keys; None if it cannot be stat-ed."""
    try:
        if "://" in path:
            from upath import UPath

            info = UPath(path).stat()
            return f"{path}|{info.st_size}|{getattr(info, 'st_mtime', '')}"
        st = os.stat(path)
        return f"{path}|{st.st_size}|{st.st_mtime_ns}"
    except (OSError, NotImplementedError):
        return None
