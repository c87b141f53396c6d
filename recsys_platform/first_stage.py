"""Two-stage batch scoring over integer-indexed users and items (numpy/scipy, no per-pair joins).

A 500-deep list for a million users cannot go through the ranker's polars candidate joins and
LightGBM row by row (~375 candidates per user -> ~375M rows). So the batch scorer works as
production recommenders do:

1. First stage: EASE scores from the user's positive history (sparse row x dense item-item
   weights) plus weighted recent popularity and the user's own replays; unreleased items, kids
   items for households without kids and items completed in the last `exclude_completed_days`
   are masked; the best `items_per_user` items per user come from a numpy argpartition.
2. Second stage: the first `rerank_depth` of them are re-ranked by the LightGBM ranker on the
   ranker's own features for exactly those (user, item) pairs (`pair_features.PairFeatures`,
   same definitions as `ranking.PointInTime.ranker_frame`, parity tested); the tail keeps its
   first-stage order below the head.

Users are rows of the sorted user table, items columns of the sorted catalogue, so item index
order is item-id order (the tie-break every ranked list here uses).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys_platform.candidates import POPULARITY_DAYS
from recsys_platform.collaborative import EaseModel
from recsys_platform.ranking import recently_completed

logger = logging.getLogger(__name__)

TS = pl.Datetime("us", "UTC")


def index_of(ids: pl.Series, vocabulary: pl.Series) -> np.ndarray:
    """Position of each id in `vocabulary` (int64), -1 for ids it does not hold."""
    lookup = pl.DataFrame({"_id": vocabulary, "_idx": np.arange(vocabulary.len(), dtype=np.int64)})
    query = pl.DataFrame({"_id": ids.cast(vocabulary.dtype, strict=False)})
    return query.join(lookup, on="_id", how="left", maintain_order="left")["_idx"].fill_null(-1).to_numpy()


def pair_matrix(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """A CSR matrix from unique (row, col) pairs (no duplicate summing, so values stay bit-exact)."""
    m = sp.csr_matrix((values, (rows, cols)), shape=shape)
    m.sort_indices()
    return m


def exact_top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, values) of the k best columns per row ordered by (score desc, column asc), ties at the
    k-th place resolved by column index too (argpartition alone picks an arbitrary tied column)."""
    n, m = scores.shape
    k = min(k, m)
    if k <= 0 or n == 0:
        return np.zeros((n, 0), np.int64), np.zeros((n, 0), scores.dtype)
    if k < m:
        kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]
        chosen = scores >= kth
        extra = chosen.sum(axis=1) - k  # tied columns at the k-th value beyond k: drop the highest-indexed
        ambiguous = np.flatnonzero(extra > 0)
        if ambiguous.size:
            sub = scores[ambiguous]
            tied = sub == kth[ambiguous]
            need = k - (sub > kth[ambiguous]).sum(axis=1)
            chosen[ambiguous] = (sub > kth[ambiguous]) | (
                tied & (np.cumsum(tied, axis=1, dtype=np.int32) <= need[:, None])
            )
        idx = np.nonzero(chosen)[1].reshape(n, k)
    else:
        idx = np.broadcast_to(np.arange(m), (n, m)).copy()
    vals = np.take_along_axis(scores, idx, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")  # idx ascends within a row, so ties keep column order
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(vals, order, axis=1)


@dataclass
class Catalog:
    """Integer coding of users and items shared by both stages."""

    user_ids: pl.Series  # sorted; position = user index
    item_ids: pl.Series  # sorted; position = item index
    released: np.ndarray  # bool per item: release_date <= cutoff date
    kids_item: np.ndarray  # bool per item
    family: np.ndarray  # bool per user: household with kids

    @classmethod
    def build(cls, items: pl.DataFrame, users: pl.DataFrame, cutoff: datetime) -> Catalog:
        """Sorted ids and the masks every list applies."""
        items = items.unique("item_id").sort("item_id")
        users = users.unique("user_id").sort("user_id")
        released = items.select(pl.col("release_date") <= pl.lit(cutoff, dtype=TS).dt.date()).to_series()
        return cls(
            user_ids=users["user_id"],
            item_ids=items["item_id"],
            released=released.fill_null(False).to_numpy(),
            kids_item=items["is_kids"].fill_null(False).to_numpy(),
            family=(users["household_type"] == "family_with_kids").fill_null(False).to_numpy(),
        )

    @property
    def n_users(self) -> int:
        """Number of users."""
        return self.user_ids.len()

    @property
    def n_items(self) -> int:
        """Number of items."""
        return self.item_ids.len()

    def user_index(self, user_ids: pl.Series) -> np.ndarray:
        """User indices of `user_ids` (-1 for users not in the user table)."""
        return index_of(user_ids, self.user_ids)

    def item_index(self, item_ids: pl.Series) -> np.ndarray:
        """Item indices of `item_ids` (-1 for items not in the catalogue)."""
        return index_of(item_ids, self.item_ids)

    def coded_pairs(self, frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, pl.DataFrame]:
        """(user index, item index, rest of the frame) for rows of `frame` whose user and item are known."""
        u, i = self.user_index(frame["user_id"]), self.item_index(frame["item_id"])
        keep = (u >= 0) & (i >= 0)
        return u[keep], i[keep], frame.filter(pl.Series(keep))


@dataclass
class FirstStage:
    """EASE + popularity scores over the whole catalogue with the masks applied."""

    catalog: Catalog
    ease: EaseModel | None
    ease_row: np.ndarray  # per user: row of the EASE matrix, -1 when EASE does not know the user
    ease_col: np.ndarray  # per EASE column: item index
    popularity: np.ndarray  # per item: recent distinct users / max, in [0, 1]
    recent: sp.csr_matrix  # users x items, 1 where completed within the exclusion window
    popularity_weight: float
    replay: sp.csr_matrix | None = None  # users x items: the user's positive weight on an item / their largest
    replay_weight: float = 0.0

    def with_replays(self, history_weights: sp.csr_matrix, weight: float) -> FirstStage:
        """Add `weight` x the user's own positive weight on an item (scaled to their largest) to the score:
        repeat listening is a large share of what users come back for, and EASE's zero diagonal ignores it."""
        top = history_weights.max(axis=1).toarray().ravel()
        scale = sp.diags(np.where(top > 0, 1.0 / np.where(top > 0, top, 1.0), 0.0))
        self.replay, self.replay_weight = (scale @ history_weights).astype(np.float32).tocsr(), weight
        return self

    @classmethod
    def build(
        cls,
        catalog: Catalog,
        history: pl.DataFrame,
        ease: EaseModel | None,
        cutoff: datetime,
        exclude_completed_days: int,
        popularity_weight: float,
    ) -> FirstStage:
        """Code the EASE model onto the catalogue, count recent popularity, collect recent completions."""
        cut = pl.lit(cutoff, dtype=TS)
        pop = (
            history.filter((pl.col("weight") > 0) & (pl.col("event_time") >= cut - pl.duration(days=POPULARITY_DAYS)))
            .group_by("item_id")
            .agg(n=pl.col("user_id").n_unique())
        )
        counts = np.zeros(catalog.n_items, np.float32)
        idx = catalog.item_index(pop["item_id"])
        counts[idx[idx >= 0]] = pop["n"].to_numpy()[idx >= 0]
        ru, ri, _ = catalog.coded_pairs(recently_completed(history, cutoff, exclude_completed_days))
        shape = (catalog.n_users, catalog.n_items)
        if ease is not None:
            ease_row = index_of(catalog.user_ids, ease.data.user_ids)
            ease_col = catalog.item_index(ease.data.item_ids)
        else:
            ease_row, ease_col = np.full(catalog.n_users, -1, np.int64), np.zeros(0, np.int64)
        return cls(
            catalog=catalog,
            ease=ease,
            ease_row=ease_row,
            ease_col=ease_col,
            popularity=counts / max(float(counts.max(initial=0.0)), 1.0),
            recent=pair_matrix(ru, ri, np.ones(len(ru), np.float32), shape),
            popularity_weight=popularity_weight,
        )

    def ease_scores(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mask of users EASE knows, their raw EASE scores over EASE's own columns)."""
        er = self.ease_row[rows]
        known = er >= 0
        if self.ease is None or not known.any():
            return known, np.zeros((int(known.sum()), len(self.ease_col)), np.float32)
        return known, self.ease.score_users(er[known])

    def scores(self, rows: np.ndarray, known: np.ndarray, ease_scores: np.ndarray) -> np.ndarray:
        """First-stage score of every catalogue item for the users `rows` (-inf = never recommended)."""
        cat = self.catalog
        out = np.broadcast_to(self.popularity_weight * self.popularity, (len(rows), cat.n_items)).copy()
        if ease_scores.size:
            out[np.ix_(np.flatnonzero(known), self.ease_col)] += ease_scores
        if self.replay is not None and self.replay_weight:
            mine = self.replay[rows]
            r = np.repeat(np.arange(len(rows)), np.diff(mine.indptr))
            out[r, mine.indices] += self.replay_weight * mine.data
        out[:, ~cat.released] = -np.inf
        no_kids = ~cat.family[rows]
        out[np.ix_(np.flatnonzero(no_kids), np.flatnonzero(cat.kids_item))] = -np.inf
        done = self.recent[rows]
        out[np.repeat(np.arange(len(rows)), np.diff(done.indptr)), done.indices] = -np.inf
        return out


def rerank_head(
    idx: np.ndarray, first: np.ndarray, model_score: np.ndarray, depth: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each user's list: the first `depth` columns re-ordered by model score (ties by item index), then
    the tail in first-stage order. `idx`/`first` are (users x k) first-stage lists, best first, -inf
    padded; `model_score` is (users x depth). Returns flat (row, item, rank, score) without padding.
    The tail's score is its first-stage score shifted just below the user's lowest head score, so
    score decreases with rank along the whole list."""
    n, k = idx.shape
    depth = min(depth, k)
    valid = np.isfinite(first)
    score = first.astype(np.float64)
    if depth > 0:
        head_valid = valid[:, :depth]
        ms = np.where(head_valid, model_score, -np.inf)
        head_idx = idx[:, :depth]
        order = np.lexsort((head_idx, -ms), axis=1)  # padding (-inf) sorts last
        idx = idx.copy()
        idx[:, :depth] = np.take_along_axis(head_idx, order, axis=1)
        ms = np.take_along_axis(ms, order, axis=1)
        head_min = np.where(head_valid.any(axis=1), np.where(np.isfinite(ms), ms, np.inf).min(axis=1), 0.0)
        if depth < k:
            tail_top = first[:, depth].astype(np.float64)
            shift = np.where(np.isfinite(tail_top), head_min - 1e-6 - tail_top, 0.0)
            score[:, depth:] += shift[:, None]
        score[:, :depth] = ms
    rows = np.repeat(np.arange(n), k).reshape(n, k)
    rank = np.broadcast_to(np.arange(1, k + 1), (n, k))
    return rows[valid], idx[valid], rank[valid], score[valid]


def frame_of(catalog: Catalog, user_rows: np.ndarray, items: np.ndarray, rank: np.ndarray, score: Any) -> pl.DataFrame:
    """[user_id, rank, item_id, score] from global user indices and item indices."""
    return pl.DataFrame(
        {
            "user_id": catalog.user_ids.gather(user_rows),
            "rank": rank.astype(np.int64),
            "item_id": catalog.item_ids.gather(items),
            "score": np.asarray(score, dtype=np.float64),
        }
    )
