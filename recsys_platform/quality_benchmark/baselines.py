"""Reference recommenders for a holdout, fitted on its train rows with the product's own candidate sources.

The rows become a `PairHistory` (one row per user-item pair, first and latest time, count), each baseline
is a source of the product's registry (`recsys_platform.model.sources.spec`) fitted on it with an empty
catalogue (no metadata), and each test user gets the top `k` items the source scores highest among the
items that user has not interacted with in train. So the baselines and the product share the code that
fits and scores them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import polars as pl

from recsys_platform.model.catalogue import Catalogue
from recsys_platform.model.evaluation import evaluate_all
from recsys_platform.model.history import PairHistory, Vocabulary
from recsys_platform.model.params import ModelParams
from recsys_platform.model.profiles import Profiles
from recsys_platform.model.sources import Source, spec
from recsys_platform.quality_benchmark.holdout import ITEM, TIME, USER, per_user_temporal, random_stratified

logger = logging.getLogger(__name__)

# Column title -> name of the candidate source in the product's registry (`model.sources.SOURCES`): lists of
# items the user has not played in train, scored beside the served list with seen items removed ...
BASELINES: dict[str, str] = {"popularity": "pop", "recent popularity": "pop_recent", "item-kNN": "knn", "EASE": "ease"}
# ... and lists of the user's own train items by plays and recency (the product's `replays` source), the
# like-for-like reference for the served list as shown where people replay what they like (it scores 0 where
# no test pair is a replay).
REPLAY_BASELINES: dict[str, str] = {"own replays": "replays"}
EASE_L2_GRID: tuple[float, ...] = (50.0, 100.0, 200.0, 300.0, 500.0, 1000.0, 2000.0)
INNER_TEST_SHARE = 0.2
SCORING_BLOCK = 1024  # users per dense score block


@dataclass(frozen=True)
class EaseChoice:
    """The l2 picked on the inner split and the inner nDCG@k of every l2 tried."""

    l2: float
    inner_ndcg: dict[float, float]
    inner_split: str


def pair_history(train: pl.DataFrame, cutoff_s: float) -> PairHistory:
    """The train rows as a `PairHistory` on a vocabulary of their users and items (every row a play)."""
    pairs = train.group_by(USER, ITEM).agg(
        first_s=pl.col(TIME).min(), last_s=pl.col(TIME).max(), plays=pl.len().cast(pl.Float32)
    )
    vocab = Vocabulary.build(pairs[USER], pairs[ITEM])
    return PairHistory.from_arrays(
        vocab,
        cutoff_s,
        vocab.user_rows(pairs[USER]),
        vocab.item_cols(pairs[ITEM]),
        first_s=pairs["first_s"].to_numpy(),
        last_s=pairs["last_s"].to_numpy(),
        plays=pairs["plays"].to_numpy(),
    )


def fit_baseline(name: str, history: PairHistory, params: ModelParams) -> Source:
    """Fit the registered source `name` (a value of BASELINES) on `history`, without item or user metadata."""
    vocab = history.vocab
    catalogue = Catalogue.build(
        vocab, pl.DataFrame({"item_id": vocab.item_ids}), pl.DataFrame({"user_id": vocab.user_ids})
    )
    return spec(name).fit(history, catalogue, params)


def top_k_unseen(source: Source, history: PairHistory, users: pl.Series, k: int) -> pl.DataFrame:
    """[user_id, item_id, rank] of each user's `k` best-scored items outside their train pairs (ties: item id)."""
    return top_k(source, history, users, k, unseen_only=True)


def top_k(source: Source, history: PairHistory, users: pl.Series, k: int, unseen_only: bool) -> pl.DataFrame:
    """[user_id, item_id, rank] of each user's `k` best-scored items (outside their train pairs when
    `unseen_only`; ties: item id)."""
    rows = history.vocab.user_rows(users)
    if (rows < 0).any():
        unknown = users.filter(pl.Series(rows < 0)).head(3).to_list()
        raise ValueError(f"{int((rows < 0).sum())} users have no train rows, e.g. {unknown}")
    out_users, out_items, out_ranks = [], [], []
    for start in range(0, len(rows), SCORING_BLOCK):
        profiles = Profiles.of(history, rows[start : start + SCORING_BLOCK])
        scores = source.score(profiles)
        if unseen_only:
            seen_r, seen_c = profiles.seen_mask_rows_cols()
            scores[seen_r, seen_c] = -np.inf
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # stable: equal scores in item id order
        keep = np.isfinite(np.take_along_axis(scores, best, axis=1))
        block_users = np.repeat(np.arange(start, start + len(best)), keep.sum(axis=1))
        out_users.append(block_users)
        out_items.append(best[keep])
        out_ranks.append(np.broadcast_to(np.arange(1, best.shape[1] + 1), best.shape)[keep])
    user_idx, item_idx = np.concatenate(out_users), np.concatenate(out_items)
    return pl.DataFrame(
        {
            "user_id": users.gather(user_idx).cast(pl.String),
            "item_id": history.vocab.item_ids.gather(item_idx),
            "rank": np.concatenate(out_ranks).astype(np.int64),
        }
    )


def inner_split(train: pl.DataFrame, protocol: str, seed: int | None) -> tuple[pl.DataFrame, pl.DataFrame, str]:
    """An 80/20 split of the train rows per user, for choices that must not see the test part: random
    (seeded) for the random protocol, else each user's newest 20% by time."""
    if protocol == "random":
        inner_train, inner_test = random_stratified(train, 1.0 - INNER_TEST_SHARE, seed or 0)
        return inner_train, inner_test, f"per-user random 80/20 of the train rows (seed {seed or 0})"
    inner_train, inner_test = per_user_temporal(train, INNER_TEST_SHARE)
    return inner_train, inner_test, "each user's newest 20% of the train rows"


def truth_of(rows: pl.DataFrame) -> pl.DataFrame:
    """Binary truth [user_id, item_id]: every held-out row is a positive."""
    return rows.select(user_id=pl.col(USER), item_id=pl.col(ITEM)).unique()


def pick_ease_l2(
    train: pl.DataFrame, protocol: str, seed: int | None, k: int, grid: tuple[float, ...] = EASE_L2_GRID
) -> EaseChoice:
    """The EASE l2 of `grid` with the best nDCG@k on an inner split of the train rows (ties: the first)."""
    inner_train, inner_test, how = inner_split(train, protocol, seed)
    history = pair_history(inner_train, float(inner_train[TIME].max()) + 1.0)
    users = inner_test[USER].unique().sort()
    truth = truth_of(inner_test)
    scores = {}
    for l2 in grid:
        recs = top_k_unseen(fit_baseline(BASELINES["EASE"], history, ModelParams(ease_l2=l2)), history, users, k)
        scores[l2] = evaluate_all(truth, recs, k)[f"ndcg@{k}"]
    best = max(grid, key=lambda l2: scores[l2])
    logger.info("EASE l2 %s picked on the inner split (%s): nDCG@%d %s", best, how, k, scores)
    return EaseChoice(best, scores, how)


def baseline_params(ease: EaseChoice) -> ModelParams:
    """The product's default source parameters, with the l2 picked on the inner split."""
    return ModelParams(ease_l2=ease.l2)
