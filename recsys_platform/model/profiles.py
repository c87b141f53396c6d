"""What the models know of the users they score: their rows of a `PairHistory`, as matrices.

A `Profiles` is built for a block of users (a scoring chunk, the touched users of a refresh, the
users of a validation split) from their pairs only, so scoring memory grows with the block, not
with everyone. The same profiles feed every candidate source and the ranker's per-user features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import scipy.sparse as sp

from recsys_platform.model.history import DAY_S, PairHistory
from recsys_platform.model.signals import SessionState, SignalHistory


@dataclass
class Profiles:
    """Users `rows` (global vocabulary rows) and their pairs as block-local matrices (row k = rows[k])."""

    rows: np.ndarray
    seen: sp.csr_matrix  # 1 per consumed (user, item) pair
    order: sp.csr_matrix  # position of the pair from the user's latest (0 = latest), +1 so that 0 means absent
    # Days from the pair's latest interaction to the user's latest interaction (+1e-6 so that 0 means absent):
    # relative to the user's own activity, never to the cutoff, so that a user held out at their next event
    # (training) and a user served now (after any absence) get the same values for the same history.
    age_days: sp.csr_matrix
    engagement: sp.csr_matrix  # completions + favourites - bounces per pair (0 for a plain play)
    plays: sp.csr_matrix  # starts per pair
    bounced: sp.csr_matrix  # 1 per pair with a bounce (a play left within schemas.BOUNCE_SECONDS)
    completed_days: sp.csr_matrix  # days from the pair's latest completion to the cutoff, +1e-6 (absent: never)
    last_s: np.ndarray  # latest interaction time per user (NaN: none)
    first_s: np.ndarray  # first interaction time per user (NaN: none)
    n_items: int
    cutoff_s: np.ndarray  # per user: the time the profile is as of (float64 epoch seconds)
    data_end_s: float  # the end of the history the profiles come from (the newest data anyone has)
    signals: SignalHistory | None = field(default=None, repr=False)  # the history's searches and readings

    @cached_property
    def session(self) -> SessionState | None:
        """Each user's searches and biometric readings before their cutoff (None: the history has no signals).
        Built on first use: only the session features read it, and no kept feature does today."""
        if self.signals is None:
            return None
        return SessionState.of(self.signals, self.rows, self.last_s, self.cutoff_s)

    @classmethod
    def of(cls, history: PairHistory, rows: np.ndarray, cutoff_s: np.ndarray | None = None) -> Profiles:
        """Profiles of global user rows `rows` from their pairs in `history`, as of `cutoff_s` per user
        (default: the history's cutoff for everyone)."""
        rows = np.asarray(rows, np.int64)
        cut = np.full(len(rows), history.cutoff_s) if cutoff_s is None else np.asarray(cutoff_s, np.float64)
        h = history.take(history.pairs_of(rows))
        # each pair's block row (of a repeated user, the last: as assigning rows' positions in order would give),
        # without an array over the whole vocabulary per block
        by_row = np.argsort(rows, kind="stable")
        r = by_row[np.searchsorted(rows[by_row], h.user, side="right") - 1]
        n, m = len(rows), history.vocab.n_items

        def csr(values: np.ndarray) -> sp.csr_matrix:
            out = sp.csr_matrix((np.asarray(values, np.float32), (r, h.item)), shape=(n, m))
            out.sum_duplicates()
            return out

        last = np.full(n, -np.inf)
        np.maximum.at(last, r, h.last_s)
        first = np.full(n, np.inf)
        np.minimum.at(first, r, h.first_s)
        last_s = np.where(np.isfinite(last), last, np.nan)
        return cls(
            rows=rows,
            seen=csr(np.ones(len(h))),
            order=csr(_positions_by_last(r, h.last_s, h.item) + 1.0),
            age_days=csr((last[r] - h.last_s) / DAY_S + 1e-6),
            engagement=csr(h.completes.clip(0, 1) + h.favorites.clip(0, 1) - h.bounces.clip(0, 1)),
            plays=csr(h.plays),
            bounced=csr(h.bounces > 0),
            completed_days=_completed(r, h, cut, n, m),
            last_s=last_s,
            first_s=np.where(np.isfinite(first), first, np.nan),
            n_items=m,
            cutoff_s=cut,
            data_end_s=history.cutoff_s,
            signals=history.signals,
        )

    def __len__(self) -> int:
        return len(self.rows)

    def recency_weighted(self, half_life: float) -> sp.csr_matrix:
        """The seen matrix with each pair weighted 2 ** -(position from the latest / half_life)."""
        out = self.order.copy()
        out.data = np.exp2(-(out.data - 1.0) / half_life).astype(np.float32)
        return out

    def last_items(self, k: int) -> sp.csr_matrix:
        """The user's `k` latest items, weighted 1 for the latest, 1/2 for the one before, ..."""
        out = self.order.copy()
        out.data = np.where(out.data <= k, 1.0 / out.data, 0.0).astype(np.float32)
        out.eliminate_zeros()
        return out

    def seen_mask_rows_cols(self) -> tuple[np.ndarray, np.ndarray]:
        """(row, col) of every seen pair, for masking dense score blocks."""
        coo = self.seen.tocoo()
        return coo.row, coo.col


def _completed(r: np.ndarray, h: PairHistory, cut: np.ndarray, n: int, m: int) -> sp.csr_matrix:
    done = np.isfinite(h.last_complete_s)
    days = (cut[r[done]] - h.last_complete_s[done]) / DAY_S + 1e-6
    out = sp.csr_matrix((days.astype(np.float32), (r[done], h.item[done])), shape=(n, m))
    out.sum_duplicates()
    return out


def _positions_by_last(rows: np.ndarray, last_s: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Per pair: how many of the same user's pairs were last touched after it (ties: by item, descending)."""
    if not len(rows):
        return np.zeros(0, np.float64)
    order = np.lexsort((-items, -last_s, rows))
    sorted_rows = rows[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_rows)) + 1]
    counts = np.diff(np.r_[starts, len(order)])
    pos = np.arange(len(order)) - np.repeat(starts, counts)
    out = np.empty(len(order), np.float64)
    out[order] = pos
    return out
