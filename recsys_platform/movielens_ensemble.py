"""Temporal ensemble for MovieLens: session-aware EASE, iALS and time-aware item-item scores, blended.

Components (each a dense user x item score matrix, standardised per user over unseen items):

* ``edlae``: full-rank EDLAE (EASE with a dropout-emphasised, per-item l2) on the same summed Gram
  matrix as ``stack``; its dropout and l2, then how far it moves towards DLAE (``dlae_mix``, a
  per-item rescaling of its columns), then the power of the rating value that weights each of the
  user's ratings in the profile it scores (``rating_power``, 0: binary; judged with the blend weights
  learned for it), are picked on the inner split.
  The rating value only weights the training profile: every held-out rating still counts as positive.
* ``stack``: EASE on the sum of three item Gram matrices: users, 60-second sittings, and
  sequence neighbours (pairs at most 10 ratings apart), l2 = 1000.
* ``ials``: implicit ALS, 64 factors; its l2 is picked on the inner split.
* ``seq``: row-normalised sequence co-occurrence (see ``recsys_platform.temporal``).
* ``ts0``: row-normalised co-occurrence of items rated at the same second by the same user.
* ``sessagg``: ``stack`` applied per same-second sitting, each sitting scaled to equal strength.

Blend weights come from coordinate ascent on nDCG@10 of an inner split of the training part
(per-user random 75/25, like the outer protocol). The components are then refitted on the whole
training part and blended with those weights. The test split is never seen here.

Availability: a title that nobody had rated until more than ``availability_days`` after a user's
last rating was not in the catalogue while that user was active, so the blend ranks it below every
title that was (the slack, or no rule, is picked on the inner split like everything else).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys_platform.factorization import fit_ials_matrix
from recsys_platform.movielens import stratified_split
from recsys_platform.temporal import (
    ease_from_gram,
    edlae_from_gram,
    row_normalise,
    sequence_cooccurrence,
    session_aggregate,
    session_matrix,
)

logger = logging.getLogger(__name__)

COMPONENTS = ("edlae", "ials", "stack", "seq", "ts0", "sessagg")


@dataclass(frozen=True)
class EnsembleConfig:
    """Knobs of the temporal ensemble (set on inner-validation splits of training data, never on test)."""

    stack_l2: float = 1000.0
    session_gap_s: float = 60.0
    seq_window: int = 10
    seq_decay: float = 0.8
    seq_gram_weight: float = 0.5
    ials_factors: int = 64
    ials_alpha: float = 5.0
    ials_reg_grid: tuple[float, ...] = (40.0, 50.0, 60.0)
    ials_iterations: int = 8
    edlae_grid: tuple[tuple[float, float], ...] = tuple(
        (dropout, l2) for dropout in (0.25, 0.33, 0.5) for l2 in (200.0, 300.0, 600.0)
    )
    dlae_mix_grid: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)
    rating_power_grid: tuple[float, ...] = (0.0, 0.5, 1.0)
    inner_ratio: float = 0.75
    weight_grid: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
    weight_rounds: int = 2
    availability_grid: tuple[float | None, ...] = (None, 0.0, 1.0, 3.0, 7.0)
    k: int = 10


@dataclass
class Encoded:
    """Ratings as index arrays over a fixed user and item vocabulary (``ratings``: the rating values, if known)."""

    users: np.ndarray
    items: np.ndarray
    times: np.ndarray
    user_ids: pl.Series
    item_ids: pl.Series
    ratings: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(n_users, n_items) of the vocabulary."""
        return len(self.user_ids), len(self.item_ids)

    def dense(self) -> np.ndarray:
        """Binary user x item matrix (bool)."""
        out = np.zeros(self.shape, dtype=bool)
        out[self.users, self.items] = True
        return out

    def profile(self, rating_power: float = 0.0) -> sp.csr_matrix:
        """User x item matrix with each rating weighted by its value ** ``rating_power`` (0, or no values: binary)."""
        values = np.ones(len(self.users))
        if rating_power and self.ratings is not None:
            values = self.ratings.astype(np.float64) ** rating_power
        return sp.csr_matrix((values, (self.users, self.items)), shape=self.shape)


def encode(frame: pl.DataFrame, user_ids: pl.Series, item_ids: pl.Series) -> Encoded:
    """Map (user_id, item_id, timestamp[, rating]) rows onto the vocabularies; rows with unknown ids are dropped."""
    users = pl.DataFrame({"user_id": user_ids, "u": np.arange(len(user_ids), dtype=np.int64)})
    items = pl.DataFrame({"item_id": item_ids, "i": np.arange(len(item_ids), dtype=np.int64)})
    has_rating = "rating" in frame.columns
    coded = (
        frame.group_by("user_id", "item_id")
        .agg(pl.col("timestamp").min(), *([pl.col("rating").mean()] if has_rating else []))
        .join(users, on="user_id")
        .join(items, on="item_id")
        .sort("u", "i")
    )
    ratings = coded["rating"].to_numpy() if has_rating else None
    return Encoded(
        coded["u"].to_numpy(), coded["i"].to_numpy(), coded["timestamp"].to_numpy(), user_ids, item_ids, ratings
    )


def standardise(scores: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Per-user z-scores over unseen items (float32); seen items get -inf."""
    free = ~seen
    n = np.maximum(free.sum(axis=1, keepdims=True), 1)
    mean = np.where(free, scores, 0.0).sum(axis=1, keepdims=True) / n
    var = np.where(free, (scores - mean) ** 2, 0.0).sum(axis=1, keepdims=True) / n
    z = (scores - mean) / np.where(var > 0, np.sqrt(var), 1.0)
    return np.where(seen, -np.inf, z).astype(np.float32)


# Far below any blend of z-scores, far above -inf (seen): unavailable titles come after available ones.
UNAVAILABLE_PENALTY = np.float32(1000.0)
DAY_S = 86400.0


@dataclass
class Components:
    """Standardised component scores on one training set.

    ``arrival_gap_days[u, i]``: days from user u's last rating to the first rating of item i by anyone
    (> 0: the item appeared after the user was last seen). With ``availability_days`` set, ``blend``
    ranks items whose gap exceeds it below every other unseen item; None turns the rule off.
    """

    seen: np.ndarray
    z: dict[str, np.ndarray] = field(default_factory=dict)
    arrival_gap_days: np.ndarray | None = None
    availability_days: float | None = None
    # The summed item Gram matrix EDLAE and ``stack`` were fitted on (kept for refits of EDLAE variants).
    stack_gram: np.ndarray | None = field(default=None, repr=False)

    def blend(self, weights: dict[str, float]) -> np.ndarray:
        """Weighted sum of the standardised components (seen items -inf, unavailable ones penalised)."""
        out = np.zeros(self.seen.shape, np.float32)
        for name, w in weights.items():
            if w:
                out += np.float32(w) * np.where(self.seen, 0.0, self.z[name])
        if self.availability_days is not None and self.arrival_gap_days is not None:
            out -= UNAVAILABLE_PENALTY * (self.arrival_gap_days > self.availability_days)
        return np.where(self.seen, -np.inf, out)


def arrival_gap_days(enc: Encoded) -> np.ndarray:
    """Days from each user's last rating to each item's first rating (float32, users x items)."""
    n_users, n_items = enc.shape
    times = enc.times.astype(np.float64)
    first_seen = np.full(n_items, np.inf)
    np.minimum.at(first_seen, enc.items, times)
    user_last = np.full(n_users, -np.inf)
    np.maximum.at(user_last, enc.users, times)
    return ((first_seen[None, :] - user_last[:, None]) / DAY_S).astype(np.float32)


def _edlae_name(params: tuple[float, ...]) -> str:
    return "edlae@" + ",".join(f"{p:g}" for p in params)


def _stacked_gram(enc: Encoded, cfg: EnsembleConfig, x: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """(sequence co-occurrence, item Gram of users + sittings + weighted sequence neighbours) of ``enc``."""
    n_items = enc.shape[1]
    gram = (x.T @ x).toarray()
    sittings, _ = session_matrix(enc.users, enc.items, enc.times, n_items, cfg.session_gap_s)
    seq = sequence_cooccurrence(enc.users, enc.items, enc.times, n_items, cfg.seq_window, cfg.seq_decay)
    seq_gram = seq + np.diag(np.diag(gram))
    return seq, gram + (sittings.T @ sittings).toarray() + cfg.seq_gram_weight * seq_gram


def fit_components(
    enc: Encoded,
    cfg: EnsembleConfig,
    ials_regs: tuple[float, ...],
    edlae_params: tuple[tuple[float, ...], ...],
    rating_power: float = 0.0,
) -> Components:
    """Fit every component on ``enc``; one ``ials@<reg>`` / ``edlae@<dropout>,<l2>[,<dlae_mix>]`` entry per setting.

    ``rating_power`` weights the profile the EDLAE entries score (see ``Encoded.profile``); the rest score binary.
    """
    start = time.perf_counter()
    n_users, n_items = enc.shape
    seen = enc.dense()
    x = sp.csr_matrix(seen.astype(np.float64))
    seq, stack_gram = _stacked_gram(enc, cfg, x)
    stack = ease_from_gram(stack_gram, cfg.stack_l2)
    same_second, owners = session_matrix(enc.users, enc.items, enc.times, n_items, 0.0)
    ts0 = (same_second.T @ same_second).toarray()
    np.fill_diagonal(ts0, 0.0)
    raw = {
        "stack": np.asarray(x @ stack),
        "seq": np.asarray(x @ row_normalise(seq)),
        "ts0": np.asarray(x @ row_normalise(ts0)),
        "sessagg": session_aggregate(same_second, owners, stack, n_users),
    }
    profile = enc.profile(rating_power)
    for params in edlae_params:
        raw[_edlae_name(params)] = np.asarray(profile @ edlae_from_gram(stack_gram, *params))
    for reg in ials_regs:
        factors = fit_ials_matrix(x.tocsr(), cfg.ials_factors, cfg.ials_alpha, reg, cfg.ials_iterations, seed=0)
        raw[f"ials@{reg:g}"] = factors.scores()
    z = {name: standardise(s, seen) for name, s in raw.items()}
    comps = Components(seen=seen, z=z, arrival_gap_days=arrival_gap_days(enc), stack_gram=stack_gram)
    logger.info("ensemble components on %d ratings in %.1fs", len(enc.users), time.perf_counter() - start)
    return comps


_DISCOUNT = 1.0 / np.log2(np.arange(2, 1002))


def dense_ndcg(scores: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean binary nDCG@k over users with at least one truth item (scores: higher is better)."""
    users = np.flatnonzero(truth.any(axis=1))
    s, t = scores[users], truth[users]
    top = np.argpartition(-s, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(s, top, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    dcg = (np.take_along_axis(t, top, axis=1) * _DISCOUNT[:k]).sum(axis=1)
    ideal = np.cumsum(_DISCOUNT[:k])[np.minimum(t.sum(axis=1), k) - 1]
    return float(np.mean(dcg / ideal))


def learn_weights(
    comps: Components, truth: np.ndarray, names: tuple[str, ...], cfg: EnsembleConfig
) -> tuple[dict, float]:
    """Coordinate ascent on nDCG@k over a grid of weights; the first component's weight is fixed at 1."""
    weights = {name: 0.0 for name in names}
    weights[names[0]] = 1.0
    best = dense_ndcg(comps.blend(weights), truth, cfg.k)
    for _ in range(cfg.weight_rounds):
        for name in names[1:]:
            for value in cfg.weight_grid:
                trial = weights | {name: value}
                score = dense_ndcg(comps.blend(trial), truth, cfg.k)
                if score > best + 1e-5:
                    best, weights = score, trial
    return weights, best


@dataclass
class TemporalEnsemble:
    """Blend weights and iALS l2 chosen on the inner split, plus the components fitted on all of train."""

    cfg: EnsembleConfig
    weights: dict[str, float]
    ials_reg: float
    edlae_params: tuple[float, float]
    dlae_mix: float
    rating_power: float
    inner_ndcg: float
    components: Components
    inner: Components
    inner_truth: np.ndarray
    encoded: Encoded
    inner_encoded: Encoded

    @property
    def availability_days(self) -> float | None:
        """Slack of the availability rule picked on the inner split (None: off)."""
        return self.components.availability_days

    @property
    def user_ids(self) -> pl.Series:
        """User vocabulary (row order of every matrix)."""
        return self.encoded.user_ids

    @property
    def item_ids(self) -> pl.Series:
        """Item vocabulary (column order of every matrix)."""
        return self.encoded.item_ids

    def scores(self) -> np.ndarray:
        """Blended user x item scores on the full training set (seen items -inf)."""
        return self.components.blend(self.weights)

    def recommend(self, k: int) -> pl.DataFrame:
        """Top-k [user_id, item_id, score, rank] for every training user, seen items excluded."""
        return top_k_frame(self.scores(), self.user_ids, self.item_ids, k)


def top_k_frame(scores: np.ndarray, user_ids: pl.Series, item_ids: pl.Series, k: int) -> pl.DataFrame:
    """Top-k of a dense score matrix as [user_id, item_id, score, rank]; ties broken by item index."""
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(scores, top, axis=1)
    order = np.lexsort((top, -vals), axis=1)
    top, vals = np.take_along_axis(top, order, axis=1), np.take_along_axis(vals, order, axis=1)
    keep = np.isfinite(vals.ravel())
    rows = np.repeat(np.arange(scores.shape[0]), k)
    return pl.DataFrame(
        {
            "user_id": user_ids.gather(rows[keep]),
            "item_id": item_ids.gather(top.ravel()[keep]),
            "score": vals.ravel()[keep].astype(np.float32),
            "rank": np.tile(np.arange(1, k + 1, dtype=np.uint32), scores.shape[0])[keep],
        }
    )


def _keep_best(comps: Components, truth: np.ndarray, names: dict, component: str, k: int) -> tuple[object, dict]:
    """Keep the variant (``names``: setting -> entry) with the best inner nDCG@k as ``component``; drop the rest."""
    scores = {setting: dense_ndcg(comps.z[name], truth, k) for setting, name in names.items()}
    best = max(scores, key=scores.__getitem__)
    comps.z[component] = comps.z.pop(names[best])
    for name in names.values():
        comps.z.pop(name, None)
    return best, scores


def pick_dlae_mix(
    comps: Components, truth: np.ndarray, edlae: tuple[float, float], cfg: EnsembleConfig
) -> tuple[float, dict]:
    """Set ``comps.z["edlae"]`` (fitted with dlae_mix 0) to the grid's best mix by nDCG@k (ties: the earlier)."""
    x = sp.csr_matrix(comps.seen.astype(np.float64))
    gram = comps.stack_gram
    variants, scores = {}, {}
    for mix in cfg.dlae_mix_grid:
        if mix == 0.0:
            variants[mix] = comps.z["edlae"]
        else:
            variants[mix] = standardise(np.asarray(x @ edlae_from_gram(gram, *edlae, mix)), comps.seen)
        scores[mix] = dense_ndcg(variants[mix], truth, cfg.k)
    best = max(scores, key=scores.__getitem__)
    comps.z["edlae"] = variants[best]
    return best, scores


def pick_rating_power(
    comps: Components, enc: Encoded, truth: np.ndarray, edlae: tuple[float, float, float], cfg: EnsembleConfig
) -> tuple[float, dict[str, float], dict]:
    """Blend weights for each rating power of the EDLAE profile; keep the power whose blend has the best nDCG@k.

    Judged on the blend, not on EDLAE alone: on MovieLens the two prefer different powers, and the blend is served.
    ``comps.z["edlae"]`` (fitted on the binary profile) becomes the chosen variant; ties keep the earlier power.
    """
    weights = edlae_from_gram(comps.stack_gram, *edlae)
    binary = comps.z["edlae"]
    variants, fitted, scores = {}, {}, {}
    for power in cfg.rating_power_grid:
        if power == 0.0:
            variants[power] = binary
        else:
            variants[power] = standardise(np.asarray(enc.profile(power) @ weights), comps.seen)
        comps.z["edlae"] = variants[power]
        fitted[power], scores[power] = learn_weights(comps, truth, COMPONENTS, cfg)
    best = max(scores, key=scores.__getitem__)
    comps.z["edlae"] = variants[best]
    return best, fitted[best], scores


def pick_availability(
    comps: Components, weights: dict[str, float], truth: np.ndarray, cfg: EnsembleConfig
) -> tuple[float | None, dict]:
    """Set ``comps.availability_days`` to the grid value with the best nDCG@k (ties: the earlier, None first)."""
    scores = {}
    for days in cfg.availability_grid:
        comps.availability_days = days
        scores[days] = dense_ndcg(comps.blend(weights), truth, cfg.k)
    comps.availability_days = max(scores, key=scores.__getitem__)
    return comps.availability_days, scores


def fit_temporal_ensemble(train: pl.DataFrame, cfg: EnsembleConfig | None = None, seed: int = 0) -> TemporalEnsemble:
    """Choose iALS l2, EDLAE settings, blend weights and the availability slack on an inner split, then refit."""
    cfg = cfg or EnsembleConfig()
    user_ids, item_ids = train["user_id"].unique().sort(), train["item_id"].unique().sort()
    inner_train, inner_val = stratified_split(train, cfg.inner_ratio, seed=seed + 1000)
    inner_enc = encode(inner_train, user_ids, item_ids)
    inner = fit_components(inner_enc, cfg, cfg.ials_reg_grid, cfg.edlae_grid)
    truth = encode(inner_val, user_ids, item_ids).dense()
    reg, ials_scores = _keep_best(inner, truth, {r: f"ials@{r:g}" for r in cfg.ials_reg_grid}, "ials", cfg.k)
    edlae, edlae_scores = _keep_best(inner, truth, {p: _edlae_name(p) for p in cfg.edlae_grid}, "edlae", cfg.k)
    mix, mix_scores = pick_dlae_mix(inner, truth, edlae, cfg)
    power, weights, power_scores = pick_rating_power(inner, inner_enc, truth, (*edlae, mix), cfg)
    availability, availability_scores = pick_availability(inner, weights, truth, cfg)
    inner_ndcg = availability_scores[availability]
    logger.info(
        "inner split: stack %.4f, iALS %s -> l2=%g, EDLAE %s -> %s, DLAE mix %s -> %g, rating power %s -> %g, blend %s,"
        " availability %s -> %s: nDCG@%d %.4f",
        dense_ndcg(inner.z["stack"], truth, cfg.k),
        {f"{k:g}": round(v, 4) for k, v in ials_scores.items()},
        reg,
        {_edlae_name(k): round(v, 4) for k, v in edlae_scores.items()},
        edlae,
        {f"{k:g}": round(v, 4) for k, v in mix_scores.items()},
        mix,
        {f"{k:g}": round(v, 4) for k, v in power_scores.items()},
        power,
        weights,
        {str(k): round(v, 4) for k, v in availability_scores.items()},
        availability,
        cfg.k,
        inner_ndcg,
    )
    enc = encode(train, user_ids, item_ids)
    full = fit_components(enc, cfg, (reg,), ((*edlae, mix),), power)
    full.z["ials"] = full.z.pop(f"ials@{reg:g}")
    full.z["edlae"] = full.z.pop(_edlae_name((*edlae, mix)))
    full.availability_days = availability
    return TemporalEnsemble(cfg, weights, reg, edlae, mix, power, inner_ndcg, full, inner, truth, enc, inner_enc)
