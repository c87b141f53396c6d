"""Synthetic wellness-app data: a catalog, user profiles and a behavioural event stream.

Two taste modes (`GeneratorConfig.tastes`) decide which item each play picks and when sessions happen:

* ``"latent"``: utility = hidden user . item factors (`latent_tastes.py`) + a shared item quality
  + a release-recency bump; sessions fall around a hidden per-user hour. Item metadata
  correlates with the item factors (as genres do), but choices and session times read no
  profile column and no metadata besides the release date, and the factors are never written
  out, so a model has to learn tastes from behaviour. The one exception is the kids rule (kids
  items only for ``household_type == "family_with_kids"``), a hard filter the product applies
  too. Collaborative filtering beats popularity clearly on it without being near-perfect
  (benchmarks/synthetic_tastes.py). The quickstart's default.
* ``"profile"`` (the config's default, kept so tests and benchmarks keep their data): each user has
  favourite topics and narrators and content-type leanings, prefers items in their profile's
  language and near their profile's experience level (which progresses over the window), and
  plays in their profile's preferred daypart, where content types follow the time of day (sleep
  content at night). Each of these terms has a matching ranker feature, so this mode flatters
  the ranker.

Both share the rest: a head-heavy exposure of items, a latent per-user repeat propensity (a few
favourites replayed often), new releases spiking after their release date, completions, bounces
and favourites as functions of utility, searches, biometrics and late arrivals. Everything is
vectorized with numpy and deterministic for a seed, an end time and a chunk size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, get_args

import numpy as np
import polars as pl

from recsys_platform import schemas
from recsys_platform.dev.latent_tastes import CANDIDATES, UTILITY_OFFSET, LatentTastes, draw_latent_tastes
from recsys_platform.ingest.event_files import encode_frame
from recsys_platform.ingest.landing import ITEMS_PREFIX, USERS_PREFIX, LandingZone, event_file_key, new_batch_id

logger = logging.getLogger(__name__)

TOPICS_BY_TYPE: dict[str, tuple[str, ...]] = {
    "meditation": ("anxiety", "stress", "gratitude", "self_esteem", "breathing", "body_scan", "focus"),
    "sleep_story": ("fantasy", "nature", "travel", "history", "sleep"),
    "music": ("piano", "ambient", "lofi", "classical"),
    "soundscape": ("rain", "ocean", "forest", "white_noise"),
    "kids": ("bedtime", "calm_kids", "breathing_kids"),
    "movement": ("yoga", "stretching", "walking", "breathing"),
    "focus": ("deep_work", "study", "lofi", "creativity"),
}
TYPE_SHARE = np.array([0.30, 0.18, 0.12, 0.10, 0.08, 0.12, 0.10])
# How much each daypart favours each content type (rows: dayparts, cols: CONTENT_TYPES).
DAYPART_TYPE_BOOST = np.array(
    [
        [0.8, -1.5, 0.0, -0.5, -1.0, 1.0, 0.8],  # morning
        [0.3, -1.5, 0.3, 0.0, -0.5, 0.5, 1.0],  # afternoon
        [0.5, 0.5, 0.3, 0.3, 0.5, -0.2, -0.5],  # evening
        [-0.3, 2.0, 0.2, 1.2, 0.3, -2.0, -2.0],  # night
    ]
)
DAYPART_HOURS = {"morning": (6, 11), "afternoon": (12, 17), "evening": (18, 21), "night": (22, 29)}
COUNTRIES = np.array(["US", "GB", "DE", "FR", "ES", "BR", "JP", "AU", "CA", "IN"])
COUNTRY_LANG = np.array(["en", "en", "de", "fr", "es", "pt", "ja", "en", "en", "en"])
COUNTRY_OFFSET = np.array([-5, 0, 1, 1, 1, -3, 9, 10, -5, 5])
COUNTRY_SHARE = np.array([0.35, 0.12, 0.08, 0.06, 0.06, 0.06, 0.05, 0.06, 0.08, 0.08])
SEARCH_WORDS = {
    "sleep_story": "sleep story bedtime",
    "soundscape": "rain sounds sleep",
    "meditation": "meditation calm",
    "music": "relaxing music",
    "kids": "kids bedtime",
    "movement": "yoga stretch",
    "focus": "focus music work",
}
# Users simulated together: each chunk has its own random stream (and event-id prefix), so the
# dataset depends on the chunk size. `generate_to_landing` holds one chunk's events at a time.
DEFAULT_CHUNK_USERS = 200_000
Tastes = Literal["profile", "latent"]
TASTES: tuple[str, ...] = get_args(Tastes)


@dataclass(frozen=True)
class GeneratorConfig:
    """Size and shape of the synthetic dataset."""

    n_users: int = 10_000
    days: int = 30
    n_items: int | None = None
    seed: int = 42
    end: datetime | None = None
    sessions_per_day: float = 0.55
    wearable_share: float = 0.3
    late_event_share: float = 0.02
    # "profile": tastes partly read from profile columns (the ranker has a feature for each term);
    # "latent": hidden factor tastes that no table holds (see the module docstring).
    tastes: Tastes = "profile"

    def __post_init__(self) -> None:
        if self.tastes not in TASTES:
            raise ValueError(f"unknown tastes {self.tastes!r}; use one of {', '.join(TASTES)}")

    def resolved_end(self) -> datetime:
        """End of the simulated window (default: the current hour, UTC)."""
        end = self.end or datetime.now(UTC)
        return end.replace(minute=0, second=0, microsecond=0, tzinfo=end.tzinfo or UTC)

    def resolved_start(self) -> datetime:
        """Start of the simulated window: `days` before its end."""
        return self.resolved_end() - timedelta(days=self.days)

    def resolved_items(self) -> int:
        """Catalog size; grows slowly with the number of users."""
        return self.n_items or int(min(3000, max(300, 150 * np.log10(max(self.n_users, 10)) ** 1.5)))


@dataclass
class GeneratedCounts:
    """What `generate_to_landing` wrote."""

    items: int
    users: int
    events: int = 0
    files: int = 0


@dataclass
class SyntheticDataset:
    """Generated tables: the catalog, the profiles and the raw events (with arrival times)."""

    items: pl.DataFrame
    users: pl.DataFrame
    events: pl.DataFrame  # RAW_EVENT_SCHEMA + arrival_time


def _make_items(cfg: GeneratorConfig, rng: np.random.Generator, start: datetime) -> pl.DataFrame:
    n = cfg.resolved_items()
    n_narrators = max(12, n // 25)
    type_idx = rng.choice(len(schemas.CONTENT_TYPES), size=n, p=TYPE_SHARE / TYPE_SHARE.sum())
    topics = np.empty(n, dtype=object)
    for t, name in enumerate(schemas.CONTENT_TYPES):
        mask = type_idx == t
        topics[mask] = rng.choice(np.array(TOPICS_BY_TYPE[name]), size=int(mask.sum()))
    narrator_idx = rng.integers(0, n_narrators, size=n)
    level_idx = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    base_dur = np.array([600, 1800, 2400, 3600, 900, 1200, 1800])[type_idx]
    duration = (base_dur * rng.lognormal(0.0, 0.35, size=n)).astype(np.int64).clip(120, 7200)
    # ~8% of the catalog is released during the simulated window (new releases keep arriving)
    window_days = cfg.days
    released_in_window = rng.random(n) < 0.08
    age_days = np.where(
        released_in_window,
        -rng.integers(0, max(window_days, 1), size=n),
        rng.integers(1, 900, size=n),
    )
    release = [(start - timedelta(days=int(a))).date() for a in age_days]
    # series: consecutive items of the same type/topic grouped into courses of 3-7
    series_id = np.full(n, None, dtype=object)
    series_pos = np.full(n, None, dtype=object)
    in_series = rng.random(n) < 0.25
    order = np.flatnonzero(in_series)
    sid = 0
    i = 0
    while i < len(order):
        size = int(rng.integers(3, 8))
        members = order[i : i + size]
        series_id[members] = f"s{sid:04d}"
        series_pos[members] = np.arange(1, len(members) + 1)
        sid += 1
        i += size
    langs = rng.choice(np.array(["en", "de", "fr", "es", "pt", "ja"]), size=n, p=[0.7, 0.06, 0.06, 0.06, 0.06, 0.06])
    ctypes = np.array(schemas.CONTENT_TYPES)[type_idx]
    titles = [
        f"{t.replace('_', ' ').title()} {tp.replace('_', ' ')} #{k}"
        for k, (t, tp) in enumerate(zip(ctypes, topics, strict=True))
    ]
    return pl.DataFrame(
        {
            "item_id": [f"i{k:05d}" for k in range(n)],
            "title": titles,
            "content_type": ctypes,
            "topic": topics.astype(str),
            "narrator": [f"narrator_{k:03d}" for k in narrator_idx],
            "duration_seconds": duration,
            "level": np.array(schemas.LEVELS)[level_idx],
            "series_id": list(series_id),
            "series_position": list(series_pos),
            "language": langs,
            "release_date": release,
            "is_kids": ctypes == "kids",
        },
        schema=schemas.ITEM_SCHEMA,
    )


def _make_users(cfg: GeneratorConfig, rng: np.random.Generator, start: datetime) -> pl.DataFrame:
    n = cfg.n_users
    country = rng.choice(len(COUNTRIES), size=n, p=COUNTRY_SHARE / COUNTRY_SHARE.sum())
    tenure = rng.exponential(300, size=n).astype(np.int64) + rng.integers(0, cfg.days + 1, size=n) * 0
    signup = [(start - timedelta(days=int(t))).date() for t in tenure]
    household = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    return pl.DataFrame(
        {
            "user_id": [f"u{k:07d}" for k in range(n)],
            "signup_date": signup,
            "country": COUNTRIES[country],
            "language": COUNTRY_LANG[country],
            "utc_offset_hours": COUNTRY_OFFSET[country],
            "preferred_daypart": rng.choice(np.array(schemas.DAYPARTS), size=n, p=[0.3, 0.15, 0.2, 0.35]),
            "experience_level": rng.choice(np.array(schemas.LEVELS), size=n, p=[0.55, 0.3, 0.15]),
            "household_type": np.array(schemas.HOUSEHOLD_TYPES)[household],
            "subscription_status": rng.choice(np.array(schemas.SUBSCRIPTION_STATUSES), size=n, p=[0.2, 0.7, 0.1]),
            "push_opt_out": np.zeros(n, bool),
        },
        schema=schemas.USER_SCHEMA,
    )


def _all_topics() -> list[str]:
    return sorted({t for topics in TOPICS_BY_TYPE.values() for t in topics})


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass(frozen=True)
class _ItemArrays:
    """The items as arrays the simulation indexes (one row per item, in `items` order)."""

    topic: np.ndarray  # index into _all_topics()
    content_type: np.ndarray  # index into schemas.CONTENT_TYPES
    narrator: np.ndarray
    level: np.ndarray  # index into schemas.LEVELS
    duration: np.ndarray
    language: np.ndarray
    release_sec: np.ndarray  # release time, seconds since the window's start
    quality: np.ndarray  # shared item quality: the part of behaviour popularity can learn
    exposure: np.ndarray  # how often an item is shown (featured items far more, as in real apps)

    @classmethod
    def of(cls, items: pl.DataFrame, start: datetime, seed: int) -> _ItemArrays:
        """Index the catalog and draw its quality and exposure."""
        topic_index = {t: k for k, t in enumerate(_all_topics())}
        type_index = {t: k for k, t in enumerate(schemas.CONTENT_TYPES)}
        release_sec = np.array(
            [
                (datetime.combine(d, datetime.min.time(), UTC) - start).total_seconds()
                for d in items["release_date"].to_list()
            ]
        )
        item_rng = np.random.default_rng([seed, 2])
        quality = item_rng.normal(0.0, 0.6, size=items.height)
        return cls(
            topic=np.array([topic_index[t] for t in items["topic"].to_list()]),
            content_type=np.array([type_index[t] for t in items["content_type"].to_list()]),
            narrator=np.array([int(n.split("_")[1]) for n in items["narrator"].to_list()]),
            level=np.array([schemas.LEVELS.index(v) for v in items["level"].to_list()]),
            duration=items["duration_seconds"].to_numpy().astype(np.float64),
            language=items["language"].to_numpy(),
            release_sec=release_sec,
            quality=quality,
            exposure=item_rng.lognormal(0.0, 1.0, size=items.height) * np.exp(quality),
        )


@dataclass(frozen=True)
class _ProfileTastes:
    """Profile mode's tastes: drawn per user, and read from the profile's language, daypart and level."""

    topic_aff: np.ndarray  # (users, topics): a few favourite topics
    narr_aff: np.ndarray  # (users, narrators): a couple of favourite narrators
    type_pref: np.ndarray  # (users, content types)
    language: np.ndarray
    base_level: np.ndarray
    progress: np.ndarray  # how fast a user's level grows over the window
    daypart: np.ndarray  # index into schemas.DAYPARTS

    @classmethod
    def draw(
        cls, rng: np.random.Generator, users: pl.DataFrame, cat: _ItemArrays, has_kids: np.ndarray
    ) -> _ProfileTastes:
        """Draw the tastes of `users` and read their profile columns."""
        n_users, n_topics = users.height, len(_all_topics())
        topic_aff = rng.normal(0.0, 0.4, size=(n_users, n_topics))
        fav_topics = rng.integers(0, n_topics, size=(n_users, 3))
        np.put_along_axis(topic_aff, fav_topics, 2.2 + rng.random((n_users, 3)), axis=1)
        n_narr = int(cat.narrator.max()) + 1
        narr_aff = rng.normal(0.0, 0.3, size=(n_users, n_narr))
        np.put_along_axis(narr_aff, rng.integers(0, n_narr, size=(n_users, 2)), 1.6, axis=1)
        type_pref = rng.normal(0.0, 0.7, size=(n_users, len(schemas.CONTENT_TYPES))) + np.log(TYPE_SHARE)
        kids_col = schemas.CONTENT_TYPES.index("kids")
        type_pref[:, kids_col] = np.where(has_kids, type_pref[:, kids_col] + 1.2, -8.0)
        return cls(
            topic_aff=topic_aff,
            narr_aff=narr_aff,
            type_pref=type_pref,
            language=users["language"].to_numpy(),
            base_level=np.array([schemas.LEVELS.index(v) for v in users["experience_level"].to_list()], dtype=float),
            progress=rng.random(n_users) * 1.5,
            daypart=np.array([schemas.DAYPARTS.index(v) for v in users["preferred_daypart"].to_list()]),
        )


def _recency_bump(age_days: np.ndarray) -> np.ndarray:
    """Utility of a new release by its age (unreleased items cannot be played)."""
    return np.where(age_days >= 0, 1.8 * np.exp(-np.clip(age_days, 0, None) / 5.0), -np.inf)


def _profile_session_times(
    rng: np.random.Generator,
    tastes: _ProfileTastes,
    offset: np.ndarray,
    s_user: np.ndarray,
    s_day: np.ndarray,
    start_of_day: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Session start (seconds since the window's start, unwrapped) and daypart: mostly in the preferred daypart."""
    n_s = len(s_user)
    daypart = tastes.daypart[s_user]
    in_habit = rng.random(n_s) < 0.7
    lo = np.array([DAYPART_HOURS[d][0] for d in schemas.DAYPARTS])[daypart]
    hi = np.array([DAYPART_HOURS[d][1] for d in schemas.DAYPARTS])[daypart]
    local_hour = np.where(in_habit, rng.integers(lo, hi + 1), rng.integers(6, 30, size=n_s)) % 24
    s_sec = s_day * 86400.0 + (local_hour - offset[s_user]) * 3600.0 + rng.random(n_s) * 3600.0 - start_of_day
    s_daypart = np.select(
        [
            (local_hour >= 6) & (local_hour < 12),
            (local_hour >= 12) & (local_hour < 18),
            (local_hour >= 18) & (local_hour < 22),
        ],
        [0, 1, 2],
        3,
    )
    return s_sec, s_daypart


def _profile_choices(
    rng: np.random.Generator,
    cat: _ItemArrays,
    tastes: _ProfileTastes,
    p_user: np.ndarray,
    p_time0: np.ndarray,
    p_daypart: np.ndarray,
    level_now: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Item and utility of each play: a content type by taste x time of day, then the best of 24 of that type."""
    n_p = len(p_user)
    pools = [np.flatnonzero(cat.content_type == t) for t in range(len(schemas.CONTENT_TYPES))]
    type_logits = tastes.type_pref[p_user] + DAYPART_TYPE_BOOST[p_daypart]
    chosen_type = np.argmax(type_logits + rng.gumbel(size=type_logits.shape), axis=1)
    k = 24
    cand = np.empty((n_p, k), dtype=np.int64)
    for t, pool in enumerate(pools):
        mask = chosen_type == t
        if pool.size == 0:
            chosen_type[mask] = 0
            continue
        p = cat.exposure[pool] / cat.exposure[pool].sum()
        cand[mask] = pool[rng.choice(pool.size, size=(int(mask.sum()), k), p=p)]
    empty = np.array([pools[t].size == 0 for t in range(len(pools))])
    if empty.any():
        cand[empty[chosen_type]] = pools[0][rng.integers(0, pools[0].size, size=(int(empty[chosen_type].sum()), k))]
    age_days = (p_time0[:, None] - cat.release_sec[cand]) / 86400.0
    lang_pen = np.where(
        cat.language[cand] == tastes.language[p_user][:, None], 0.0, np.where(cat.language[cand] == "en", -0.6, -2.0)
    )
    util = (
        np.take_along_axis(tastes.topic_aff[p_user], cat.topic[cand], axis=1)
        + np.take_along_axis(tastes.narr_aff[p_user], cat.narrator[cand], axis=1)
        + cat.quality[cand]
        - 0.9 * np.abs(cat.level[cand] - level_now[:, None])
        + _recency_bump(age_days)
        + lang_pen
    )
    pick = np.argmax(util + rng.gumbel(size=util.shape), axis=1)
    return cand[np.arange(n_p), pick], util[np.arange(n_p), pick]


def _latent_choices(
    rng: np.random.Generator,
    cat: _ItemArrays,
    tastes: LatentTastes,
    p_user: np.ndarray,
    p_time0: np.ndarray,
    has_kids: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Item and utility of each play: the best of CANDIDATES items drawn by exposure from the whole catalog
    (kids items only in families), by hidden taste + quality + recency."""
    n_p = len(p_user)
    cand = np.empty((n_p, CANDIDATES), dtype=np.int64)
    kids = cat.content_type == schemas.CONTENT_TYPES.index("kids")
    for pool, mask in ((np.flatnonzero(~kids), ~has_kids[p_user]), (np.arange(len(kids)), has_kids[p_user])):
        p = cat.exposure[pool] / cat.exposure[pool].sum()
        cand[mask] = pool[rng.choice(pool.size, size=(int(mask.sum()), CANDIDATES), p=p)]
    age_days = (p_time0[:, None] - cat.release_sec[cand]) / 86400.0
    util = UTILITY_OFFSET + tastes.affinity(p_user, cand) + cat.quality[cand] + _recency_bump(age_days)
    pick = np.argmax(util + rng.gumbel(size=util.shape), axis=1)
    return cand[np.arange(n_p), pick], util[np.arange(n_p), pick]


def _favourites(n_users: int, p_user: np.ndarray, p_item: np.ndarray, p_util: np.ndarray) -> np.ndarray:
    """(users, 2) item indices each user replays: the first chosen play's item and the best one's
    (by utility, over the whole window); -1 for a user without plays."""
    fav = np.full((n_users, 2), -1)
    first_play = np.unique(p_user, return_index=True)
    fav[first_play[0], 0] = p_item[first_play[1]]
    best = np.full(n_users, -np.inf)
    np.maximum.at(best, p_user, p_util)
    is_best = p_util >= best[p_user]
    fav[p_user[is_best], 1] = p_item[is_best]
    fav[:, 0] = np.where(fav[:, 0] < 0, fav[:, 1], fav[:, 0])
    return fav


def _latent_tastes(cfg: GeneratorConfig, items: pl.DataFrame, n_users: int, chunk: int) -> LatentTastes:
    """Internal (and the tests' only way to see them): the hidden tastes of one chunk in latent mode."""
    return draw_latent_tastes(items, n_users, cfg.seed, chunk)


def _simulate_events(
    cfg: GeneratorConfig,
    items: pl.DataFrame,
    users: pl.DataFrame,
    start: datetime,
    chunk: int,
) -> pl.DataFrame:
    """Simulate the event stream of `users` (one chunk) over the window."""
    rng = np.random.default_rng([cfg.seed, 1, chunk])
    n_users, days = users.height, cfg.days
    topics = _all_topics()
    cat = _ItemArrays.of(items, start, cfg.seed)
    has_kids = (users["household_type"] == "family_with_kids").to_numpy()  # a hard filter in both modes
    latent = _latent_tastes(cfg, items, n_users, chunk) if cfg.tastes == "latent" else None
    profile = _ProfileTastes.draw(rng, users, cat, has_kids) if latent is None else None
    repeat_p = rng.beta(1.2, 5.0, size=n_users)
    activity = rng.lognormal(0.0, 0.8, size=n_users)
    activity /= activity.mean()

    # Sessions
    n_sess = rng.poisson(activity * days * cfg.sessions_per_day)
    s_user = np.repeat(np.arange(n_users), n_sess)
    n_s = len(s_user)
    s_day = rng.integers(0, days, size=n_s)
    # Seconds since `start`; `start` need not be midnight, so shift to UTC wall-clock hours.
    start_of_day = start.hour * 3600.0 + start.minute * 60.0
    if profile is not None:
        offset = users["utc_offset_hours"].to_numpy()
        s_sec, s_daypart = _profile_session_times(rng, profile, offset, s_user, s_day, start_of_day)
    else:
        s_sec = s_day * 86400.0 + latent.session_hours(s_user, rng) * 3600.0 - start_of_day
    s_sec = np.mod(s_sec, days * 86400.0)  # wrap sessions across the window edges (no spikes)

    # Plays: 1-3 per session
    n_play = rng.choice([1, 2, 3], size=n_s, p=[0.6, 0.3, 0.1])
    p_sess = np.repeat(np.arange(n_s), n_play)
    p_user = s_user[p_sess]
    n_p = len(p_sess)
    p_time0 = s_sec[p_sess]
    if profile is not None:
        level_now = profile.base_level[p_user] + profile.progress[p_user] * (s_day[p_sess] / max(days, 1)) * 2.0
        p_item, p_util = _profile_choices(rng, cat, profile, p_user, p_time0, s_daypart[p_sess], level_now)
    else:
        p_item, p_util = _latent_choices(rng, cat, latent, p_user, p_time0, has_kids)

    # Favourites: each user replays a couple of items they love.
    fav = _favourites(n_users, p_user, p_item, p_util)
    replay = (rng.random(n_p) < repeat_p[p_user]) & (fav[p_user, 1] >= 0) & (np.arange(n_p) > 0)
    fav_pick = fav[p_user, rng.integers(0, 2, size=n_p)]
    replay &= cat.release_sec[np.maximum(fav_pick, 0)] <= p_time0
    p_item = np.where(replay, fav_pick, p_item)
    p_util = np.where(replay, p_util + 1.0, p_util)

    # Outcomes
    dur = cat.duration[p_item]
    p_complete = _sigmoid(1.1 * (p_util - 1.2))
    completed = rng.random(n_p) < p_complete
    bounce = ~completed & (rng.random(n_p) < _sigmoid(-1.5 * p_util))
    listened = np.where(
        completed, dur, np.where(bounce, rng.uniform(2, 29, size=n_p), dur * rng.uniform(0.1, 0.9, size=n_p))
    )
    # sequential plays within a session
    order = np.lexsort((np.arange(n_p), p_sess))
    start_off = np.zeros(n_p)
    gaps = listened + 30.0
    cum = np.cumsum(gaps[order])
    sess_first = np.r_[True, p_sess[order][1:] != p_sess[order][:-1]]
    base = np.maximum.accumulate(np.where(sess_first, cum - gaps[order], 0.0))
    start_off[order] = cum - gaps[order] - base
    p_start = p_time0 + 60.0 + start_off
    p_end = p_start + listened
    favorite = completed & (rng.random(n_p) < 0.25 * _sigmoid(p_util - 1.0))

    # Searches (before the first play of ~18% of sessions), app opens, biometrics
    searched = rng.random(n_s) < 0.18
    first_idx = np.flatnonzero(np.r_[True, p_sess[1:] != p_sess[:-1]])
    first_type = np.full(n_s, 0)
    first_type[p_sess[first_idx]] = cat.content_type[p_item[first_idx]]
    topic_words = np.array(topics)[cat.topic[p_item[first_idx]]]
    query_topic = np.full(n_s, "", dtype=object)
    query_topic[p_sess[first_idx]] = topic_words
    search_words = np.array([SEARCH_WORDS[t] for t in schemas.CONTENT_TYPES], dtype=object)
    queries = search_words[first_type] + " " + np.char.replace(query_topic.astype(str), "_", " ")

    wearable = rng.random(n_users) < cfg.wearable_share
    move_play = (cat.content_type[p_item] == schemas.CONTENT_TYPES.index("movement")) & wearable[p_user]
    bio_user_daily = np.repeat(np.flatnonzero(wearable), days * 3)
    n_bd = len(bio_user_daily)
    bio_sec = np.tile(np.repeat(np.arange(days), 3), int(wearable.sum())) * 86400.0 + rng.random(n_bd) * 86400.0
    mv = np.flatnonzero(move_play)

    def frame(user_idx, sec, etype, session=None, item=None, listened_s=None, query=None, steps=None, hr=None):
        n = len(user_idx)
        return pl.DataFrame(
            {
                "user_idx": np.asarray(user_idx, dtype=np.int64),
                "sec": np.asarray(sec, dtype=np.float64),
                "event_type": np.full(n, etype),
                "session_idx": np.full(n, -1) if session is None else np.asarray(session, dtype=np.int64),
                "item_idx": np.full(n, -1) if item is None else np.asarray(item, dtype=np.int64),
                "seconds_listened": np.full(n, np.nan) if listened_s is None else np.asarray(listened_s, dtype=float),
                "query": pl.Series([None] * n, dtype=pl.String)
                if query is None
                else pl.Series(list(query), dtype=pl.String),
                "steps": np.full(n, -1) if steps is None else np.asarray(steps, dtype=np.int64),
                "heart_rate": np.full(n, np.nan) if hr is None else np.asarray(hr, dtype=float),
            }
        )

    s_idx = np.arange(n_s)
    parts = [
        frame(s_user, s_sec, "app_open", session=s_idx),
        frame(
            s_user[searched],
            s_sec[searched] + 20.0,
            "search",
            session=s_idx[searched],
            query=queries[searched],
        ),
        frame(p_user, p_start, "content_start", session=p_sess, item=p_item),
        frame(
            p_user[completed],
            p_end[completed],
            "content_complete",
            p_sess[completed],
            p_item[completed],
            listened[completed],
        ),
        frame(
            p_user[~completed],
            p_end[~completed],
            "content_exit",
            p_sess[~completed],
            p_item[~completed],
            listened[~completed],
        ),
        frame(
            p_user[favorite],
            p_end[favorite] + 5.0,
            "favorite",
            session=p_sess[favorite],
            item=p_item[favorite],
        ),
        frame(bio_user_daily, bio_sec, "biometric", steps=rng.poisson(600, n_bd), hr=rng.normal(68, 7, n_bd)),
        frame(
            p_user[mv],
            p_start[mv] - 300.0,
            "biometric",
            steps=rng.poisson(1800, len(mv)),
            hr=rng.normal(95, 8, len(mv)),
        ),
    ]
    ev = pl.concat(parts).filter((pl.col("sec") >= 0) & (pl.col("sec") < days * 86400.0)).sort("sec", "user_idx")
    n_ev = ev.height
    late = rng.random(n_ev) < cfg.late_event_share
    delay = np.where(late, rng.uniform(600, 6 * 3600, n_ev), rng.exponential(15.0, n_ev))
    start_us = int(start.timestamp() * 1_000_000)
    item_ids = items["item_id"]
    user_ids = users["user_id"]
    return (
        ev.with_columns(
            event_id=pl.format("g{}-{}-{}", pl.lit(cfg.seed), pl.lit(chunk), pl.int_range(pl.len())),
            user_id=user_ids.gather(ev["user_idx"]),
            event_time=(pl.lit(start_us) + (pl.col("sec") * 1_000_000).cast(pl.Int64)).cast(pl.Datetime("us", "UTC")),
            arrival_time=(pl.lit(start_us) + ((ev["sec"].to_numpy() + delay) * 1_000_000).astype(np.int64)).cast(
                pl.Datetime("us", "UTC")
            ),
            session_id=pl.when(pl.col("session_idx") >= 0).then(
                pl.format("s{}-{}-{}", pl.lit(cfg.seed), pl.col("user_idx"), pl.col("session_idx"))
            ),
            item_id=pl.when(pl.col("item_idx") >= 0).then(item_ids.gather(ev["item_idx"].clip(0))),
            seconds_listened=pl.col("seconds_listened").fill_nan(None).round(1),
            steps=pl.when(pl.col("steps") >= 0).then(pl.col("steps")),
            heart_rate=pl.col("heart_rate").fill_nan(None).round(1),
        )
        .filter(
            # Events that would arrive after the end of the window have not arrived yet.
            pl.col("arrival_time") < pl.lit(start + timedelta(days=days), dtype=pl.Datetime("us", "UTC"))
        )
        .select([*schemas.RAW_EVENT_SCHEMA, "arrival_time"])
    )


def _catalog_and_profiles(cfg: GeneratorConfig) -> tuple[pl.DataFrame, pl.DataFrame, datetime]:
    start = cfg.resolved_start()
    items = _make_items(cfg, np.random.default_rng([cfg.seed, 0]), start)
    users = _make_users(cfg, np.random.default_rng([cfg.seed, 3]), start)
    return items, users, start


def generate(
    cfg: GeneratorConfig, chunk_users: int = DEFAULT_CHUNK_USERS, users: pl.DataFrame | None = None
) -> SyntheticDataset:
    """Generate the catalog, the users and their events over `cfg.days` days before `cfg.end`;
    `users` (USER_SCHEMA) replaces the generated profiles, e.g. to check what behaviour reads."""
    items, generated, start = _catalog_and_profiles(cfg)
    users = generated if users is None else users
    chunks = [
        _simulate_events(cfg, items, users.slice(off, chunk_users), start, k)
        for k, off in enumerate(range(0, users.height, chunk_users))
    ]
    events = pl.concat(chunks).sort("arrival_time", "event_id")
    logger.info("generated %d items, %d users, %d events", items.height, users.height, events.height)
    return SyntheticDataset(items=items, users=users, events=events)


def generate_to_landing(
    cfg: GeneratorConfig, zone: LandingZone, fmt: str = ".parquet", chunk_users: int = DEFAULT_CHUNK_USERS
) -> GeneratedCounts:
    """Generate the dataset straight into a landing zone one user chunk at a time, so memory holds one
    chunk's events, not everyone's: the same events as `generate` with the same `chunk_users`, in one
    file per (arrival hour, chunk) instead of one per hour."""
    items, users, start = _catalog_and_profiles(cfg)
    _write_tables(items, users, zone, fmt, start)
    counts = GeneratedCounts(items=items.height, users=users.height)
    for k, off in enumerate(range(0, users.height, chunk_users)):
        events = _simulate_events(cfg, items, users.slice(off, chunk_users), start, k)
        counts.events += events.height
        counts.files += _write_events(events.sort("arrival_time", "event_id"), zone, fmt)
        logger.info("chunk %d: %d users, %d events", k, min(chunk_users, users.height - off), events.height)
    counts.files += 2
    return counts


def write_to_landing(ds: SyntheticDataset, zone: LandingZone, fmt: str = ".parquet", batches_per_hour: int = 1) -> int:
    """Write the catalog, the profiles and the events (by arrival hour) into a landing zone."""
    batch_ts = ds.events["arrival_time"].min() if ds.events.height else datetime.now(UTC)
    _write_tables(ds.items, ds.users, zone, fmt, batch_ts)
    return 2 + _write_events(ds.events, zone, fmt, batches_per_hour)


def _write_tables(items: pl.DataFrame, users: pl.DataFrame, zone: LandingZone, fmt: str, batch_ts: datetime) -> None:
    zone.write_bytes(f"{ITEMS_PREFIX}{new_batch_id(batch_ts)}{fmt}", encode_frame(items, fmt))
    zone.write_bytes(f"{USERS_PREFIX}{new_batch_id(batch_ts)}{fmt}", encode_frame(users, fmt))


def _write_events(events: pl.DataFrame, zone: LandingZone, fmt: str, batches_per_hour: int = 1) -> int:
    raw = events.with_columns(hour=pl.col("arrival_time").dt.truncate("1h"))
    n_files = 0
    for (hour,), group in raw.partition_by("hour", as_dict=True, maintain_order=True).items():
        group = group.sort("arrival_time")
        size = -(-group.height // batches_per_hour)
        for b in range(batches_per_hour):
            part = group.slice(b * size, size)
            if part.height == 0:
                continue
            last = part["arrival_time"].max()
            key = event_file_key(hour, fmt, new_batch_id(last))
            zone.write_bytes(key, encode_frame(part.select(list(schemas.RAW_EVENT_SCHEMA)), fmt))
            n_files += 1
    return n_files
