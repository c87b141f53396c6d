"""Candidate sources: the registry that candidate generation, the ranker's features and candidate recall read.

A source is fitted once per cutoff on a `PairHistory` (`SourceSpec.fit`) and then scores blocks of
users (`Source.score(profiles)`: a dense users x items float32 array, higher is better, -inf where
it has nothing to say). Each source contributes its top `SourceSpec.depth` items per user to the
candidates and two features per (user, item): its score and the item's rank in its list. Adding a
source is one `SourceSpec` in `SOURCES`; nothing else names the sources.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack

from recsys_platform.model.catalogue import FACETS, Catalogue
from recsys_platform.model.history import DAY_S, PairHistory
from recsys_platform.model.params import ModelParams
from recsys_platform.model.profiles import Profiles

logger = logging.getLogger(__name__)


class Source(Protocol):
    """A fitted candidate source."""

    def score(self, profiles: Profiles) -> np.ndarray:
        """users x items scores (float32), higher is better; -inf: not a candidate."""
        ...


@dataclass(frozen=True)
class SourceSpec:
    """One candidate source: how it is fitted, how many candidates it gives, whether it is personal."""

    name: str
    fit: Callable[[PairHistory, Catalogue, ModelParams], Source]
    personalised: bool
    description: str


# --- global sources ------------------------------------------------------------------------


@dataclass
class ItemScores:
    """The same score vector for every user (popularity-like sources)."""

    scores: np.ndarray  # float32 per item

    def score(self, profiles: Profiles) -> np.ndarray:
        """The vector repeated for each user."""
        return np.broadcast_to(self.scores, (len(profiles), len(self.scores))).copy()


def fit_popularity(history: PairHistory, catalogue: Catalogue, params: ModelParams) -> ItemScores:
    """Distinct users per item, all time (log-scaled)."""
    return ItemScores(np.log1p(history.item_counts()).astype(np.float32))


def fit_recent_popularity(history: PairHistory, catalogue: Catalogue, params: ModelParams) -> ItemScores:
    """Distinct users per item, each pair weighted by 2 ** -(age / half-life) at the cutoff."""
    age = (history.cutoff_s - history.last_s) / DAY_S
    w = np.exp2(-age / max(params.recent_half_life_days, 1e-3))
    return ItemScores(np.log1p(history.item_sums(w)).astype(np.float32))


# --- collaborative sources -------------------------------------------------------------------


def _gram(history: PairHistory) -> np.ndarray:
    """Item x item co-occurrence counts of the binary user x item matrix at the whole base's scale (`user_weight`;
    computed once per history)."""
    if "gram" not in history.cache:
        x = history.matrix()
        x.data[:] = 1.0
        history.cache["gram"] = (x.T @ x).toarray().astype(np.float64) * history.user_weight
    return history.cache["gram"]


def _ease(history: PairHistory, l2: float) -> np.ndarray:
    """EASE weights of `history` for `l2` (computed once per history and l2)."""
    key = ("ease", float(l2))
    if key not in history.cache:
        history.cache[key] = ease_weights(_gram(history), l2)
    return history.cache[key]


def ease_weights(gram: np.ndarray, l2: float, dropout: float = 0.0) -> np.ndarray:
    """EASE / EDLAE item-item weights (zero diagonal) from an item Gram matrix (Steck 2019, 2020).

    With `dropout` > 0 each item's l2 grows by dropout/(1-dropout) x its own count (EDLAE), which
    regularises frequent items more than a single l2 does."""
    reg = np.array(gram, dtype=np.float64)
    reg[np.diag_indices_from(reg)] += l2 + dropout / (1.0 - dropout) * np.diag(gram)
    p = symmetric_inverse(reg)
    b = p / (-np.diag(p))
    np.fill_diagonal(b, 0.0)
    return b.astype(np.float32)


def symmetric_inverse(matrix: np.ndarray) -> np.ndarray:
    """The inverse of a symmetric float64 matrix: by Cholesky when it is positive definite (a regularised Gram
    matrix is), half the work of the general LU inverse (1,682 items, one thread: 0.14 s against 0.30), the same
    values to rounding; by LU when it is not (the sittings-and-sequence Gram matrix's neighbour counts need not be
    positive semi-definite)."""
    factor, info = lapack.dpotrf(matrix, lower=False, clean=False)
    if info == 0:
        upper, info = lapack.dpotri(factor, lower=False, overwrite_c=True)
        if info == 0:
            return np.triu(upper) + np.triu(upper, 1).T
    return np.linalg.inv(matrix)


@dataclass
class ItemItem:
    """Scores = profile @ W for an item-item matrix W; `profile` picks which view of the user's pairs."""

    weights: np.ndarray
    profile: str = "seen"  # "seen" (binary) or "recent" (recency-weighted)
    half_life: float = 1.0

    def score(self, profiles: Profiles) -> np.ndarray:
        """Item-item scores of each user's (weighted) profile."""
        x = profiles.seen if self.profile == "seen" else profiles.recency_weighted(self.half_life)
        return np.asarray(x @ self.weights, dtype=np.float32)


def fit_ease(history: PairHistory, catalogue: Catalogue, params: ModelParams) -> ItemItem:
    """EASE on the binary user x item matrix, scored on the whole profile."""
    return ItemItem(_ease(history, params.ease_l2))


def fit_ease_recent(history: PairHistory, catalogue: Catalogue, params: ModelParams) -> ItemItem:
    """The same EASE weights scored on a profile that weights the user's latest items more."""
    return ItemItem(_ease(history, params.ease_l2), "recent", params.recency_half_life)


def fit_item_knn(history: PairHistory, catalogue: Catalogue, params: ModelParams) -> ItemItem:
    """Item-kNN: cosine similarity of item co-occurrence, the `knn_neighbours` nearest per item."""
    gram = _gram(history)
    d = np.sqrt(np.diag(gram))
    sim = gram / np.where(np.outer(d, d) > 0, np.outer(d, d), 1.0)
    np.fill_diagonal(sim, 0.0)
    k = min(params.knn_neighbours, sim.shape[1])
    if k < sim.shape[1]:
        cut = -np.partition(-sim, k - 1, axis=1)[:, k - 1 : k]
        sim = np.where(sim >= cut, sim, 0.0)
    return ItemItem(sim.astype(np.float32))


def _sessions(history: PairHistory, gap_s: float) -> sp.csr_matrix:
    """Binary sittings x items: a user's pairs whose first plays are at most `gap_s` apart form one sitting."""
    u, t = history.user, history.first_s  # ordered by user, then first time
    if not len(u):
        return sp.csr_matrix((0, history.vocab.n_items), dtype=np.float32)
    new = np.r_[True, (u[1:] != u[:-1]) | (np.diff(t) > gap_s)]
    sitting = np.cumsum(new) - 1
    m = sp.csr_matrix(
        (np.ones(len(u), np.float32), (sitting, history.item)), shape=(sitting[-1] + 1, history.vocab.n_items)
    )
    m.data[:] = 1.0
    return m


def _step_counts(history: PairHistory, window: int, decay: float) -> np.ndarray:
    """items x items: how often item j came d <= `window` steps after item i in a user's sequence (the pairs in user,
    first-time order), decay ** (d - 1) each."""
    n = history.vocab.n_items
    u, i = history.user, history.item  # int64 (`PairHistory.from_arrays`): i * n + j does not overflow
    # a step's pairs counted straight into the cells: one list of every step's pairs, densified at the end, held
    # `window` x the pairs three times over (3.6 GB at 1M users for the neighbours' 10) and took 19 s of the 65 s
    # serving fit there
    counts = np.zeros(n * n)
    for d in range(1, window + 1):
        same = u[d:] == u[:-d]
        counts += decay ** (d - 1) * np.bincount(i[:-d][same] * n + i[d:][same], minlength=n * n)
    return counts.reshape(n, n)


def _neighbour_gram(history: PairHistory, window: int, decay: float) -> np.ndarray:
    """Symmetric counts of pairs at most `window` steps apart in a user's sequence, decay ** (steps - 1) each."""
    counts = _step_counts(history, window, decay)
    counts = counts + counts.T
    np.fill_diagonal(counts, 0.0)
    return counts


# The weight of the sequence neighbours' counts (and of the users' own diagonal beside them) in `session_gram`. It
# was 0.5, never measured; 1 was chosen with `model.tuning`'s wider grid on development splits only (figures there).
NEIGHBOUR_WEIGHT = 1.0


def fit_ease_session(history: PairHistory, catalogue: Catalogue, params: ModelParams) -> ItemItem:
    """EASE on a Gram matrix that also counts co-occurrence within sittings and between near neighbours of a
    user's sequence, scored on the whole profile: items consumed together, not only by the same users."""
    key = ("ease_session", params.session_gap_minutes, params.ease_session_l2, params.ease_session_dropout)
    if key not in history.cache:
        gram = session_gram(history, params.session_gap_minutes)
        history.cache[key] = ease_weights(gram, params.ease_session_l2, params.ease_session_dropout)
    return ItemItem(history.cache[key])


def session_gram(history: PairHistory, gap_minutes: float) -> np.ndarray:
    """The item Gram matrix of the sittings-and-sequence EASE: co-occurrence by users, by sittings (events at most
    `gap_minutes` apart) and by near neighbours in each user's sequence (computed once per history and gap)."""
    key = ("session_gram", gap_minutes)
    if key not in history.cache:
        s = _sessions(history, gap_minutes * 60.0)
        w = history.user_weight  # the sittings' and neighbours' counts at the whole base's scale, as _gram's
        history.cache[key] = (
            _gram(history)
            + w * (s.T @ s).toarray()
            + NEIGHBOUR_WEIGHT * (w * _neighbour_gram(history, 10, 0.8) + np.diag(np.diag(_gram(history))))
        )
    return history.cache[key]


@dataclass
class Sequential:
    """Next-item transitions: what other users consumed right after the items this user consumed last."""

    transitions: np.ndarray  # item x item, row-normalised
    last_k: int

    def score(self, profiles: Profiles) -> np.ndarray:
        """Transitions from the user's last items, the latest weighted most."""
        return np.asarray(profiles.last_items(self.last_k) @ self.transitions, dtype=np.float32)


def fit_sequential(history: PairHistory, catalogue: Catalogue, params: ModelParams) -> Sequential:
    """Counts of item j following item i within `seq_window` steps of a user's sequence (decayed by distance)."""
    counts = _step_counts(history, params.seq_window, 0.7)
    counts = counts + 0.5 * counts.T  # what came just before also predicts, less
    np.fill_diagonal(counts, 0.0)
    sums = counts.sum(axis=1, keepdims=True)
    return Sequential((counts / np.where(sums > 0, sums, 1.0)).astype(np.float32), params.seq_last_k)


@dataclass
class Factors:
    """Implicit-feedback matrix factorisation: user factors are solved from the profile at scoring time."""

    item_factors: np.ndarray
    regularization: float
    alpha: float

    def score(self, profiles: Profiles) -> np.ndarray:
        """Scores of each user's least-squares factors given the fixed item factors (iALS user step): per user,
        (YᵀY + l2·I + alpha·Σ y yᵀ) x = (1 + alpha)·Σ y over the user's items, scores Y x (confidence 1 + alpha
        per pair, as implicit's solver takes it), users solved together a batch of systems at a time
        (`_whitened_factors`). The same scores as implicit's compiled solver to float64 rounding (a solve per user
        in its compiled loop); on 1000-user blocks of the 1M-user synthetic data (64 factors, 2,204 items, 19 items
        per user on average), one BLAS thread, that solver took 66-71 ms a block and this 36-38 ms
        (`benchmarks/ials_user_step.py`)."""
        return (_whitened_factors(profiles.seen.tocsr(), self.whitened, self.alpha) @ self.whitened.T).astype(
            np.float32
        )

    @cached_property
    def whitened(self) -> np.ndarray:
        """Z = Y L⁻ᵀ with L Lᵀ = YᵀY + l2·I (float64, items x factors), computed once per process (not pickled)."""
        y = np.asarray(self.item_factors, np.float64)
        lower = np.linalg.cholesky(y.T @ y + self.regularization * np.eye(y.shape[1]))
        return np.linalg.solve(lower, y.T).T

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "whitened"}


def _size_batches(counts: np.ndarray):
    """(users, size): the users with items in batches by item count, each padded to the next of 1, 2, 3, 4, 6, 8, 12,
    16, ... (powers of two and their midpoints: at most a third of a system is padding)."""
    lower, size = 0, 1
    while lower < counts.max(initial=0):
        users = np.flatnonzero((counts > lower) & (counts <= size))
        if len(users):
            yield users, size
        lower, size = size, size + max((1 << (size.bit_length() - 1)) // 2, 1)


def _whitened_factors(seen: sp.csr_matrix, z: np.ndarray, alpha: float) -> np.ndarray:
    """users x factors: each user's whitened factors v = Lᵀx (0 without items), their scores Z v. With
    M = YᵀY + l2·I = L Lᵀ, Z = Y L⁻ᵀ and the user's items U, the user step x = (M + alpha·Y_Uᵀ Y_U)⁻¹ (1 + alpha)·Y_Uᵀ1
    is v = (I + alpha·Z_Uᵀ Z_U)⁻¹ (1 + alpha)·Z_Uᵀ1, a system of the factors' size, or by Woodbury's identity
    v = Z_Uᵀ w with w = (1 + alpha)·(I + alpha·Z_U Z_Uᵀ)⁻¹ 1, one of the items' size: the smaller is solved. A batch's
    padding items are zero rows of Z_U (an identity row of the items' system)."""
    counts = np.diff(seen.indptr)
    out = np.zeros((seen.shape[0], z.shape[1]))
    for users, size in _size_batches(counts):
        place = np.arange(size)
        valid = place[None, :] < counts[users, None]
        zu = z[seen.indices[np.where(valid, seen.indptr[users, None] + place[None, :], 0)]] * valid[..., None]
        zt = zu.transpose(0, 2, 1)  # (users, factors, size)
        if size <= z.shape[1]:
            system = alpha * (zu @ zt)
            system[:, place, place] += 1.0
            out[users] = (zt @ np.linalg.solve(system, (1.0 + alpha) * valid[..., None]))[..., 0]
        else:
            system = alpha * (zt @ zu)
            system[:, np.arange(z.shape[1]), np.arange(z.shape[1])] += 1.0
            out[users] = np.linalg.solve(system, (1.0 + alpha) * zu.sum(axis=1)[..., None])[..., 0]
    return out


def fit_ials(history: PairHistory, catalogue: Catalogue, params: ModelParams) -> Factors:
    """iALS (Hu, Koren & Volinsky 2008) with the `implicit` library; confidence 1 + alpha per pair."""
    from implicit.cpu.als import AlternatingLeastSquares

    x = history.matrix()
    x.data[:] = 1.0
    # Only the users with pairs: implicit draws its random start for every row, so empty rows (users of the
    # vocabulary seen only later) would change the factors of everyone else.
    rows = np.unique(history.user)
    weight = history.user_weight
    if 0 < params.ials_max_users < len(rows):
        # Item factors from a seeded sample of users: at 1M users one fit over everyone took minutes of the
        # `recommendations` step, and one per training window of every holdout.
        sample = np.random.default_rng(params.seed).choice(len(rows), params.ials_max_users, replace=False)
        weight *= len(rows) / params.ials_max_users
        rows = rows[np.sort(sample)]
    x = x[rows]
    # On a sample whose users stand for `weight` users each, an item's least-squares step sums over 1/weight of
    # its users: its l2 is scaled alike so the item factors keep the whole base's balance.
    model = AlternatingLeastSquares(
        factors=params.ials_factors,
        regularization=params.ials_l2 / weight,
        alpha=params.ials_alpha,
        iterations=params.ials_iterations,
        random_state=params.seed,
        num_threads=1,
    )
    model.fit(x.tocsr(), show_progress=False)
    return Factors(np.asarray(model.item_factors), params.ials_l2, params.ials_alpha)


# --- sources for repeat consumption and metadata -------------------------------------------


@dataclass
class Replays:
    """The user's own items, by how often and how recently they played them (repeat listening)."""

    half_life_days: float

    def score(self, profiles: Profiles) -> np.ndarray:
        """plays x 2 ** -(days since the pair's latest play / half-life); -inf for unplayed items."""
        out = np.full((len(profiles), profiles.n_items), -np.inf, np.float32)
        plays, age = profiles.plays.tocoo(), profiles.age_days.tocoo()
        out[plays.row, plays.col] = np.maximum(plays.data, 1.0) * np.exp2(-age.data / self.half_life_days)
        return out


def fit_replays(history: PairHistory, catalogue: Catalogue, params: ModelParams) -> Replays:
    """Nothing to fit: scores come from the profile."""
    return Replays(params.recent_half_life_days)


@dataclass
class Content:
    """Metadata affinity: the user's share of plays per topic, narrator and content type, summed per item."""

    facets: dict[str, sp.csr_matrix]  # items x values one-hot per facet
    weights: dict[str, float]

    def score(self, profiles: Profiles) -> np.ndarray:
        """Sum over facets of weight x the user's share of that facet's value."""
        out = np.zeros((len(profiles), profiles.n_items), np.float32)
        n = np.asarray(profiles.seen.sum(axis=1)).ravel()
        scale = sp.diags(1.0 / np.maximum(n, 1.0))
        for facet, onehot in self.facets.items():
            share = (scale @ (profiles.seen @ onehot)).toarray()  # users x values
            out += np.float32(self.weights[facet]) * np.asarray(share @ onehot.T.toarray(), np.float32)
        return np.where(out > 0, out, -np.inf).astype(np.float32)


def fit_content(history: PairHistory, catalogue: Catalogue, params: ModelParams) -> Content:
    """Facets with at least two values (a facet every item shares says nothing)."""
    kept = {f: catalogue.facets[f].onehot for f in FACETS if catalogue.facets[f].onehot.shape[1] > 1}
    return Content(kept, {"topic": 1.0, "narrator": 0.6, "content_type": 0.4})


def fit_new_releases(history: PairHistory, catalogue: Catalogue, params: ModelParams) -> ItemScores:
    """Items released within two recent half-lives of the cutoff, ranked by their early uptake."""
    window = 2 * params.recent_half_life_days * DAY_S
    fresh = catalogue.released(history.cutoff_s) & (catalogue.release_s > history.cutoff_s - window)
    uptake = history.item_counts()
    return ItemScores(np.where(fresh, np.log1p(uptake) + 1.0, -np.inf).astype(np.float32))


SOURCES: tuple[SourceSpec, ...] = (
    SourceSpec("pop", fit_popularity, False, "distinct users per item, all time"),
    SourceSpec("pop_recent", fit_recent_popularity, False, "distinct users per item, recency-decayed"),
    SourceSpec("ease", fit_ease, True, "EASE item-item model on the whole profile"),
    SourceSpec("ease_recent", fit_ease_recent, True, "EASE on a profile weighting the latest items more"),
    SourceSpec("knn", fit_item_knn, True, "item-kNN, cosine co-occurrence"),
    SourceSpec("ease_session", fit_ease_session, True, "EASE on co-occurrence by users, sittings and sequence"),
    SourceSpec("seq", fit_sequential, True, "next-item transitions from the latest items"),
    SourceSpec("ials", fit_ials, True, "implicit ALS matrix factorisation"),
    SourceSpec("replays", fit_replays, True, "the user's own items, by plays and recency (repeat listening)"),
    SourceSpec("content", fit_content, True, "metadata affinity: topic, narrator, content type"),
    SourceSpec("new", fit_new_releases, False, "recent releases by early uptake"),
)
SOURCE_NAMES: tuple[str, ...] = tuple(s.name for s in SOURCES)


def spec(name: str) -> SourceSpec:
    """The registered source `name`."""
    for s in SOURCES:
        if s.name == name:
            return s
    raise KeyError(f"unknown candidate source {name!r}; registered: {SOURCE_NAMES}")


def fit_sources(
    history: PairHistory, catalogue: Catalogue, params: ModelParams, names: tuple[str, ...] = SOURCE_NAMES
) -> dict[str, Any]:
    """Fit the named sources on `history`."""
    return {name: spec(name).fit(history, catalogue, params) for name in names}
