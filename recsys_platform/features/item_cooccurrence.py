"""SAR-style item co-occurrence: the `similar_items` table ("more like this") of the online store.

The model is fitted on a polars frame of ``(user_id, item_id, weight)`` rows (duplicate pairs are
summed) and answers ``similar_items(item_ids, k)`` and ``recommend(user_ids, k, exclude_seen=True)``
with ranked frames (rank 1 = best, ties broken by item index so output is deterministic). The
recommendation models themselves are the candidate sources of `recsys_platform.model.sources`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
import scipy.sparse as sp

logger = logging.getLogger(__name__)

Similarity = Literal["jaccard", "lift", "cosine"]
_BATCH_USERS = 2048


@dataclass
class InteractionMatrix:
    """A user x item CSR matrix with the id <-> index maps that produced it."""

    matrix: sp.csr_matrix
    user_ids: pl.Series
    item_ids: pl.Series

    @property
    def user_index(self) -> dict:
        """Map user id -> row index."""
        return dict(zip(self.user_ids.to_list(), range(len(self.user_ids)), strict=True))

    @property
    def item_index(self) -> dict:
        """Map item id -> column index."""
        return dict(zip(self.item_ids.to_list(), range(len(self.item_ids)), strict=True))


def build_interaction_matrix(interactions: pl.DataFrame, binary: bool = False) -> InteractionMatrix:
    """Encode (user_id, item_id[, weight]) rows as a float32 CSR matrix with sorted id maps."""
    frame = interactions
    if "weight" not in frame.columns:
        frame = frame.with_columns(weight=pl.lit(1.0))
    pairs = frame.group_by("user_id", "item_id").agg(pl.col("weight").sum())
    user_ids = pairs.get_column("user_id").unique().sort()
    item_ids = pairs.get_column("item_id").unique().sort()
    users = pl.DataFrame({"user_id": user_ids, "u": np.arange(len(user_ids), dtype=np.int32)})
    items = pl.DataFrame({"item_id": item_ids, "i": np.arange(len(item_ids), dtype=np.int32)})
    coded = pairs.join(users, on="user_id").join(items, on="item_id")
    values = np.ones(coded.height, np.float32) if binary else coded["weight"].to_numpy().astype(np.float32)
    matrix = sp.csr_matrix(
        (values, (coded["u"].to_numpy(), coded["i"].to_numpy())),
        shape=(len(user_ids), len(item_ids)),
        dtype=np.float32,
    )
    matrix.sort_indices()
    return InteractionMatrix(matrix=matrix, user_ids=user_ids, item_ids=item_ids)


def _encode(ids: pl.Series, vocabulary: pl.Series) -> np.ndarray:
    """Map ids to indices in vocabulary; -1 for unknown ids."""
    lookup = pl.DataFrame({"id": vocabulary, "idx": np.arange(len(vocabulary), dtype=np.int64)})
    query = pl.DataFrame({"id": ids.cast(vocabulary.dtype, strict=False)})
    return query.join(lookup, on="id", how="left", maintain_order="left")["idx"].fill_null(-1).to_numpy()


def top_k_from_scores(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (indices, values) of the k best columns per row, best first, ties by column index."""
    k = min(k, scores.shape[1])
    if k <= 0:
        return np.empty((scores.shape[0], 0), np.int64), np.empty((scores.shape[0], 0), scores.dtype)
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(vals, order, axis=1)


class _MatrixRecommender:
    """Shared batching, seen-item masking and top-k assembly for score-matrix models."""

    data: InteractionMatrix
    # Item-item scores of 0 mean "no evidence at all"; such items are not recommended.
    drop_nonpositive: bool = False

    @property
    def user_index(self) -> dict:
        """Map user id -> row index."""
        return self.data.user_index

    @property
    def item_index(self) -> dict:
        """Map item id -> column index."""
        return self.data.item_index

    @property
    def n_items(self) -> int:
        """Number of items in the catalogue the model knows."""
        return len(self.data.item_ids)

    def _score_rows(self, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def score_users(self, rows: np.ndarray) -> np.ndarray:
        """Dense float32 score matrix (len(rows) x n_items) for known user row indices."""
        return np.asarray(self._score_rows(rows), dtype=np.float32)

    def recommend(self, user_ids: Iterable | pl.Series | None, k: int, exclude_seen: bool = True) -> pl.DataFrame:
        """Top-k items per user as [user_id, item_id, score, rank]; all known users when user_ids is None."""
        if user_ids is None:
            rows = np.arange(len(self.data.user_ids))
        else:
            series = user_ids if isinstance(user_ids, pl.Series) else pl.Series(list(user_ids))
            rows = _encode(series.unique(maintain_order=True), self.data.user_ids)
            rows = rows[rows >= 0]
        out_rows, out_items, out_scores = [], [], []
        for start in range(0, len(rows), _BATCH_USERS):
            batch = rows[start : start + _BATCH_USERS]
            scores = self.score_users(batch)
            if self.drop_nonpositive:
                scores[scores <= 0] = -np.inf
            if exclude_seen:
                seen = self.data.matrix[batch]
                scores[np.repeat(np.arange(len(batch)), np.diff(seen.indptr)), seen.indices] = -np.inf
            idx, vals = top_k_from_scores(scores, k)
            out_rows.append(np.repeat(batch, idx.shape[1]))
            out_items.append(idx.ravel())
            out_scores.append(vals.ravel())
        return self._assemble(out_rows, out_items, out_scores, k)

    def _assemble(self, rows: list, items: list, scores: list, k: int) -> pl.DataFrame:
        width = min(k, self.n_items)
        if not rows:
            return pl.DataFrame(
                {"user_id": self.data.user_ids.head(0), "item_id": self.data.item_ids.head(0)}
            ).with_columns(score=pl.lit(0.0, pl.Float32), rank=pl.lit(0, pl.UInt32))
        row_arr, item_arr, score_arr = np.concatenate(rows), np.concatenate(items), np.concatenate(scores)
        rank = np.tile(np.arange(1, width + 1, dtype=np.uint32), len(row_arr) // max(width, 1))
        keep = np.isfinite(score_arr)
        return pl.DataFrame(
            {
                "user_id": self.data.user_ids.gather(row_arr[keep]),
                "item_id": self.data.item_ids.gather(item_arr[keep]),
                "score": score_arr[keep].astype(np.float32),
                "rank": rank[keep],
            }
        )


class ItemItemModel(_MatrixRecommender):
    """SAR-style item-to-item model: user affinity row times an item similarity matrix."""

    drop_nonpositive = True

    def __init__(self, data: InteractionMatrix, similarity: np.ndarray, kind: str):
        self.data = data
        self.similarity = similarity
        self.kind = kind

    def _score_rows(self, rows: np.ndarray) -> np.ndarray:
        return self.data.matrix[rows] @ self.similarity

    def similar_items(self, item_ids: Iterable | pl.Series, k: int) -> pl.DataFrame:
        """Top-k most similar other items per item as [item_id, similar_item_id, score, rank]."""
        series = item_ids if isinstance(item_ids, pl.Series) else pl.Series(list(item_ids))
        cols = _encode(series.unique(maintain_order=True), self.data.item_ids)
        cols = cols[cols >= 0]
        sims = self.similarity[cols].copy()
        sims[np.arange(len(cols)), cols] = -np.inf
        sims[sims <= 0] = -np.inf
        idx, vals = top_k_from_scores(sims, k)
        width = idx.shape[1]
        keep = np.isfinite(vals.ravel())
        return pl.DataFrame(
            {
                "item_id": self.data.item_ids.gather(np.repeat(cols, width)[keep]),
                "similar_item_id": self.data.item_ids.gather(idx.ravel()[keep]),
                "score": vals.ravel()[keep].astype(np.float32),
                "rank": np.tile(np.arange(1, width + 1, dtype=np.uint32), len(cols))[keep],
            }
        )


def fit_item_cooccurrence(
    interactions: pl.DataFrame, similarity: Similarity = "jaccard", min_cooccurrence: int = 1
) -> ItemItemModel:
    """Fit a SAR-style co-occurrence model; user affinity is the summed interaction weight."""
    data = build_interaction_matrix(interactions)
    binary = (data.matrix > 0).astype(np.float32)
    cooc = (binary.T @ binary).toarray().astype(np.float32)
    cooc[cooc < min_cooccurrence] = 0.0
    diag = np.diag(cooc).copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        if similarity == "jaccard":
            sim = cooc / (diag[:, None] + diag[None, :] - cooc)
        elif similarity == "lift":
            sim = cooc / (diag[:, None] * diag[None, :])
        elif similarity == "cosine":
            sim = cooc / np.sqrt(diag[:, None] * diag[None, :])
        else:
            raise ValueError(f"unknown similarity {similarity!r}; expected jaccard, lift or cosine")
    sim = np.nan_to_num(sim, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
    logger.info("item co-occurrence (%s) fitted on %d items", similarity, sim.shape[0])
    return ItemItemModel(data, sim, similarity)
