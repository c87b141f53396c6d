"""Candidates and the ranker's features for a block of users: one builder for training, evaluation and serving.

For each user of a `Profiles` block, every fitted source scores the whole catalogue; the union of
the sources' top `depth` items (minus what may not be recommended) are the candidates. Each
candidate gets the features `FEATURES` names, in that order, from the source scores, per-item
facts (`ItemStats`) and metadata (`Catalogue`). Nothing else builds ranker features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys_platform.model.catalogue import FACETS, Catalogue
from recsys_platform.model.history import DAY_S, PairHistory
from recsys_platform.model.profiles import Profiles
from recsys_platform.model.sources import SOURCE_NAMES

MISSING_RANK = 10_000.0

SOURCE_FEATURES: tuple[str, ...] = (
    *[f"score_{s}" for s in SOURCE_NAMES],
    *[f"z_{s}" for s in SOURCE_NAMES],  # the score as a z-score over the user's candidates (scale-free)
    *[f"rank_{s}" for s in SOURCE_NAMES],
)
# Time features are relative to the user's own latest interaction, never to the cutoff: in training a user
# is held out at their next event, in serving they are scored "now" after any absence, and a feature of the
# cutoff (days since last seen, item age at the cutoff) would differ between the two for the same history.
ITEM_FEATURES = (
    "item_users_log",
    "item_completion_rate",
    "item_bounce_rate",
    "item_duration_min",
    "item_level",
    "item_type_code",
)
# user_days_inactive is measured to the end of the data, not to the user's cutoff: in a per-user window a
# user's cutoff is their next event (unknowable when serving); the data's end is known in every window.
USER_FEATURES = ("user_items_log", "user_span_days", "user_completion_rate", "user_days_inactive")
PAIR_FEATURES = (
    "pair_available_days",
    "pair_time_gap_days",
    "aff_topic",
    "aff_narrator",
    "aff_content_type",
    "level_gap",
    "ui_plays",
    "ui_days_since",
    "n_sources",
)
FEATURES: tuple[str, ...] = (*SOURCE_FEATURES, *ITEM_FEATURES, *USER_FEATURES, *PAIR_FEATURES)
CATEGORICAL_FEATURES: tuple[str, ...] = ("item_type_code",)


@dataclass
class ItemStats:
    """Per-item facts as of the cutoff (aligned with the vocabulary's items)."""

    users: np.ndarray  # distinct users
    first_s: np.ndarray  # first interaction by anyone (NaN: never)
    mean_s: np.ndarray  # mean first-interaction time (NaN: never)
    completion_rate: np.ndarray  # (completions + 1) / (pairs + 2)
    bounce_rate: np.ndarray  # (bounced pairs + 0.5) / (pairs + 2)

    @classmethod
    def fit(cls, history: PairHistory) -> ItemStats:
        """Counts, rates and times from `history`."""
        n = history.vocab.n_items
        users = history.item_counts()
        sums = np.bincount(history.item, weights=history.first_s, minlength=n)
        done = np.bincount(history.item, weights=(history.completes > 0), minlength=n)
        bounced = np.bincount(history.item, weights=(history.bounces > 0), minlength=n)
        return cls(
            users=users,
            first_s=history.item_first_s(),
            mean_s=np.where(users > 0, sums / np.maximum(users, 1), np.nan),
            completion_rate=(done + 1.0) / (users + 2.0),
            bounce_rate=(bounced + 0.5) / (users + 2.0),
        )


@dataclass
class CandidateBlock:
    """The candidates of a block of users: block row, item column and the feature matrix (FEATURES order)."""

    rows: np.ndarray  # block-local row, ascending
    items: np.ndarray
    features: np.ndarray  # float32 (n_pairs, len(FEATURES))

    def column(self, name: str) -> np.ndarray:
        """One feature column."""
        return self.features[:, FEATURES.index(name)]

    def __len__(self) -> int:
        return len(self.rows)


def _ranks_of(scores: np.ndarray, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
    """1-based rank of each (row, item) within its row: 1 + how many of the row's scores are higher (ties
    share the best rank); MISSING_RANK where the score is -inf. `rows` ascending (as np.nonzero gives them).
    One sort per row and a binary search per candidate, instead of an argsort of every row's whole ranking."""
    neg = np.sort(-scores, axis=1)  # each row's scores, best first, negated (ascending)
    value = -scores[rows, items]
    rank = np.empty(len(rows), np.float32)
    bounds = np.r_[0, np.flatnonzero(np.diff(rows)) + 1, len(rows)]
    for a, b in zip(bounds[:-1], bounds[1:], strict=False):
        if b > a:
            rank[a:b] = np.searchsorted(neg[rows[a]], value[a:b], side="left") + 1
    return np.where(np.isfinite(value), rank, MISSING_RANK)


def _top_depth(scores: np.ndarray, depth: int) -> np.ndarray:
    """bool mask of each row's `depth` best finite scores: at most `depth` per row (ties at the boundary are
    broken by a per-row partition, the same whatever else is in the block). A row whose finite scores are all
    equal and more than `depth` contributes nothing: the source cannot tell those items apart (EASE or kNN
    for a user with no history), and taking all of them would make every item a candidate."""
    n_rows, n_items = scores.shape
    k = min(depth, n_items)
    if k <= 0 or n_rows == 0:
        return np.zeros(scores.shape, bool)
    finite = np.isfinite(scores)
    top = np.argpartition(-np.where(finite, scores, -np.inf), k - 1, axis=1)[:, :k]
    mask = np.zeros(scores.shape, bool)
    np.put_along_axis(mask, top, True, axis=1)
    mask &= finite
    hi = np.where(finite, scores, -np.inf).max(axis=1)
    lo = np.where(finite, scores, np.inf).min(axis=1)
    flat = (hi == lo) & (finite.sum(axis=1) > k)
    mask[flat] = False
    return mask


def _per_row_z(values: np.ndarray, rows: np.ndarray, n_rows: int) -> np.ndarray:
    """z-score of each value among the finite values of its row (NaN stays NaN)."""
    ok = np.isfinite(values)
    v = np.where(ok, values, 0.0).astype(np.float64)
    n = np.bincount(rows, ok, minlength=n_rows)
    mean = np.bincount(rows, v, minlength=n_rows) / np.maximum(n, 1)
    dev = np.where(ok, v - mean[rows], 0.0)
    sd = np.sqrt(np.bincount(rows, dev**2, minlength=n_rows) / np.maximum(n, 1))
    return np.where(ok, dev / np.where(sd > 0, sd, 1.0)[rows], np.nan)


def allowed_items(profiles: Profiles, catalogue: Catalogue, exclude_seen: bool, blocked=None) -> np.ndarray:
    """block rows x items: what may be recommended (released, the kids rule, unseen when asked, not `blocked`)."""
    # each user's own time: with the block's latest, a user would get items released after their cutoff
    allowed = catalogue.released(profiles.cutoff_s) & ~catalogue.blocked_kids(profiles.rows)
    if exclude_seen:
        r, c = profiles.seen_mask_rows_cols()
        allowed[r, c] = False
    if blocked is not None:
        allowed &= ~blocked
    return allowed


def candidate_block(
    sources: dict,
    stats: ItemStats,
    catalogue: Catalogue,
    profiles: Profiles,
    depth: int,
    allowed: np.ndarray,
) -> CandidateBlock:
    """Candidates (union of every source's top `depth` among `allowed` items) with their features."""
    n = len(profiles)
    chosen = np.zeros(allowed.shape, bool)
    scores = {}
    for name in SOURCE_NAMES:
        s = np.where(allowed, sources[name].score(profiles), -np.inf).astype(np.float32)
        chosen |= _top_depth(s, depth)
        scores[name] = s
    rows, items = np.nonzero(chosen & allowed)
    cols: dict[str, np.ndarray] = {}
    for name in SOURCE_NAMES:
        s = scores[name][rows, items]
        cols[f"score_{name}"] = np.where(np.isfinite(s), s, np.nan)
        cols[f"z_{name}"] = _per_row_z(s, rows, n)
        cols[f"rank_{name}"] = _ranks_of(scores[name], rows, items)
    cols["n_sources"] = sum((cols[f"rank_{s}"] <= depth).astype(np.float32) for s in SOURCE_NAMES)
    cols.update(_item_columns(stats, catalogue, profiles, rows, items))
    cols.update(_user_columns(profiles, rows))
    cols.update(_pair_columns(stats, catalogue, profiles, rows, items))
    matrix = np.empty((len(rows), len(FEATURES)), np.float32)
    for k, name in enumerate(FEATURES):
        matrix[:, k] = cols[name]
    return CandidateBlock(rows, items, matrix)


def _item_columns(stats: ItemStats, catalogue: Catalogue, profiles: Profiles, rows, items) -> dict[str, np.ndarray]:
    return {
        "item_users_log": np.log1p(stats.users[items]),
        "item_completion_rate": stats.completion_rate[items],
        "item_bounce_rate": stats.bounce_rate[items],
        "item_duration_min": catalogue.duration_min[items],
        "item_level": catalogue.level[items],
        "item_type_code": catalogue.type_code[items],
    }


def _row_sums(m: sp.csr_matrix) -> np.ndarray:
    return np.asarray(m.sum(axis=1)).ravel()


def _user_columns(profiles: Profiles, rows: np.ndarray) -> dict[str, np.ndarray]:
    n_items = _row_sums(profiles.seen)
    completed = profiles.engagement.copy()
    completed.data = (completed.data > 0).astype(np.float32)
    return {
        "user_items_log": np.log1p(n_items)[rows],
        "user_span_days": ((profiles.last_s - profiles.first_s) / DAY_S)[rows],
        "user_days_inactive": ((profiles.data_end_s - profiles.last_s) / DAY_S)[rows],
        "user_completion_rate": ((_row_sums(completed) + 1.0) / (n_items + 2.0))[rows],
    }


def _pair_columns(stats: ItemStats, catalogue: Catalogue, profiles: Profiles, rows, items) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    n_items = np.maximum(_row_sums(profiles.seen), 1.0)
    for facet in FACETS:
        f = catalogue.facets[facet]
        share = (profiles.seen @ f.onehot).toarray() / n_items[:, None]  # users x values
        code = f.codes[items]
        out[f"aff_{facet}"] = np.where(code >= 0, share[rows, np.maximum(code, 0)], np.nan)
    level_sum = profiles.seen @ np.nan_to_num(catalogue.level, nan=0.0)
    level_n = profiles.seen @ np.isfinite(catalogue.level).astype(np.float64)
    user_level = np.where(level_n > 0, level_sum / np.maximum(level_n, 1), np.nan)
    out["level_gap"] = catalogue.level[items] - user_level[rows]
    out["ui_plays"] = np.asarray(profiles.plays[rows, items]).ravel()
    age = np.asarray(profiles.age_days[rows, items]).ravel()
    out["ui_days_since"] = np.where(age > 0, age, np.nan)
    out["pair_available_days"] = (profiles.last_s[rows] - stats.first_s[items]) / DAY_S
    out["pair_time_gap_days"] = (stats.mean_s[items] - _user_mean_time(profiles)[rows]) / DAY_S
    return out


def _user_mean_time(profiles: Profiles) -> np.ndarray:
    """Mean time of each user's pairs (from the age matrix, relative to the user's latest; NaN without any)."""
    age = profiles.age_days
    n = np.diff(age.indptr)
    sums = np.bincount(np.repeat(np.arange(len(n)), n), weights=age.data, minlength=len(n))
    mean_age = np.where(n > 0, sums / np.maximum(n, 1), np.nan)
    return profiles.last_s - mean_age * DAY_S


def pairs_frame(block: CandidateBlock, profiles: Profiles, user_ids: pl.Series, item_ids: pl.Series) -> pl.DataFrame:
    """The block's pairs as [user_id, item_id] (for joins with labels)."""
    return pl.DataFrame(
        {"user_id": user_ids.gather(profiles.rows[block.rows]), "item_id": item_ids.gather(block.items)}
    )
