"""Interactions as the models read them: one row per (user, item) pair, coded on integer vocabularies.

Every model input is built from a `PairHistory`: the content interactions strictly before a cutoff,
aggregated per (user, item) into times, counts and engagement, with users and items replaced by
their positions in a sorted `Vocabulary`. Rows are ordered by user, then first interaction time,
then item, so a user's rows are one contiguous run in the order they were consumed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

DAY_S = 86400.0
TS = pl.Datetime("us", "UTC")


def epoch_s(moment: datetime) -> float:
    """Seconds since the epoch of an aware datetime."""
    return moment.timestamp()


def index_of(ids: pl.Series, vocabulary: pl.Series) -> np.ndarray:
    """Position of each id in `vocabulary` (int64), -1 for ids it does not hold."""
    lookup = pl.DataFrame({"_id": vocabulary, "_idx": np.arange(vocabulary.len(), dtype=np.int64)})
    query = pl.DataFrame({"_id": ids.cast(vocabulary.dtype, strict=False)})
    return query.join(lookup, on="_id", how="left", maintain_order="left")["_idx"].fill_null(-1).to_numpy()


@dataclass(frozen=True)
class Vocabulary:
    """Sorted user and item ids: a user's row and an item's column in every matrix of a model."""

    user_ids: pl.Series
    item_ids: pl.Series

    @classmethod
    def build(cls, users: pl.Series, items: pl.Series) -> Vocabulary:
        """Vocabulary of the distinct, sorted ids."""
        return cls(
            users.cast(pl.String).unique().sort().rename("user_id"),
            items.cast(pl.String).unique().sort().rename("item_id"),
        )

    @property
    def n_users(self) -> int:
        """Number of users."""
        return self.user_ids.len()

    @property
    def n_items(self) -> int:
        """Number of items."""
        return self.item_ids.len()

    def user_rows(self, user_ids: pl.Series | list[str]) -> np.ndarray:
        """Rows of `user_ids` (-1 for unknown users)."""
        return index_of(pl.Series(user_ids, dtype=pl.String), self.user_ids)

    def item_cols(self, item_ids: pl.Series | list[str]) -> np.ndarray:
        """Columns of `item_ids` (-1 for unknown items)."""
        return index_of(pl.Series(item_ids, dtype=pl.String), self.item_ids)


@dataclass
class PairHistory:
    """Content interactions before `cutoff_s`, one row per (user, item) pair (see the module docstring)."""

    vocab: Vocabulary
    cutoff_s: float
    user: np.ndarray  # int64 row
    item: np.ndarray  # int64 column
    first_s: np.ndarray  # float64 epoch seconds of the first interaction with the item
    last_s: np.ndarray  # float64 epoch seconds of the latest
    plays: np.ndarray  # float32 content starts
    completes: np.ndarray  # float32
    favorites: np.ndarray  # float32
    bounces: np.ndarray  # float32
    weight: np.ndarray  # float32 sum of event weights (negative for bounces)
    last_complete_s: np.ndarray  # float64 epoch seconds of the latest completion (NaN: never completed)
    # Derived matrices shared by the sources fitted on this history (the item Gram matrix, EASE weights).
    cache: dict = field(default_factory=dict, repr=False, compare=False)
    # The searches and biometric readings before the cutoff (`model.signals`); None: no signals table given.
    signals: Any = field(default=None, repr=False, compare=False)
    # How many users of the whole base each user here stands for: 1 for a history of every user; n / m for a
    # seeded sample of m of n users, so that item counts and co-occurrences, which grow with the
    # user base, are estimated at the whole base's scale and features fitted on the sample mean what they mean
    # when served on everyone.
    user_weight: float = 1.0

    @classmethod
    def build(
        cls,
        interactions: pl.DataFrame | pl.LazyFrame,
        vocab: Vocabulary,
        cutoff: datetime,
        signals: pl.DataFrame | None = None,
        text_encoder: str = "hashed",
        user_weight: float = 1.0,
    ) -> PairHistory:
        """Aggregate `interactions` (INTERACTION_SCHEMA columns) strictly before `cutoff` onto `vocab`, with the
        session signals of `signals` (schemas.SESSION_SIGNAL_SCHEMA) before it when given; `user_weight`: the
        users each of theirs stands for (a sample of the user base)."""
        cut = pl.lit(cutoff, dtype=TS)
        pairs = (
            interactions.lazy()
            .filter(pl.col("event_time") < cut)
            .group_by("user_id", "item_id")
            .agg(
                first_s=pl.col("event_time").min().dt.epoch("us") / 1e6,
                last_s=pl.col("event_time").max().dt.epoch("us") / 1e6,
                plays=(pl.col("event_type") == "content_start").sum(),
                completes=(pl.col("event_type") == "content_complete").sum(),
                favorites=(pl.col("event_type") == "favorite").sum(),
                bounces=pl.col("is_bounce").sum(),
                weight=pl.col("weight").sum(),
                last_complete_s=pl.col("event_time")
                .filter(pl.col("event_type") == "content_complete")
                .max()
                .dt.epoch("us")
                / 1e6,
            )
            # a lazy scan is aggregated as it is read: at 1M users its 98.5M events held ~6 GB as one frame
            .collect(engine="streaming" if isinstance(interactions, pl.LazyFrame) else "auto")
        )
        u = vocab.user_rows(pairs["user_id"])
        i = vocab.item_cols(pairs["item_id"])
        keep = (u >= 0) & (i >= 0)
        pairs = pairs.filter(pl.Series(keep))
        out = cls.from_arrays(
            vocab,
            epoch_s(cutoff),
            u[keep],
            i[keep],
            **{
                c: pairs[c].to_numpy()
                for c in (
                    "first_s",
                    "last_s",
                    "plays",
                    "completes",
                    "favorites",
                    "bounces",
                    "weight",
                    "last_complete_s",
                )
            },
        )
        out.user_weight = float(user_weight)
        if signals is not None:
            from recsys_platform.model.signals import SignalHistory

            out.signals = SignalHistory.build(signals, vocab.user_rows, cutoff, text_encoder)
        return out

    @classmethod
    def from_arrays(cls, vocab: Vocabulary, cutoff_s: float, user: np.ndarray, item: np.ndarray, **cols) -> PairHistory:
        """A history from parallel arrays (sorted here into user, first time, item order)."""
        first = np.asarray(cols["first_s"], np.float64)
        typed = {
            "user": np.asarray(user, np.int64),
            "item": np.asarray(item, np.int64),
            "first_s": first,
            "last_s": np.asarray(cols.get("last_s", first), np.float64),
            "last_complete_s": np.asarray(cols.get("last_complete_s", np.full(len(user), np.nan)), np.float64),
            **{
                c: np.asarray(cols.get(c, np.zeros(len(user))), np.float32)
                for c in ("plays", "completes", "favorites", "bounces", "weight")
            },
        }
        # np.lexsort((item, first, user)) and a gather per column, on polars' threads: at 1M users (17M pairs) the
        # lexsort took 10.4 s and the gathers 3.8 s of the serving fit, this 4.5 s. The input row breaks full ties
        # (the same order as a stable sort): polars' stable sort took 8.4 s.
        ordered = pl.DataFrame(typed).with_row_index("row").sort("user", "first_s", "item", "row")
        return cls(vocab, float(cutoff_s), **{c: ordered[c].to_numpy(writable=True) for c in typed})

    def __len__(self) -> int:
        return len(self.user)

    def take(self, mask: np.ndarray) -> PairHistory:
        """The rows where `mask` holds (order kept), same vocabulary and cutoff."""
        kw = {
            f.name: getattr(self, f.name)[mask]
            for f in fields(self)
            if f.name not in ("vocab", "cutoff_s", "cache", "signals", "user_weight")
        }
        return PairHistory(self.vocab, self.cutoff_s, **kw, signals=self.signals, user_weight=self.user_weight)

    def pairs_of(self, rows: np.ndarray) -> np.ndarray:
        """Ascending indices of the pairs of the users at `rows` (what a mask of their pairs selects). The pairs are
        in user order (`from_arrays` sorts them, `take` keeps the order), so each user's are a slice found by binary
        search: a block of 1,000 users costs its own pairs, where a mask would read every user's (at 1M users, 30M
        rows for each of 1,000 blocks)."""
        rows = np.unique(np.asarray(rows, np.int64))
        start = np.searchsorted(self.user, rows, side="left")
        count = np.searchsorted(self.user, rows, side="right") - start
        offset = np.repeat(start - np.r_[0, np.cumsum(count)[:-1]], count)
        return np.arange(int(count.sum()), dtype=np.int64) + offset

    def matrix(self, values: np.ndarray | None = None, n_rows: int | None = None) -> sp.csr_matrix:
        """users x items CSR of `values` (default 1.0 per pair)."""
        data = np.ones(len(self), np.float32) if values is None else np.asarray(values, np.float32)
        shape = (n_rows or self.vocab.n_users, self.vocab.n_items)
        m = sp.csr_matrix((data, (self.user, self.item)), shape=shape)
        m.sum_duplicates()
        return m

    def played(self, rows: np.ndarray) -> pl.DataFrame:
        """(user_id, item_id, favourite) of the pairs the users at `rows` played (a content start), favourite when
        they also favourited the item: the replays the repeat-listen policy counts, as `batch.rules.played_pairs`
        reads them off the events."""
        mine = self.pairs_of(rows[rows >= 0])
        picked = mine[self.plays[mine] > 0]
        return pl.DataFrame(
            {
                "user_id": self.vocab.user_ids.gather(self.user[picked]),
                "item_id": self.vocab.item_ids.gather(self.item[picked]),
                "favourite": self.favorites[picked] > 0,
            }
        )

    def user_counts(self) -> np.ndarray:
        """Pairs per user (float64, all users of the vocabulary)."""
        return np.bincount(self.user, minlength=self.vocab.n_users).astype(np.float64)

    def item_counts(self) -> np.ndarray:
        """Distinct users per item (float64, at the whole base's scale: `user_weight`)."""
        return self.item_sums()

    def item_sums(self, values: np.ndarray | None = None) -> np.ndarray:
        """Sum of `values` (default 1 per pair) over each item's pairs, at the whole base's scale (float64)."""
        out = np.bincount(self.item, weights=values, minlength=self.vocab.n_items).astype(np.float64)
        return out * self.user_weight

    def user_last_s(self) -> np.ndarray:
        """Latest interaction time per user (NaN for users without one)."""
        out = np.full(self.vocab.n_users, -np.inf)
        np.maximum.at(out, self.user, self.last_s)
        return np.where(np.isfinite(out), out, np.nan)

    def user_first_s(self) -> np.ndarray:
        """First interaction time per user (NaN for users without one)."""
        out = np.full(self.vocab.n_users, np.inf)
        np.minimum.at(out, self.user, self.first_s)
        return np.where(np.isfinite(out), out, np.nan)

    def item_first_s(self) -> np.ndarray:
        """First interaction time per item by anyone (NaN for items nobody has played)."""
        out = np.full(self.vocab.n_items, np.inf)
        np.minimum.at(out, self.item, self.first_s)
        return np.where(np.isfinite(out), out, np.nan)

    def positions_from_end(self) -> np.ndarray:
        """Per row: how many of the user's pairs came after it (0 = the user's latest item)."""
        if not len(self):
            return np.zeros(0, np.int64)
        starts = np.r_[0, np.flatnonzero(np.diff(self.user)) + 1]
        counts = np.diff(np.r_[starts, len(self)])
        ends = np.repeat(starts + counts, counts)
        return ends - 1 - np.arange(len(self))
