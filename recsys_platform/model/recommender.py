"""A fitted recommender: candidate sources, item facts and a scorer as of a cutoff; the only producer of lists.

`fit_serving` fits the sources on every interaction before a cutoff for a given scorer (a registered
ranker or baseline version and the params it was trained with); `Recommender.recommend` turns users
into ranked lists, a block of users at a time; `Recommender.rescore` does the same for users whose
newest events the fitted history does not hold yet (the near-real-time refresh).
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl
from threadpoolctl import threadpool_limits

from recsys_platform.model.candidates import FEATURES, CandidateBlock, ItemStats, allowed_items, candidate_block
from recsys_platform.model.catalogue import Catalogue
from recsys_platform.model.history import PairHistory, Vocabulary
from recsys_platform.model.params import ModelParams
from recsys_platform.model.profiles import Profiles
from recsys_platform.model.sources import fit_sources
from recsys_platform.model.text import resolve_encoder

logger = logging.getLogger(__name__)

BLOCK_USERS = 1000


@dataclass
class Recommender:
    """Fitted sources and a scorer (the ranker, or one source's score) as of a cutoff."""

    params: ModelParams
    catalogue: Catalogue
    history: PairHistory
    sources: dict[str, Any]
    stats: ItemStats
    scorer: Any  # .predict(features) -> scores
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def vocab(self) -> Vocabulary:
        """The users and items the recommender knows."""
        return self.catalogue.vocab

    def with_scorer(self, scorer: Any) -> Recommender:
        """The same fitted sources scored by another scorer (a baseline column, another ranker version)."""
        return Recommender(self.params, self.catalogue, self.history, self.sources, self.stats, scorer, self.facts)

    def block(
        self, rows: np.ndarray, cutoff_s: np.ndarray | None = None, names: tuple[str, ...] = FEATURES
    ) -> tuple[Profiles, CandidateBlock]:
        """Profiles and candidates (with the features `names`) of global user rows `rows`."""
        profiles = Profiles.of(self.history, rows, cutoff_s)
        allowed = allowed_items(profiles, self.catalogue, self.params.exclude_seen, self._recently_completed(profiles))
        encoder = resolve_encoder(self.params.text_encoder)
        return profiles, candidate_block(
            self.sources, self.stats, self.catalogue, profiles, self.params.depth, allowed, encoder, names
        )

    def _recently_completed(self, profiles: Profiles) -> np.ndarray | None:
        """block rows x items: pairs completed within `recent_completion_days` (when seen items are not excluded)."""
        if self.params.exclude_seen:
            return None
        done = profiles.completed_days.tocoo()
        recent = np.zeros((len(profiles), profiles.n_items), bool)
        keep = done.data <= self.params.recent_completion_days
        recent[done.row[keep], done.col[keep]] = True
        return recent

    def recommend(
        self,
        user_ids: pl.Series,
        k: int,
        cutoff_s: np.ndarray | None = None,
        block_users: int = BLOCK_USERS,
        fill: bool = False,
        workers: int = 1,
    ) -> pl.DataFrame:
        """Top-k [user_id, rank, item_id, score] for the known users of `user_ids`, a block of users at a time
        (`workers` blocks at once: `_blocks_at_once`).

        The scorer orders the candidates; with `fill`, lists shorter than k continue with the other
        recommendable items in the order of the recency-weighted EASE score, then popularity (deep batch
        lists), scored below the user's last candidate."""
        return self.recommend_each({"": self.scorer}, user_ids, k, cutoff_s, block_users, fill, workers)[""]

    def recommend_each(
        self,
        scorers: dict[str, Any],
        user_ids: pl.Series,
        k: int,
        cutoff_s: np.ndarray | None = None,
        block_users: int = BLOCK_USERS,
        fill: bool = False,
        workers: int = 1,
    ) -> dict[str, pl.DataFrame]:
        """`recommend` for each of `scorers` over the same candidates, built once per block of users (the
        holdouts score the ranker and every baseline on one candidate set); `workers` blocks at a time."""
        rows_all = self.vocab.user_rows(user_ids)
        keep = rows_all >= 0
        rows_all = rows_all[keep]
        cut_all = None if cutoff_s is None else np.asarray(cutoff_s, np.float64)[keep]

        def one_block(start: int) -> dict[str, tuple[np.ndarray, ...]]:
            """numpy only (no polars): it may run in a forked process."""
            rows = rows_all[start : start + block_users]
            cut = None if cut_all is None else cut_all[start : start + block_users]
            profiles, block = self.block(rows, cut)
            out = {}
            for name, scorer in scorers.items():
                score = np.asarray(scorer.predict(block.features), np.float64) if len(block) else np.zeros(0)
                r, i, s = block.rows, block.items, score
                if fill:
                    r, i, s = self._filled(profiles, r, i, s, k)
                out[name] = _top_k(r, i, s, k, profiles.rows)
            return out

        starts = range(0, len(rows_all), block_users)
        blocks = _blocks_at_once(one_block, starts, workers, scorers.values())
        return {name: _lists_frame([b[name] for b in blocks], self.vocab) for name in scorers}

    def _filled(self, profiles: Profiles, rows, items, score, k: int):
        """Candidates plus every other allowed item, the others ordered by (EASE on the recent profile, popularity)
        and scored below the row's lowest candidate."""
        allowed = allowed_items(profiles, self.catalogue, self.params.exclude_seen, self._recently_completed(profiles))
        allowed[rows, items] = False
        ease = np.where(allowed, self.sources["ease_recent"].score(profiles), -np.inf)
        pop = self.sources["pop"].score(profiles)
        # rank within the row by (ease, pop), both descending; only the first k per row can be needed
        order = np.lexsort((-pop, -np.where(np.isfinite(ease), ease, -1e30)), axis=1)[:, :k]
        tr = np.repeat(np.arange(len(profiles)), order.shape[1])
        ti = order.ravel()
        ok = allowed[tr, ti]
        tr, ti = tr[ok], ti[ok]
        floor = np.full(len(profiles), np.inf)
        finite = np.isfinite(score)
        np.minimum.at(floor, rows[finite], score[finite])
        floor = np.where(np.isfinite(floor), floor, 0.0)
        tail_score = floor[tr] - 1.0 - _run_positions(tr) * 1e-3
        return np.r_[rows, tr], np.r_[items, ti], np.r_[score, tail_score]

    def rescore(
        self,
        interactions: pl.DataFrame,
        users: pl.DataFrame,
        user_ids: list[str],
        cutoff: datetime,
        k: int,
        fill: bool = False,
        block_users: int = BLOCK_USERS,
        signals: pl.DataFrame | None = None,
    ) -> pl.DataFrame:
        """Lists for `user_ids` from their own current interactions and session signals (e.g. the batch rows
        plus events that arrived since), against the fitted sources: the near-real-time refresh."""
        vocab = Vocabulary(pl.Series("user_id", sorted(set(user_ids)), dtype=pl.String), self.vocab.item_ids)
        history = PairHistory.build(interactions, vocab, cutoff, signals, self.params.text_encoder)
        view = Recommender(
            self.params, self.catalogue.with_users(vocab, users), history, self.sources, self.stats, self.scorer
        )
        return view.recommend(vocab.user_ids, k, fill=fill, block_users=block_users)


def _run_positions(rows: np.ndarray) -> np.ndarray:
    """0-based position of each element within its run of equal consecutive `rows`."""
    if not len(rows):
        return np.zeros(0, np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(rows)) + 1]
    return np.arange(len(rows)) - np.repeat(starts, np.diff(np.r_[starts, len(rows)]))


def _top_k(rows: np.ndarray, items: np.ndarray, score: np.ndarray, k: int, users: np.ndarray) -> tuple[np.ndarray, ...]:
    """Best k per block row by score (ties by item), finite scores only: (vocabulary user row, rank, item column,
    score) arrays, ordered by block row and rank."""
    ok = np.isfinite(score)
    rows, items, score = rows[ok], items[ok], score[ok]
    order = np.lexsort((items, -score, rows))
    rows, items, score = rows[order], items[order], score[order]
    rank = _run_positions(rows) + 1
    top = rank <= k
    return users[rows[top]], rank[top].astype(np.int64), items[top], score[top]


def _lists_frame(blocks: list[tuple[np.ndarray, ...]], vocab: Vocabulary) -> pl.DataFrame:
    """[user_id, rank, item_id, score] of `_top_k`'s arrays, block after block."""
    users, rank, items, score = (np.concatenate(parts) for parts in zip(*blocks, strict=True)) if blocks else [[]] * 4
    return pl.DataFrame(
        {
            "user_id": vocab.user_ids.gather(np.asarray(users, np.int64)),
            "rank": np.asarray(rank, np.int64),
            "item_id": vocab.item_ids.gather(np.asarray(items, np.int64)),
            "score": np.asarray(score, np.float64),
        }
    )


# Blocks a run's processes take in turn, at least (below it, forking the processes costs more than it saves).
MIN_BLOCKS_TO_FORK = 8
_forked_task: Callable[[int], Any] | None = None
_fork_lock = threading.Lock()


def _blocks_at_once(one_block: Callable[[int], Any], starts: range, workers: int, scorers: Iterable[Any]) -> list[Any]:
    """`one_block(start)` for every start, in order, `workers` at a time.

    In forked processes when there are enough blocks and every scorer may run after a fork (`FORK_SAFE`: the
    compiled ranker, the numpy evaluator, a column; not a LightGBM Booster, whose OpenMP pool a fork does not
    copy): a block is numpy and native code, but on threads the Python between its calls (a search per row and
    source, the sources' small products) holds the GIL, and two threads gave 1.4 times one thread's speed where two
    processes give ~2 (40k-user world, compiled ranker). The processes share the fitted sources with this one
    (copy-on-write) and return only each block's top-k arrays. A daemonic process (a Celery prefork worker) may
    not have children, and a platform without fork has none: there, and for few blocks, threads."""
    global _forked_task
    if workers <= 1 or len(starts) <= 1:
        return [one_block(start) for start in starts]
    # BLAS held to one thread per block (inherited by forked processes) so the two levels do not oversubscribe
    with threadpool_limits(limits=1, user_api="blas"):
        forkable = (
            len(starts) >= MIN_BLOCKS_TO_FORK
            and all(getattr(s, "FORK_SAFE", False) for s in scorers)
            and "fork" in multiprocessing.get_all_start_methods()
            and not multiprocessing.current_process().daemon
        )
        if not forkable:
            with ThreadPoolExecutor(workers) as pool:
                return list(pool.map(one_block, starts))
        with _fork_lock:  # the task reaches the processes as a global they inherit (a closure does not pickle)
            _forked_task = one_block
            try:
                with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
                    return list(pool.map(_run_forked_task, starts))
            finally:
                _forked_task = None


def _run_forked_task(start: int) -> Any:
    assert _forked_task is not None, "run only in a process forked by _blocks_at_once"
    return _forked_task(start)


def build_vocab(interactions: pl.DataFrame | pl.LazyFrame, items: pl.DataFrame, users: pl.DataFrame) -> Vocabulary:
    """Every user and item of the tables and of the interactions (a lazy scan: only its distinct ids are read)."""
    if isinstance(interactions, pl.LazyFrame):
        ids = [interactions.select(pl.col(c).unique()) for c in ("user_id", "item_id")]
        seen_users, seen_items = (frame.to_series() for frame in pl.collect_all(ids, engine="streaming"))
    else:
        seen_users, seen_items = interactions["user_id"], interactions["item_id"]
    return Vocabulary.build(
        pl.concat([users["user_id"].cast(pl.String), seen_users.cast(pl.String)]),
        pl.concat([items["item_id"].cast(pl.String), seen_items.cast(pl.String)]),
    )


def fit_serving(
    interactions: pl.DataFrame | pl.LazyFrame,
    items: pl.DataFrame,
    users: pl.DataFrame,
    cutoff: datetime,
    params: ModelParams,
    scorer: Any,
    signals: pl.DataFrame | None = None,
) -> Recommender:
    """Fit every source on the interactions before `cutoff` for `scorer` (trained with `params`), with the
    session signals (`model.signals.signal_events`) before it. `interactions` may be a lazy scan: it is then
    aggregated into pairs as it is read, never held whole."""
    vocab = build_vocab(interactions, items, users)
    catalogue = Catalogue.build(vocab, items, users)
    history = PairHistory.build(interactions, vocab, cutoff, signals, params.text_encoder)
    sources = fit_sources(history, catalogue, params)
    logger.info("serving sources fitted on %d pairs of %d users x %d items", len(history), vocab.n_users, vocab.n_items)
    return Recommender(params, catalogue, history, sources, ItemStats.fit(history), scorer)
