"""Candidates and the ranker's features for a block of users: one builder for training, evaluation and serving.

For each user of a `Profiles` block, every fitted source scores the whole catalogue; the union of
the sources' top `depth` items (minus what may not be recommended) are the candidates. Each
candidate gets the features `FEATURES` names, in that order, from the source scores and from
`ItemStats` (per-item facts fitted with the sources). Nothing else builds ranker features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from recsys_platform.model.history import DAY_S, PairHistory
from recsys_platform.model.profiles import Profiles
from recsys_platform.model.sources import SOURCE_NAMES

MISSING_RANK = 10_000.0

ITEM_FEATURES = ("item_users_log", "item_days_known", "item_mean_age_days")
USER_FEATURES = ("user_items_log", "user_days_since_last", "user_span_days")
PAIR_FEATURES = ("pair_available_days", "pair_time_gap_days", "n_sources")
FEATURES: tuple[str, ...] = (
    *[f"score_{s}" for s in SOURCE_NAMES],
    *[f"rank_{s}" for s in SOURCE_NAMES],
    *ITEM_FEATURES,
    *USER_FEATURES,
    *PAIR_FEATURES,
)


@dataclass
class ItemStats:
    """Per-item facts as of the cutoff (aligned with the vocabulary's items)."""

    users: np.ndarray  # distinct users
    first_s: np.ndarray  # first interaction by anyone (NaN: never)
    mean_s: np.ndarray  # mean interaction time (NaN: never)
    recommendable: np.ndarray  # bool: may be recommended at all (released, known)

    @classmethod
    def fit(cls, history: PairHistory, recommendable: np.ndarray | None = None) -> ItemStats:
        """Counts and times from `history`; every item recommendable unless a mask is given."""
        n = history.vocab.n_items
        users = history.item_counts()
        sums = np.bincount(history.item, weights=history.first_s, minlength=n)
        mean = np.where(users > 0, sums / np.maximum(users, 1), np.nan)
        rec = np.ones(n, bool) if recommendable is None else np.asarray(recommendable, bool)
        return cls(users, history.item_first_s(), mean, rec)


@dataclass
class CandidateBlock:
    """The candidates of a block of users: block row, item column and the feature matrix (FEATURES order)."""

    rows: np.ndarray  # block-local row
    items: np.ndarray
    features: np.ndarray  # float32 (n_pairs, len(FEATURES))

    def column(self, name: str) -> np.ndarray:
        """One feature column."""
        return self.features[:, FEATURES.index(name)]


def _ranks(scores: np.ndarray) -> np.ndarray:
    """1-based rank of each column within its row (ties by column), MISSING_RANK where -inf."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty(scores.shape, np.float32)
    np.put_along_axis(ranks, order, np.arange(1, scores.shape[1] + 1, dtype=np.float32)[None, :], axis=1)
    return np.where(np.isfinite(scores), ranks, MISSING_RANK)


def candidate_block(
    sources: dict, stats: ItemStats, profiles: Profiles, depth: int, exclude_seen: bool, blocked=None
) -> CandidateBlock:
    """Candidates (union of every source's top `depth`) and their features for the users of `profiles`.

    Items that are not recommendable, items the user has seen (when `exclude_seen`) and the
    (row, item) pairs `blocked` marks (a bool block-rows x items array) are never candidates."""
    n, m = len(profiles), len(stats.users)
    allowed = np.broadcast_to(stats.recommendable, (n, m)).copy()
    if exclude_seen:
        r, c = profiles.seen_mask_rows_cols()
        allowed[r, c] = False
    if blocked is not None:
        allowed &= ~blocked
    chosen = np.zeros((n, m), bool)
    scores, ranks = {}, {}
    for name in SOURCE_NAMES:
        s = sources[name].score(profiles)
        s = np.where(allowed, s, -np.inf).astype(np.float32)
        rk = _ranks(s)
        chosen |= rk <= depth
        scores[name], ranks[name] = s, rk
    rows, items = np.nonzero(chosen & allowed)
    cols: dict[str, np.ndarray] = {}
    for name in SOURCE_NAMES:
        s = scores[name][rows, items]
        cols[f"score_{name}"] = np.where(np.isfinite(s), s, np.nan)
        cols[f"rank_{name}"] = ranks[name][rows, items]
    cols["n_sources"] = sum((cols[f"rank_{s}"] <= depth).astype(np.float32) for s in SOURCE_NAMES)
    cut = profiles.cutoff_s
    cols["item_users_log"] = np.log1p(stats.users[items])
    cols["item_days_known"] = (cut - stats.first_s[items]) / DAY_S
    cols["item_mean_age_days"] = (cut - stats.mean_s[items]) / DAY_S
    user_items = np.asarray(profiles.seen.sum(axis=1)).ravel()
    cols["user_items_log"] = np.log1p(user_items[rows])
    cols["user_days_since_last"] = ((cut - profiles.last_s) / DAY_S)[rows]
    cols["user_span_days"] = ((profiles.last_s - profiles.first_s) / DAY_S)[rows]
    cols["pair_available_days"] = (profiles.last_s[rows] - stats.first_s[items]) / DAY_S
    user_mean = _user_mean_time(profiles)
    cols["pair_time_gap_days"] = (stats.mean_s[items] - user_mean[rows]) / DAY_S
    matrix = np.empty((len(rows), len(FEATURES)), np.float32)
    for k, name in enumerate(FEATURES):
        matrix[:, k] = cols[name]
    return CandidateBlock(rows, items, matrix)


def _user_mean_time(profiles: Profiles) -> np.ndarray:
    """Mean time of each user's interactions (from the age matrix; NaN without any)."""
    age = profiles.age_days
    n = np.diff(age.indptr)
    sums = np.bincount(np.repeat(np.arange(len(n)), n), weights=age.data, minlength=len(n))
    mean_age = np.where(n > 0, sums / np.maximum(n, 1), np.nan)
    return profiles.cutoff_s - mean_age * DAY_S


def frame_of(block: CandidateBlock, profiles: Profiles, vocab) -> pl.DataFrame:
    """The block's pairs as [user_id, item_id] (for joins with labels)."""
    return pl.DataFrame(
        {
            "user_id": vocab.user_ids.gather(profiles.rows[block.rows]),
            "item_id": vocab.item_ids.gather(block.items),
        }
    )
