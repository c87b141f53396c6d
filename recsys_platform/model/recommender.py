"""A fitted recommender: candidate sources, item facts and a scorer as of a cutoff; the only producer of lists.

`fit_serving` fits the sources on every interaction before a cutoff for a given scorer (a registered
ranker or baseline version and the params it was trained with); `Recommender.recommend` turns users
into ranked lists, a block of users at a time; `Recommender.rescore` does the same for users whose
newest events the fitted history does not hold yet (the near-real-time refresh).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl
from threadpoolctl import threadpool_limits

from recsys_platform.model.candidates import FEATURES, CandidateBlock, ItemStats, allowed_items, candidate_block, runs
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
        (`workers` blocks at once, on threads).

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

        def one_block(start: int) -> dict[str, pl.DataFrame]:
            rows = rows_all[start : start + block_users]
            cut = None if cut_all is None else cut_all[start : start + block_users]
            profiles, block = self.block(rows, cut)
            out = {}
            for name, scorer in scorers.items():
                score = np.asarray(scorer.predict(block.features), np.float64) if len(block) else np.zeros(0)
                tail = self._fill(profiles, block.rows, block.items, score, k) if fill else None
                out[name] = _top_k(block.rows, block.items, score, k, profiles.rows, self.vocab, tail)
            return out

        starts = range(0, len(rows_all), block_users)
        if workers > 1 and len(starts) > 1:
            # Blocks on threads: the candidate arrays are numpy and the scorers compiled code, which release the GIL
            # for most of a block; BLAS is held to one thread per block so the two levels do not oversubscribe.
            with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
                blocks = list(pool.map(one_block, starts))
        else:
            blocks = [one_block(start) for start in starts]
        empty = pl.DataFrame(schema={"user_id": pl.String, "rank": pl.Int64, "item_id": pl.String, "score": pl.Float64})
        return {name: pl.concat([b[name] for b in blocks]) if blocks else empty for name in scorers}

    def _fill(self, profiles: Profiles, rows, items, score, k: int):
        """Every other allowed item after the candidates, at most k per row: (rows, items, scores), each row's
        items in the order of (EASE on the recent profile, popularity), both descending, ties by item index, and
        scored below the row's lowest candidate."""
        allowed = allowed_items(profiles, self.catalogue, self.params.exclude_seen, self._recently_completed(profiles))
        allowed[rows, items] = False
        ease = self.sources["ease_recent"].score(profiles)
        tr, ti = _best_allowed(ease, self.sources["pop"].scores, allowed, k)
        floor = np.full(len(profiles), np.inf)
        finite = np.isfinite(score)
        np.minimum.at(floor, rows[finite], score[finite])
        floor = np.where(np.isfinite(floor), floor, 0.0)
        tail_score = floor[tr] - 1.0 - _run_positions(tr) * 1e-3
        return tr, ti, tail_score

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
    starts, lengths = runs(rows)
    return np.arange(len(rows)) - np.repeat(starts, lengths)


def _sortable_bits(values: np.ndarray) -> np.ndarray:
    """float32 `values` as uint32 in the same order (-0.0 as 0.0; every NaN after +inf): integer keys that carry
    a float's order in 32 bits."""
    bits = (np.asarray(values, np.float32) + np.float32(0.0)).view(np.uint32)  # + 0.0 turns -0.0 into 0.0
    ordered = np.where(bits >> np.uint32(31), ~bits, bits | np.uint32(0x80000000))
    return np.where(np.isnan(values), np.uint32(0xFFFFFFFF), ordered)


def _best_allowed(
    score: np.ndarray, tie_break: np.ndarray, allowed: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, items) of each row's best k allowed items by `score` (rows x items), ties by the shared vector
    `tie_break` (higher first), then by item index: rows ascending, each row's items best first.

    One sort of unique integer keys per row instead of a two-key lexsort: the columns are put in tie-break order
    once, and each key is the score's order-preserving bits above the column's position in that order."""
    n_rows, n_items = score.shape
    by_tie = np.argsort(-np.asarray(tie_break, np.float64), kind="stable")
    score = score[:, by_tie]  # a score that is not finite goes after the finite ones, as -inf
    kept = allowed[:, by_tie] & np.isfinite(score)
    masked = np.where(kept, score, np.float32(-np.inf)).astype(np.float32, copy=False)
    key = _sortable_bits(np.negative(masked)).astype(np.uint64) << np.uint64(32)
    key |= np.arange(n_items, dtype=np.uint64)
    take = min(k, n_items)
    best = np.sort(key, axis=1)[:, :take]
    cols = by_tie[(best & np.uint64(0xFFFFFFFF)).astype(np.intp)]
    rows = np.repeat(np.arange(n_rows), take)
    cols = cols.ravel()
    ok = allowed[rows, cols]
    return rows[ok], cols[ok]


def _by_row_then_score(rows: np.ndarray, items: np.ndarray, score: np.ndarray) -> np.ndarray:
    """The order np.lexsort((items, -score, rows)) gives: by row, then score descending, ties by item.

    When the pairs come in (row, item) order (as `candidate_block` gives them), from one unstable sort of the scores
    (equal scores put back in the pairs' order, which is item order within a row) and one of unique integer keys
    (row, place in that sort): 5 ms for a block's 160k random candidates where the three-key lexsort took 31."""
    n = len(rows)
    d_rows, d_items = np.diff(rows), np.diff(items)
    if n >= 2**31 or not np.all((d_rows > 0) | ((d_rows == 0) & (d_items > 0))):
        return np.lexsort((items, -score, rows))
    by_score = np.argsort(-score)
    ordered = score[by_score]
    tied = np.flatnonzero(ordered[1:] == ordered[:-1])
    if len(tied):  # each run of equal scores back in the pairs' order
        at = np.unique(np.r_[tied, tied + 1])
        run = np.cumsum(np.r_[True, ordered[at[1:]] != ordered[at[:-1]]] | np.r_[True, np.diff(at) > 1])
        by_score[at] = by_score[at][np.lexsort((by_score[at], run))]
    place = np.empty(n, np.int64)
    place[by_score] = np.arange(n)
    key = np.sort((rows.astype(np.int64) << 32) | place)
    return by_score[key & 0xFFFFFFFF]


def _top_k(
    rows: np.ndarray,
    items: np.ndarray,
    score: np.ndarray,
    k: int,
    users: np.ndarray,
    vocab,
    tail: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> pl.DataFrame:
    """Best k per block row by score (ties by item), finite scores only; then, with `tail` ((rows, items, scores)
    already in row order and each row's in rank order, below the row's candidates: `Recommender._fill`), the
    row's tail after its candidates."""
    ok = np.isfinite(score)
    rows, items, score = rows[ok], items[ok], score[ok]
    order = _by_row_then_score(rows, items, score)
    rows, items, score = rows[order], items[order], score[order]
    if tail is not None:  # two runs sorted by row: a stable sort by row merges them, each row's candidates first
        rows = np.r_[rows, tail[0]]
        merged = np.argsort(rows, kind="stable")
        rows, items, score = rows[merged], np.r_[items, tail[1]][merged], np.r_[score, tail[2]][merged]
    rank = _run_positions(rows) + 1
    top = rank <= k
    return pl.DataFrame(
        {
            "user_id": vocab.user_ids.gather(users[rows[top]]),
            "rank": rank[top].astype(np.int64),
            "item_id": vocab.item_ids.gather(items[top]),
            "score": score[top],
        }
    )


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
