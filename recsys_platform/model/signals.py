"""Session signals as the ranker reads them: searches and biometric readings before a cutoff, per user.

Content interactions reach the models through `PairHistory`; the other signals of a session (what the
user searched for, step counts and heart rates from a wearable) come from the raw events as a
`SignalHistory`: the signal events strictly before the cutoff, users coded on the model's vocabulary and
each distinct query embedded once (`model.text`). `SessionState.of` reads the rows of a block of users
into the per-user values the ranker's session features are built from (`model.candidates`).

Like every time feature, these are relative to the user's own latest content interaction, never to the
cutoff: a user held out at their next event (training) and a user re-scored the moment an event arrives
(the near-real-time refresh) get the same values for the same events.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

import numpy as np
import polars as pl

from recsys_platform import schemas
from recsys_platform.model.text import encode, resolve_encoder

RECENT_SEARCHES = 5  # the searches averaged into the recent-intent vector
# Readings from this long before the user's latest play on make the trend (a session's warm-up and more).
BIOMETRIC_WINDOW_S = 30 * 60.0


def signal_events(events: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """The search and biometric events of raw events (EVENT_SCHEMA), one row per event_id, in
    SESSION_SIGNAL_SCHEMA, by time."""
    return (
        events.lazy()
        .filter(pl.col("event_type").is_in(list(schemas.SIGNAL_EVENT_TYPES)))
        .filter(pl.col("event_id").is_first_distinct())
        .select([pl.col(c).cast(t) for c, t in schemas.SESSION_SIGNAL_SCHEMA.items()])
        .sort("event_time", "event_id")
        .collect()
    )


def touched_signals(
    batch: pl.DataFrame | pl.LazyFrame | None, recent_events: pl.DataFrame, user_ids: list[str]
) -> pl.DataFrame:
    """The signals of `user_ids`: their rows of the batch `session_signals` table plus those of the raw events
    that arrived since, deduplicated by event_id (the refresh's counterpart of `touched_interactions`)."""
    new = signal_events(recent_events.lazy().filter(pl.col("user_id").is_in(user_ids)))
    if batch is None:
        return new
    base = schemas.conform(
        batch.lazy().filter(pl.col("user_id").is_in(user_ids)).collect(), schemas.SESSION_SIGNAL_SCHEMA
    )
    return pl.concat([base, new.join(base.select("event_id"), on="event_id", how="anti")]).sort(
        "event_time", "event_id"
    )


@dataclass
class SignalHistory:
    """Signal events before `cutoff_s`, sorted by user row then time; queries coded into `query_vectors`."""

    encoder: str
    user: np.ndarray  # int64 vocabulary row
    time_s: np.ndarray  # float64 epoch seconds
    query: np.ndarray  # int64 row of query_vectors, -1: not a search
    steps: np.ndarray  # float64, NaN: no reading
    heart_rate: np.ndarray  # float64, NaN: no reading
    queries: tuple[str, ...]  # the distinct search texts, in query_vectors' order

    @cached_property
    def query_vectors(self) -> np.ndarray:
        """float32 (distinct queries, dim), unit length. Encoded on first use: only the search features read them,
        and encoding (with MiniLM, loading the model) is wasted on every history whose features do not."""
        return encode(list(self.queries), self.encoder)

    def of_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions, block row) of the signals of global user rows `rows`, in the history's order (by user, then
        time); a user repeated in `rows` maps to its last position. A binary search per user: a block's users, not
        a pass over everyone's signals (at 1M users, a block at a time, that pass grew with users squared)."""
        order = np.argsort(rows, kind="stable")
        ranked = rows[order]
        last = np.r_[ranked[1:] != ranked[:-1], True] if len(ranked) else np.zeros(0, bool)
        users, position = ranked[last], order[last]  # each user once, ascending, at its last position in `rows`
        lo = np.searchsorted(self.user, users, side="left")
        counts = np.searchsorted(self.user, users, side="right") - lo
        starts = np.cumsum(counts) - counts
        at = np.repeat(lo - starts, counts) + np.arange(int(counts.sum()))
        return at.astype(np.int64), np.repeat(position, counts).astype(np.int64)

    @classmethod
    def build(
        cls, signals: pl.DataFrame, user_rows: Callable[[pl.Series], np.ndarray], cutoff: datetime, encoder: str
    ) -> SignalHistory:
        """The rows of `signals` (SESSION_SIGNAL_SCHEMA) strictly before `cutoff` of the users `user_rows` (a
        vocabulary's `Vocabulary.user_rows`: -1 for an unknown user) knows. Taking the lookup, not the vocabulary,
        keeps `model.history` (which builds this) the only one of the two that imports the other."""
        encoder = resolve_encoder(encoder)
        frame = signals.filter(pl.col("event_time") < pl.lit(cutoff, dtype=pl.Datetime("us", "UTC")))
        user = user_rows(frame["user_id"])
        keep = user >= 0
        frame = frame.filter(pl.Series(keep))
        user = user[keep]
        is_search = (frame["event_type"] == "search").to_numpy() & frame["query"].is_not_null().to_numpy()
        text = frame["query"].fill_null("").str.to_lowercase().str.strip_chars()
        distinct = text.filter(pl.Series(is_search)).unique().sort()
        code = (
            pl.DataFrame({"q": text})
            .join(
                pl.DataFrame({"q": distinct, "c": np.arange(distinct.len())}), on="q", how="left", maintain_order="left"
            )["c"]
            .fill_null(-1)
            .to_numpy()
        )
        time_s = frame["event_time"].dt.epoch("us").to_numpy().astype(np.float64) / 1e6
        order = np.lexsort((time_s, user))
        return cls(
            encoder=encoder,
            user=user[order],
            time_s=time_s[order],
            query=np.where(is_search, code, -1)[order],
            steps=frame["steps"].fill_null(np.nan).to_numpy().astype(np.float64)[order],
            heart_rate=frame["heart_rate"].fill_null(np.nan).to_numpy().astype(np.float64)[order],
            queries=tuple(distinct.to_list()),
        )


@dataclass
class SessionState:
    """Per user of a block (block-local rows): their latest searches and biometric readings, relative to
    their latest content interaction `last_play_s`."""

    search_vec: np.ndarray  # float32 (n, dim): the latest search (zeros: none)
    recent_search_vec: np.ndarray  # float32 (n, dim): mean of the latest RECENT_SEARCHES, unit length
    search_after_min: np.ndarray  # minutes from the latest play to the latest search (NaN: no search)
    steps_trend: np.ndarray  # steps per minute, per minute, over the readings of the window (NaN: < 2)
    heart_rate_trend: np.ndarray
    steps_rise: np.ndarray  # the latest reading minus the mean of the user's earlier ones (NaN: < 2)
    heart_rate_rise: np.ndarray
    bio_after_min: np.ndarray  # minutes from the latest play to the latest reading (NaN: no reading)
    anchor_s: np.ndarray  # the user's latest event of any kind (play or signal); NaN: none

    @classmethod
    def of(
        cls, signals: SignalHistory, rows: np.ndarray, last_play_s: np.ndarray, cutoff_s: np.ndarray
    ) -> SessionState:
        """The state of global user rows `rows` from their signals before their own `cutoff_s`."""
        n = len(rows)
        at, r = signals.of_rows(rows)
        mine = signals.time_s[at] < cutoff_s[r]
        at, r = at[mine], r[mine]
        t, q, steps, heart = signals.time_s[at], signals.query[at], signals.steps[at], signals.heart_rate[at]
        dim = signals.query_vectors.shape[1]
        out = cls(
            search_vec=np.zeros((n, dim), np.float32),
            recent_search_vec=np.zeros((n, dim), np.float32),
            search_after_min=np.full(n, np.nan),
            steps_trend=np.full(n, np.nan),
            heart_rate_trend=np.full(n, np.nan),
            steps_rise=np.full(n, np.nan),
            heart_rate_rise=np.full(n, np.nan),
            bio_after_min=np.full(n, np.nan),
            anchor_s=last_play_s.astype(np.float64).copy(),
        )
        if len(r):
            latest = np.full(n, -np.inf)
            np.maximum.at(latest, r, t)
            out.anchor_s = np.fmax(out.anchor_s, np.where(np.isfinite(latest), latest, np.nan))
        out._searches(r, t, q, signals.query_vectors, last_play_s)
        for values, trend, rise in (
            (steps, out.steps_trend, out.steps_rise),
            (heart, out.heart_rate_trend, out.heart_rate_rise),
        ):
            ok = np.isfinite(values)
            trend[:] = _slopes(r[ok], t[ok], values[ok], last_play_s, n)
            rise[:] = _rises(r[ok], values[ok], n)
        reading = np.isfinite(steps) | np.isfinite(heart)
        out.bio_after_min = _latest_after(r[reading], t[reading], last_play_s, n)
        return out

    def _searches(self, r, t, q, vectors, last_play_s) -> None:
        s = q >= 0
        r, t, q = r[s], t[s], q[s]
        if not len(r):
            return
        # rows are sorted by user then time: a user's searches are a run, the latest last
        ends = np.r_[np.flatnonzero(np.diff(r)) + 1, len(r)] - 1
        self.search_vec[r[ends]] = vectors[q[ends]]
        self.search_after_min[r[ends]] = (t[ends] - last_play_s[r[ends]]) / 60.0
        from_end = np.repeat(ends, np.diff(np.r_[0, ends + 1])) - np.arange(len(r))
        # summed oldest first, as np.add.at would (a user once per step, so plain fancy-index adds): np.add.at took
        # 17 ms of a 1000-user block's ~550
        for back in range(RECENT_SEARCHES - 1, -1, -1):
            step = from_end == back
            self.recent_search_vec[r[step]] += vectors[q[step]]
        norm = np.linalg.norm(self.recent_search_vec, axis=1, keepdims=True)
        self.recent_search_vec /= np.where(norm > 0, norm, 1.0)


def _slopes(r: np.ndarray, t: np.ndarray, y: np.ndarray, last_play_s: np.ndarray, n: int) -> np.ndarray:
    """Least-squares slope of `y` per minute over each user's readings from BIOMETRIC_WINDOW_S before their
    latest play on (NaN with fewer than two)."""
    w = t >= last_play_s[r] - BIOMETRIC_WINDOW_S
    r, y = r[w], y[w]
    x = (t[w] - last_play_s[r]) / 60.0
    c = np.bincount(r, minlength=n).astype(np.float64)
    sx, sy = np.bincount(r, x, n), np.bincount(r, y, n)
    sxx, sxy = np.bincount(r, x * x, n), np.bincount(r, x * y, n)
    den = c * sxx - sx * sx
    ok = (c >= 2) & (den > 1e-9)
    return np.where(ok, (c * sxy - sx * sy) / np.where(ok, den, 1.0), np.nan)


def _rises(r: np.ndarray, y: np.ndarray, n: int) -> np.ndarray:
    """Each user's latest value minus the mean of their earlier ones (rows sorted by user, time)."""
    if not len(r):
        return np.full(n, np.nan)
    ends = np.r_[np.flatnonzero(np.diff(r)) + 1, len(r)] - 1
    c = np.bincount(r, minlength=n).astype(np.float64)
    total = np.bincount(r, y, n)
    last = np.full(n, np.nan)
    last[r[ends]] = y[ends]
    earlier = (total - np.nan_to_num(last)) / np.maximum(c - 1, 1)
    return np.where(c >= 2, last - earlier, np.nan)


def _latest_after(r: np.ndarray, t: np.ndarray, last_play_s: np.ndarray, n: int) -> np.ndarray:
    """Minutes from each user's latest play to their latest row in (r, t) (NaN: none)."""
    latest = np.full(n, -np.inf)
    np.maximum.at(latest, r, t)
    return np.where(np.isfinite(latest), (latest - last_play_s) / 60.0, np.nan)
