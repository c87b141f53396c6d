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

from recsys_platform import schemas
from recsys_platform.model.catalogue import FACETS, Catalogue
from recsys_platform.model.history import DAY_S, PairHistory
from recsys_platform.model.profiles import Profiles
from recsys_platform.model.signals import SessionState
from recsys_platform.model.sources import SOURCE_NAMES, ItemScores

MISSING_RANK = 10_000.0

SOURCE_FEATURES: tuple[str, ...] = (
    *[f"score_{s}" for s in SOURCE_NAMES],
    *[f"z_{s}" for s in SOURCE_NAMES],  # the score as a z-score over the user's candidates (scale-free)
    *[f"rank_{s}" for s in SOURCE_NAMES],
)
# Time features are relative to the user's own latest interaction, never to the cutoff: in training a user
# is held out at their next event, in serving they are scored "now" after any absence, and a feature of the
# cutoff (days since last seen, item age at the cutoff) would differ between the two for the same history.
# item_journey_position: where the item tends to come in its users' histories (0 first .. 1 latest), e.g. what
# people reach after the first weeks, or advanced courses. On ml-100k's per-user train part split again (inner),
# served nDCG@10 for ranker seeds 7 / 8 / 9: 0.2604 / 0.2562 / 0.2599 without, 0.2652 / 0.2640 / 0.2614 with; on the
# global protocol's train part (seed 7) 0.1647 without, 0.1898 with. Synthetic latent development seed 11, the
# quickstart's own holdouts (ranker per-user / global): 0.3815 / 0.3542 without, 0.3793 / 0.3567 with.
ITEM_FEATURES = (
    "item_users_log",
    "item_journey_position",
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
# Session signals (`model.signals`), each group measured on its own by benchmarks/session_features.py. Times are
# relative to the user's latest play; "recent" is the hour up to it; dayparts are in the user's local time.
SESSION_FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    # the user's bounce share on the item's content type: all history, and the recent hour
    "bounce": ("type_bounce_rate", "recent_type_bounce_rate", "user_recent_bounce_rate"),
    # step-count and heart-rate slopes over the readings from 30 min before the latest play, the latest
    # reading against the user's earlier ones, and when it was taken
    "biometric": ("steps_trend", "heart_rate_trend", "steps_rise", "heart_rate_rise", "bio_after_min"),
    # cosine of the item's text with the latest search and with the latest five, and when the search was
    "search": ("search_sim", "search_sim_recent", "search_after_min"),
    # local hour of the user's latest event, and the item type's share of the user's plays in that daypart
    "time_of_day": ("local_hour", "type_daypart_share"),
}
# The groups the ranker reads (the others stay computable for the benchmark's ablation): search. Measured where
# session signals act, on a session window (`procedure.training_windows` "session": each user's newest sitting,
# labelled with what they played in it, the signals known up to its first play): held-out training users of
# synthetic latent dev seed 11 (`python benchmarks/session_features.py --dataset synthetic --seed 11 --text-encoder
# hashed --windows session --splits 1 2 3`, 5,000 users x 28 days, 1,000 label users, mean nDCG@10 of 3 splits): no
# session features 0.3477, all four groups 0.3945; without search 0.3508, without time of day 0.3891 (-0.002, +0.018,
# +0.001 by split), without bounce 0.3957, without biometric 0.3968; search alone 0.3920 (all-MiniLM-L6-v2 as the
# encoder: 0.3866), time of day alone 0.3453, bounce alone 0.3438, biometric alone 0.3517. Search is the one group
# that helps there; the generator writes a session's search from the type and topic of its first play (as a user
# names what they look for), so the size of that gain is the generator's, not a forecast for real data. Those figures
# are of f2b4013, whose search similarity was a per-pair product; the matrix product since (the same values to float
# rounding) moved the variants that read search, re-run at af9cde0 (`--only none all without_search only_search`):
# none 0.3477, all 0.3951, without search 0.3508, search alone 0.3948.
# Search is read, and taught by the session window (ModelParams.training_windows "+session"). It was
# left out while what teaches it cost more than the quickstart's budget had: with the window the ranker grew from
# 44-54 to 101-295 trees then, and the quickstart from 91-94 s to 111-139 s when the install took 70-150 s of the 180.
# With uv the install takes ~11 s. Synthetic latent dev seed 11, `recsys quickstart --seed 11`, quiet, interleaved
# (2 cores): 101.4 / 87.2 s without, 111.4 / 109.9 s with; the cycle's own holdouts (ranker nDCG@10 per-user /
# global) 0.3814 / 0.3561 without, 0.3900 / 0.3562 with on the same data (the second run's data ended later:
# 0.3875 / 0.3519). Read without the window, search changed no holdout and still cost trees (seed 42: 98 -> 160).
# On per-user and global windows alone no group helped (`--splits 1 2`: none 0.4430, all 0.4428, each group removed
# 0.4437-0.4462). ml-100k has no searches or readings: no session window there, and its lists are the same (the
# search columns are constant, which LightGBM never splits on).
KEPT_SESSION_GROUPS: tuple[str, ...] = ("search",)
SESSION_FEATURES: tuple[str, ...] = tuple(f for g in KEPT_SESSION_GROUPS for f in SESSION_FEATURE_GROUPS[g])
BASE_FEATURES: tuple[str, ...] = (*SOURCE_FEATURES, *ITEM_FEATURES, *USER_FEATURES, *PAIR_FEATURES)
FEATURES: tuple[str, ...] = (*BASE_FEATURES, *SESSION_FEATURES)
# The signal events each group reads (`_session_columns`): time of day anchors on the latest signal of any kind.
GROUP_SIGNAL_TYPES: dict[str, tuple[str, ...]] = {
    "bounce": (),
    "biometric": ("biometric",),
    "search": ("search",),
    "time_of_day": schemas.SIGNAL_EVENT_TYPES,
}
# Every feature the builder can compute, kept groups or not (the ablation and the leakage tests ask for these).
ALL_FEATURES: tuple[str, ...] = (*BASE_FEATURES, *(f for group in SESSION_FEATURE_GROUPS.values() for f in group))
CATEGORICAL_FEATURES: tuple[str, ...] = ("item_type_code",)


def signals_for(signals: pl.LazyFrame | pl.DataFrame, names: tuple[str, ...] = FEATURES) -> pl.DataFrame:
    """The session signals (SESSION_SIGNAL_SCHEMA) the features `names` read: only their groups' event types
    (GROUP_SIGNAL_TYPES), read off a lazy scan with the filter pushed into it. At 1M users the biometric readings,
    which no default feature reads, were 27.8M of 30.8M rows."""
    types = {t for g, feats in SESSION_FEATURE_GROUPS.items() if set(feats) & set(names) for t in GROUP_SIGNAL_TYPES[g]}
    return signals.lazy().filter(pl.col("event_type").is_in(sorted(types))).collect()


@dataclass
class ItemStats:
    """Per-item facts as of the cutoff (aligned with the vocabulary's items)."""

    users: np.ndarray  # distinct users
    first_s: np.ndarray  # first interaction by anyone (NaN: never)
    mean_s: np.ndarray  # mean first-interaction time (NaN: never)
    completion_rate: np.ndarray  # (completions + 1) / (pairs + 2)
    bounce_rate: np.ndarray  # (bounced pairs + 0.5) / (pairs + 2)
    journey_position: np.ndarray  # mean place of the item in its users' histories, 0 first .. 1 latest (NaN: none)

    @classmethod
    def fit(cls, history: PairHistory) -> ItemStats:
        """Counts, rates and times from `history`."""
        n = history.vocab.n_items
        users = history.item_counts()  # the counts at the whole base's scale (`PairHistory.user_weight`)
        sums = history.item_sums(history.first_s)
        done = history.item_sums((history.completes > 0).astype(np.float64))
        bounced = history.item_sums((history.bounces > 0).astype(np.float64))
        per_user = history.user_counts()[history.user]
        place = 1.0 - history.positions_from_end() / np.maximum(per_user - 1.0, 1.0)
        placed = per_user > 1  # a user's only item has no place
        place_n = np.bincount(history.item, weights=placed, minlength=n)
        place_sum = np.bincount(history.item, weights=place * placed, minlength=n)
        return cls(
            users=users,
            first_s=history.item_first_s(),
            mean_s=np.where(users > 0, sums / np.maximum(users, 1), np.nan),
            completion_rate=(done + 1.0) / (users + 2.0),
            bounce_rate=(bounced + 0.5) / (users + 2.0),
            journey_position=np.where(place_n > 0, place_sum / np.maximum(place_n, 1.0), np.nan),
        )


@dataclass
class CandidateBlock:
    """The candidates of a block of users: block row, item column and the feature matrix (FEATURES order)."""

    rows: np.ndarray  # block-local row, ascending
    items: np.ndarray
    features: np.ndarray  # float32 (n_pairs, len(names)), column-major (a feature is contiguous)
    names: tuple[str, ...] = FEATURES

    def column(self, name: str) -> np.ndarray:
        """One feature column."""
        return self.features[:, self.names.index(name)]

    def __len__(self) -> int:
        return len(self.rows)


def runs(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, length) of each run of equal consecutive values of `rows` (a block's pairs, grouped by row)."""
    if not len(rows):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(rows)) + 1]
    return starts, np.diff(np.r_[starts, len(rows)])


def _ranks_of(ranked: np.ndarray, negated: np.ndarray, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
    """1-based rank of each (row, item) within its row: 1 + how many of the row's scores are higher (ties
    share the best rank); MISSING_RANK where the score is not finite. `negated` is the scores negated, `ranked`
    each of its rows sorted (`_ranked`); `rows` ascending (as np.nonzero gives them). A binary search per
    candidate in its row's sort, instead of an argsort of every row's whole ranking."""
    value = negated[rows, items]
    position = np.empty(len(rows), np.int64)
    # plain ints and the arrays' own method: per row, numpy scalars and the module function's dispatch cost as much
    # as the search
    starts, lengths = runs(rows)
    for row, a, b in zip(rows[starts].tolist(), starts.tolist(), (starts + lengths).tolist(), strict=True):
        position[a:b] = ranked[row].searchsorted(value[a:b], side="left")
    return np.where(np.isfinite(value), (position + 1).astype(np.float32), np.float32(MISSING_RANK))


def _ranked(scores: np.ndarray, allowed: np.ndarray | bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The scores as float32 negated (+inf where not `allowed`), and each of their rows sorted ascending (best
    first; -inf scores as +inf after the finite ones, NaN last): the one sort per row that both the top `depth`
    and the ranks read. Two passes before the sort (a mask, a cast and a negation one at a time were four)."""
    negated = np.where(allowed, np.negative(scores, dtype=np.float32), np.float32(np.inf))
    return negated, np.sort(negated, axis=1)


def _top_depth(negated: np.ndarray, ranked: np.ndarray, depth: int) -> np.ndarray:
    """bool mask of each row's `depth` best finite scores (`_ranked`'s arrays): at most `depth` per row. Where
    the `depth`-th best score is tied with the next, which of the tied items are taken is decided by a per-row
    partition, the same whatever else is in the block; elsewhere the row's sort gives the threshold. A row whose
    finite scores are all equal and more than `depth` contributes nothing: the source cannot tell those items
    apart (EASE or kNN for a user with no history), and taking all of them would make every item a candidate."""
    n_rows, n_items = negated.shape
    k = min(depth, n_items)
    if k <= 0 or n_rows == 0:
        return np.zeros(negated.shape, bool)
    n_finite = (ranked < np.inf).sum(axis=1)  # NaN compares False
    threshold = ranked[:, k - 1]
    # fewer than k finite: all of them (the largest float32 keeps +inf, i.e. -inf scores, and NaN out)
    threshold = np.where(threshold < np.inf, threshold, np.finfo(np.float32).max).astype(negated.dtype)
    mask = negated <= threshold[:, None]
    if k < n_items:
        tied = np.flatnonzero((ranked[:, k] == threshold) & (n_finite > k))
        if len(tied):
            sub = negated[tied]
            sub = np.where(np.isfinite(sub), sub, np.inf)
            top = np.argpartition(sub, k - 1, axis=1)[:, :k]
            part = np.zeros(sub.shape, bool)
            np.put_along_axis(part, top, True, axis=1)
            mask[tied] = part & (sub < np.inf)
    last = ranked[np.arange(n_rows), np.maximum(n_finite - 1, 0)]
    mask[(ranked[:, 0] == last) & (n_finite > k)] = False
    return mask


class _RowRanking:
    """A personal source's block of scores: each row sorted once (`_ranked`) for its top `depth` and the ranks."""

    def __init__(self, scores: np.ndarray, allowed: np.ndarray) -> None:
        self.negated, self.sorted = _ranked(scores, allowed)

    def top(self, depth: int) -> np.ndarray:
        return _top_depth(self.negated, self.sorted, depth)

    def scores_at(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        return -self.negated[rows, items]

    def ranks_at(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        return _ranks_of(self.sorted, self.negated, rows, items)


class _SharedRanking:
    """A source that gives every user the same score vector (popularity, new releases), among each row's allowed
    items: the vector is sorted once, and a row's ranks and top `depth` come from a running count of its allowed
    items in that order, instead of a sort of every row. The same masks and ranks as `_RowRanking` on the
    vector repeated per row (rows whose `depth`-th score is tied with the next go through `_RowRanking`)."""

    def __init__(self, vector: np.ndarray, allowed: np.ndarray) -> None:
        self.vector = np.asarray(vector, np.float32)
        self.allowed = allowed
        self.negated = np.negative(self.vector)
        order = np.argsort(self.negated, kind="stable")  # best first; -inf scores (+inf) after the finite, NaN last
        self.sorted = self.negated[order]
        finite = self.sorted < np.inf  # NaN compares False, as in `_top_depth`
        # count[r, j]: row r's allowed items with a finite score among the vector's best j + 1
        # counted in place in the narrowest type that holds them: a cumsum that casts bool to int32 as it goes took
        # three times as long (4.4 times against int16), and it ran for three sources per block of users
        count = (allowed[:, order] & finite).astype(np.int16 if allowed.shape[1] < 2**15 else np.int32)
        self.count = np.cumsum(count, axis=1, out=count)
        self.first = np.searchsorted(self.sorted, self.negated, side="left")  # per item: how many score higher

    def top(self, depth: int) -> np.ndarray:
        n_rows, n_items = self.allowed.shape
        k = min(depth, n_items)
        if k <= 0 or n_rows == 0:
            return np.zeros((n_rows, n_items), bool)
        n_finite = self.count[:, -1]
        kth = np.minimum((self.count < k).sum(axis=1), n_items - 1)  # where each row's k-th best is in the order
        threshold = np.where(n_finite >= k, self.sorted[kth], np.finfo(np.float32).max).astype(np.float32)
        mask = self.allowed & (self.negated[None, :] <= threshold[:, None])
        if k < n_items:
            after = np.minimum((self.count < k + 1).sum(axis=1), n_items - 1)
            tied = np.flatnonzero((n_finite > k) & (self.sorted[after] == threshold))
            if len(tied):
                repeated = np.broadcast_to(self.vector, (len(tied), n_items))
                mask[tied] = _RowRanking(repeated, self.allowed[tied]).top(depth)
        return mask

    def scores_at(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        return np.where(self.allowed[rows, items], self.vector[items], -np.inf).astype(np.float32)

    def ranks_at(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        first = self.first[items]  # the items before it in the order score strictly higher
        higher = np.where(first > 0, self.count[rows, np.maximum(first - 1, 0)], 0)
        return np.where(np.isfinite(self.scores_at(rows, items)), (higher + 1).astype(np.float32), MISSING_RANK)


def _ranking(source, profiles: Profiles, allowed: np.ndarray) -> _RowRanking | _SharedRanking:
    """How a source's block is ranked: once for the block when it gives everyone the same vector."""
    if isinstance(source, ItemScores):
        return _SharedRanking(source.scores, allowed)
    return _RowRanking(source.score(profiles), allowed)


def _per_row_z(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """z-score of each value among the finite values of its row (NaN stays NaN); `rows` ascending (as np.nonzero
    gives them), so a row's values are one run: sums per run (np.add.reduceat) took 17 ms for a 1000-user block's
    eleven sources where per-row bincounts took 38."""
    if not len(values):
        return np.zeros(0)
    starts, lengths = runs(rows)
    ok = np.isfinite(values)
    v = np.where(ok, values, 0.0).astype(np.float64)
    n = np.maximum(np.add.reduceat(ok, starts, dtype=np.float64), 1.0)
    dev = np.where(ok, v - np.repeat(np.add.reduceat(v, starts) / n, lengths), 0.0)
    sd = np.sqrt(np.add.reduceat(dev * dev, starts) / n)
    return np.where(ok, dev / np.repeat(np.where(sd > 0, sd, 1.0), lengths), np.nan)


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
    text_encoder: str = "hashed",
    names: tuple[str, ...] = FEATURES,
) -> CandidateBlock:
    """Candidates (union of every source's top `depth` among `allowed` items) with the features `names`
    (default FEATURES; the session benchmark asks for groups the ranker does not read)."""
    chosen = np.zeros(allowed.shape, bool)
    ranked = {}
    for name in SOURCE_NAMES:
        ranked[name] = _ranking(sources[name], profiles, allowed)
        chosen |= ranked[name].top(depth)
    rows, items = np.nonzero(chosen & allowed)
    cols: dict[str, np.ndarray] = {}
    for name in SOURCE_NAMES:
        ranking = ranked.pop(name)
        s = ranking.scores_at(rows, items)
        cols[f"score_{name}"] = np.where(np.isfinite(s), s, np.nan)
        cols[f"z_{name}"] = _per_row_z(s, rows)
        cols[f"rank_{name}"] = ranking.ranks_at(rows, items)
    cols["n_sources"] = sum((cols[f"rank_{s}"] <= depth).astype(np.float32) for s in SOURCE_NAMES)
    cols.update(_item_columns(stats, catalogue, profiles, rows, items))
    cols.update(_user_columns(profiles, rows))
    cols.update(_pair_columns(stats, catalogue, profiles, rows, items))
    cols.update(_session_columns(catalogue, profiles, rows, items, text_encoder, names))
    # filled a feature at a time, each a contiguous column (column-major): written into row-major rows, the fill took
    # 53 ms of a 1000-user block against 13, and the compiled ranker's float64 copy 27 ms against 17
    matrix = np.empty((len(names), len(rows)), np.float32)
    for k, name in enumerate(names):
        matrix[k] = cols[name]
    return CandidateBlock(rows, items, matrix.T, names)


def _item_columns(stats: ItemStats, catalogue: Catalogue, profiles: Profiles, rows, items) -> dict[str, np.ndarray]:
    return {
        "item_users_log": np.log1p(stats.users[items]),
        "item_journey_position": stats.journey_position[items],
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
    out["ui_plays"] = _at_pairs(profiles.plays, rows, items)
    age = _at_pairs(profiles.age_days, rows, items)
    out["ui_days_since"] = np.where(age > 0, age, np.nan)
    out["pair_available_days"] = (profiles.last_s[rows] - stats.first_s[items]) / DAY_S
    out["pair_time_gap_days"] = (stats.mean_s[items] - _user_mean_time(profiles)[rows]) / DAY_S
    return out


RECENT_S = 3600.0


def _at_pairs(matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The values of sparse `matrix` at the (`rows`, `cols`) pairs, as a flat array (for no pairs an empty one:
    scipy's pair indexing then gives an empty sparse matrix, which a block of users without history met)."""
    if not len(rows):
        return np.zeros(0, matrix.dtype)
    return np.asarray(matrix[rows, cols]).ravel()


def _session_columns(
    catalogue: Catalogue, profiles: Profiles, rows, items, encoder: str, names
) -> dict[str, np.ndarray]:
    """The session signal features of SESSION_FEATURE_GROUPS (only the groups `names` asks for)."""
    out: dict[str, np.ndarray] = {}
    wanted = {g for g, feats in SESSION_FEATURE_GROUPS.items() if set(feats) & set(names)}
    if not wanted:
        return out
    n, n_pairs = len(profiles), len(rows)
    code = catalogue.type_code
    n_types = int(np.nanmax(code)) + 1 if np.isfinite(code).any() else 1
    item_type = np.where(np.isfinite(code[items]), code[items], -1).astype(np.int64)
    seen = profiles.seen.tocoo()
    pair_type = np.where(np.isfinite(code[seen.col]), code[seen.col], -1).astype(np.int64)
    typed = pair_type >= 0
    # each seen pair's latest time, from its age relative to the user's latest interaction
    age = _at_pairs(profiles.age_days, seen.row, seen.col)
    pair_s = profiles.last_s[seen.row] - (age - 1e-6) * DAY_S
    recent = (profiles.last_s[seen.row] - pair_s) <= RECENT_S

    def per_type(weights: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """users x types sums of `weights` over the seen pairs in `mask` with a known type."""
        m = mask & typed
        flat = np.bincount(seen.row[m] * n_types + pair_type[m], weights[m], n * n_types)
        return flat.reshape(n, n_types)

    def at_item(table: np.ndarray) -> np.ndarray:
        return np.where(item_type >= 0, table[rows, np.maximum(item_type, 0)], np.nan)

    ones = np.ones(len(seen.row))
    if "bounce" in wanted:
        bounced = _at_pairs(profiles.bounced, seen.row, seen.col)
        everything = np.ones(len(seen.row), bool)
        out["type_bounce_rate"] = at_item((per_type(bounced, everything) + 0.5) / (per_type(ones, everything) + 2.0))
        plays_recent = per_type(ones, recent)
        share = per_type(bounced, recent) / np.where(plays_recent > 0, plays_recent, 1.0)
        out["recent_type_bounce_rate"] = np.where(at_item(plays_recent) > 0, at_item(share), np.nan)
        b = np.bincount(seen.row[recent], bounced[recent], n)
        c = np.bincount(seen.row[recent], minlength=n)
        out["user_recent_bounce_rate"] = np.where(c > 0, b / np.maximum(c, 1), np.nan)[rows]
    if "time_of_day" in wanted:
        anchor = profiles.last_s if profiles.session is None else profiles.session.anchor_s
        hour = catalogue.local_hour(profiles.rows, anchor)
        out["local_hour"] = hour[rows]
        now_part = daypart(hour)
        same = daypart(catalogue.local_hour(profiles.rows[seen.row], pair_s)) == now_part[seen.row]
        plays = per_type(ones, same)
        total = plays.sum(axis=1)
        out["type_daypart_share"] = np.where(total[rows] > 0, at_item(plays / np.maximum(total, 1)[:, None]), np.nan)
    session = profiles.session
    if "biometric" in wanted:
        for f in SESSION_FEATURE_GROUPS["biometric"]:
            out[f] = np.full(n_pairs, np.nan) if session is None else getattr(session, f)[rows]
    if "search" in wanted:
        if session is None:
            out.update({f: np.full(n_pairs, np.nan) for f in SESSION_FEATURE_GROUPS["search"]})
        else:
            out["search_sim"], out["search_sim_recent"] = _search_similarity(catalogue, session, rows, items, encoder)
            out["search_after_min"] = session.search_after_min[rows]
    return out


def _search_similarity(
    catalogue: Catalogue, session: SessionState, rows, items, encoder: str
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine of each pair's item text with its user's latest search and with the recent-search mean (NaN for users
    without a search). The pairs of users without a search are left out of the arithmetic."""
    searched = np.flatnonzero(np.isfinite(session.search_after_min))
    has = np.isin(rows, searched)
    latest, recent = np.full(len(rows), np.nan), np.full(len(rows), np.nan)
    if not has.any():
        return latest, recent
    sparse = catalogue.sparse_item_vectors(encoder)
    if sparse is not None:
        # hashed text: an item has a few words of 1024 buckets, so each pair's dot product is its item's few words read
        # off the user's query vectors (in float64); the dense product spent its time on zeros (40 ms of a 1000-user
        # block at 1,677 items, this ~5)
        words = sparse[items[has]].tocoo()
        pair, bucket, weight = words.row, words.col, words.data.astype(np.float64)
        user, n = rows[has][pair], int(has.sum())
        latest[has] = np.bincount(pair, weight * session.search_vec[user, bucket], n)
        recent[has] = np.bincount(pair, weight * session.recent_search_vec[user, bucket], n)
    else:
        # dense embeddings: the block's searching users x their candidates' distinct items, then each pair's cell (a
        # per-pair dot product would first copy a vector per pair: for the 800k pairs of a training window, 8x the
        # time of the whole matrix product)
        cols, col_of = np.unique(items[has], return_inverse=True)
        vectors = catalogue.item_vectors(encoder)[cols].T
        at = np.searchsorted(searched, rows[has])  # each pair's user's place in `searched`
        latest[has] = (session.search_vec[searched] @ vectors)[at, col_of]
        recent[has] = (session.recent_search_vec[searched] @ vectors)[at, col_of]
    return latest, recent


def daypart(local_hour: np.ndarray) -> np.ndarray:
    """Index in schemas.DAYPARTS of local hours: morning from NIGHT_END_HOUR, afternoon from 12, evening from
    17, night from NIGHT_START_HOUR (-1 for NaN)."""
    h = np.asarray(local_hour, np.float64)
    bounds = np.array([schemas.NIGHT_END_HOUR, 12, 17, schemas.NIGHT_START_HOUR], np.float64)
    code = np.searchsorted(bounds, np.nan_to_num(h, nan=0.0), side="right") - 1
    return np.where(np.isnan(h), -1, np.where(code < 0, 3, code))


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
