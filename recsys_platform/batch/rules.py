"""Business rules for recommendation sets: small pure polars functions over a ranked frame.

Every rule has the signature ``rule(frame, ctx, **params) -> frame``. The frame holds one row
per (user, item) sorted by ``user_id, rank`` with ``rank`` 1..n per user, plus the item
columns of `schemas.ITEM_SCHEMA`; a rule returns the same columns in its new order (ranks are
renumbered by `apply_rules`). Filters keep the order of the rows they keep. A rule's kind says
how `apply_rules` counts what it changed: rows removed, rows whose position changed, or both.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal, get_type_hints

import numpy as np
import polars as pl

logger = logging.getLogger(__name__)

FILTER, REORDER, MIXED = "filter", "reorder", "mixed"
ENTITY_ITEM, ENTITY_SERIES = "item", "series"
# Polars' hash is stable within one polars version, which is what "stable within a day" needs.
_SHUFFLE_SEED = 0x5EED


@dataclass
class RuleContext:
    """What rules may look at besides the frame: the day, profiles, recent completions, searches."""

    today: date
    users: pl.DataFrame  # user_id, household_type, language, ...
    completions: pl.DataFrame = field(
        default_factory=lambda: pl.DataFrame(
            schema={"user_id": pl.String, "item_id": pl.String, "event_time": pl.Datetime("us", "UTC")}
        )
    )
    searches: pl.DataFrame = field(
        default_factory=lambda: pl.DataFrame(schema={"user_id": pl.String, "query": pl.String})
    )
    now: datetime | None = None
    # (user_id, item_id, favourite) of every item the user has played: what `max_replays` counts as a replay.
    played: pl.DataFrame = field(
        default_factory=lambda: pl.DataFrame(
            schema={"user_id": pl.String, "item_id": pl.String, "favourite": pl.Boolean}
        )
    )

    def as_of(self) -> datetime:
        """The instant rules measure "recent" from (end of `today` unless `now` is given)."""
        return self.now or datetime.combine(self.today + timedelta(days=1), datetime.min.time(), UTC)


@dataclass(frozen=True)
class RuleSpec:
    """A registered rule: its function and how its effect is counted."""

    name: str
    fn: Callable[..., pl.DataFrame]
    kind: str

    def params(self) -> dict[str, inspect.Parameter]:
        """Keyword parameters the rule accepts (everything after frame and ctx)."""
        return dict(list(inspect.signature(self.fn).parameters.items())[2:])

    def param_types(self) -> dict[str, Any]:
        """Annotated type of each parameter."""
        hints = get_type_hints(self.fn)
        return {name: hints[name] for name in self.params()}


RULES: dict[str, RuleSpec] = {}


def rule(kind: str) -> Callable[[Callable[..., pl.DataFrame]], Callable[..., pl.DataFrame]]:
    """Register a function as a rule of the given kind under its own name."""

    def register(fn: Callable[..., pl.DataFrame]) -> Callable[..., pl.DataFrame]:
        RULES[fn.__name__] = RuleSpec(fn.__name__, fn, kind)
        return fn

    return register


def _user_starts(frame: pl.DataFrame) -> np.ndarray | None:
    """Mask of each user's first row when every user's rows are contiguous and users ascend (as rules keep
    them), else None: the condition for the numpy passes below to equal their `over("user_id")` forms."""
    users = frame["user_id"]
    new = np.ones(frame.height, bool)
    if frame.height > 1:  # row against row before by two slices, no shifted copy: 2.1 ms on 500k rows against 2.9
        new[1:] = (users.slice(1) != users.slice(0, frame.height - 1)).fill_null(True).to_numpy()
    firsts = users.filter(pl.Series(new))
    return new if (firsts.slice(1) > firsts.slice(0, firsts.len() - 1)).all() else None


def _offsets(starts: np.ndarray) -> np.ndarray:
    """0-based offset of each row from the last row before it (itself included) where `starts` is True
    (rows before the first True count from row 0)."""
    # each run's first row repeated over the run: 0.8 ms on 500k rows where a running maximum took 3.3
    first = np.r_[0, np.flatnonzero(starts[1:]) + 1] if len(starts) else np.zeros(0, np.int64)
    return np.arange(len(starts)) - np.repeat(first, np.diff(np.r_[first, len(starts)]))


def _run_numbers(starts: np.ndarray) -> np.ndarray:
    """Per row, how many rows up to it (itself included) have `starts` set (`np.cumsum(starts)` as int64): a
    repeat over the runs takes 0.3 ms on 500k rows where the cumulative sum of booleans took 2.2."""
    first = np.flatnonzero(starts)
    return np.repeat(np.arange(len(first) + 1, dtype=np.int64), np.diff(np.r_[0, first, len(starts)]))


def _position(frame: pl.DataFrame) -> pl.Series:
    """0-based position of each row within its user's rows, in row order (as `int_range().over("user_id")`)."""
    if frame.height == 0:
        return pl.Series("_pos", [], dtype=pl.Int64)
    starts = _user_starts(frame)
    if starts is None:
        return frame.select(_pos=pl.int_range(pl.len()).over("user_id").cast(pl.Int64)).to_series()
    return pl.Series("_pos", _offsets(starts), dtype=pl.Int64)


def _user_key(frame: pl.DataFrame) -> pl.Series | pl.Expr:
    """A sort key ordering users as `user_id` does: an integer per user when rows come user by user in
    ascending order (sorting on it is much cheaper than on the strings), else `user_id` itself."""
    starts = _user_starts(frame) if frame.height else None
    return pl.col("user_id") if starts is None else pl.Series("_user", _run_numbers(starts))


def _sorted_by_user(frame: pl.DataFrame, *by: str | pl.Expr) -> pl.DataFrame:
    """`frame.sort(["user_id", *by])`, with the user key of `_user_key`."""
    return frame.with_columns(_user=_user_key(frame)).sort(["_user", *by]).drop("_user")


def _codes(frame: pl.DataFrame, column: str) -> pl.Series:
    """An integer per distinct value of `column` (null stays null): what equality tests need, without the
    sort of strings a dense rank costs."""
    col = frame[column]
    if col.dtype == pl.String:
        return col.cast(pl.Categorical).to_physical().cast(pl.Int64)
    return col.rank("dense").cast(pl.Int64)


def _running_count(frame: pl.DataFrame, flag: pl.Series) -> pl.Series:
    """Per row, how many of its user's rows up to it (itself included) have `flag` set
    (as `flag.cum_sum().over("user_id")`)."""
    starts = _user_starts(frame) if frame.height else None
    if starts is None:
        return (
            frame.select("user_id", _n=flag).select(pl.col("_n").cast(pl.Int64).cum_sum().over("user_id")).to_series()
        )
    return _run_counts(starts, flag.to_numpy())


def _run_counts(starts: np.ndarray, flag: np.ndarray) -> pl.Series:
    """Per row, how many rows of its run of `starts` up to it (itself included) have `flag` set."""
    total = np.cumsum(flag.astype(np.int64))  # cast first: half the time of a cumsum of booleans
    first = np.flatnonzero(starts)
    before = np.repeat(total[first] - flag[first], np.diff(np.r_[first, len(starts)]))
    return pl.Series("_n", total - before)


def _rerank(frame: pl.DataFrame, key: pl.Expr) -> pl.DataFrame:
    """Order each user's rows by `key` (ties keep the current rank order)."""
    return _sorted_by_user(frame.with_columns(_key=key), "_key", "rank").drop("_key")


# --- filters -----------------------------------------------------------------------


@rule(FILTER)
def content_type(
    frame: pl.DataFrame, ctx: RuleContext, include: list[str] | None = None, exclude: list[str] | None = None
) -> pl.DataFrame:
    """Keep items of the `include` content types (all when omitted), minus the `exclude` ones."""
    keep = pl.lit(True)
    if include:
        keep &= pl.col("content_type").is_in(include)
    if exclude:
        keep &= ~pl.col("content_type").is_in(exclude)
    return frame.filter(keep)


@rule(FILTER)
def new_content_only(frame: pl.DataFrame, ctx: RuleContext, days: int = 14) -> pl.DataFrame:
    """Keep items released in the last `days` days (and not in the future)."""
    since = ctx.today - timedelta(days=days)
    return frame.filter((pl.col("release_date") > since) & (pl.col("release_date") <= ctx.today))


@rule(FILTER)
def language(frame: pl.DataFrame, ctx: RuleContext, fallback: list[str] | None = None) -> pl.DataFrame:
    """Keep items in the user's language or one of the `fallback` languages (e.g. ["en"])."""
    users = ctx.users.select("user_id", _user_language=pl.col("language"))
    ok = pl.col("language") == pl.col("_user_language")
    if fallback:
        ok |= pl.col("language").is_in(fallback)
    return frame.join(users, on="user_id", how="left", maintain_order="left").filter(ok).drop("_user_language")


@rule(FILTER)
def kids_guard(frame: pl.DataFrame, ctx: RuleContext, adult_only: bool = False) -> pl.DataFrame:
    """Kids content only for households with kids; none at all when the set is adult-only."""
    if adult_only:
        return frame.filter(~pl.col("is_kids").fill_null(False))
    families = ctx.users.filter(pl.col("household_type") == "family_with_kids").select("user_id", _family=pl.lit(True))
    return (
        frame.join(families, on="user_id", how="left", maintain_order="left")
        .filter(~pl.col("is_kids").fill_null(False) | pl.col("_family").fill_null(False))
        .drop("_family")
    )


@rule(FILTER)
def exclude_recently_completed(frame: pl.DataFrame, ctx: RuleContext, days: int = 3) -> pl.DataFrame:
    """Drop items the user completed in the last `days` days."""
    end = pl.lit(ctx.as_of(), dtype=pl.Datetime("us", "UTC"))
    recent = (
        ctx.completions.filter((pl.col("event_time") < end) & (pl.col("event_time") >= end - pl.duration(days=days)))
        .select("user_id", "item_id")
        .unique()
    )
    return frame.join(recent, on=["user_id", "item_id"], how="anti", maintain_order="left")


@rule(FILTER)
def series_cap(frame: pl.DataFrame, ctx: RuleContext, max_per_series: int = 2) -> pl.DataFrame:
    """Keep at most `max_per_series` items of the same series per user (the best-ranked ones)."""
    return frame.filter(pl.col("series_id").is_null() | (_nth_in_group(frame, "series_id") < max_per_series))


def _nth_in_group(frame: pl.DataFrame, column: str) -> pl.Series:
    """0-based occurrence of each row's (user, `column`) value in row order (as `int_range().over(user, column)`)."""
    if frame.height == 0:
        return pl.Series("_nth", [], dtype=pl.Int64)
    starts = _user_starts(frame)
    if starts is None:
        return frame.select(_nth=pl.int_range(pl.len()).over("user_id", column).cast(pl.Int64)).to_series()
    null = frame[column].is_null().to_numpy()
    nth = _run_counts(starts, null).to_numpy() - 1  # the nulls' group: a running count
    order, first = _groups(frame, column, starts)
    nth[order] = _offsets(first)
    return pl.Series("_nth", nth)


def _groups(frame: pl.DataFrame, column: str, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows where `column` is not null grouped by (user, `column`), for users in contiguous ascending runs
    (`starts`): (their positions in an order that sorts them stably by group, mask over that order of each
    group's first row). Without the null rows (three in four of a list's series ids) the codes and the sort take
    a fraction of the time."""
    values = frame[column]
    rows = np.flatnonzero(values.is_not_null().to_numpy())
    code = _codes(values.gather(rows).to_frame(), column).to_numpy()
    key = _run_numbers(starts)[rows] * (int(code.max(initial=0)) + 1) + code
    by_group = np.argsort(key, kind="stable")
    sorted_key = key[by_group]
    return rows[by_group], np.r_[True, sorted_key[1:] != sorted_key[:-1]][: len(rows)]


@rule(FILTER)
def search_match(frame: pl.DataFrame, ctx: RuleContext) -> pl.DataFrame:
    """Keep items whose topic or content type is named in the user's last search query.

    A topic or type matches when every word of it (``body_scan`` -> body, scan) is in the
    query; users without a search get no rows. Adds the query as the ``context`` column."""
    words = (
        ctx.searches.select("user_id", "query", word=pl.col("query").str.to_lowercase().str.extract_all(r"[a-z]+"))
        .explode("word")
        .drop_nulls("word")
        .unique(["user_id", "word"])
    )
    starts = _user_starts(frame) if frame.height else None
    if starts is None:
        frame = frame.join(words.select("user_id").unique(), on="user_id", how="semi", maintain_order="left")
        hit = pl.lit(False)
        for facet in ("topic", "content_type"):
            hits = _search_hits(words, frame[facet].unique(), facet).with_columns(**{f"_hit_{facet}": pl.lit(True)})
            frame = frame.join(hits, on=["user_id", facet], how="left", maintain_order="left")
            hit = hit | pl.col(f"_hit_{facet}").fill_null(False)
        out = frame.filter(hit).drop("_hit_topic", "_hit_content_type")
    else:  # users in ascending runs: a row hits when its (user number, value code) is a hit's, on integers
        # (the rule took 67 ms on 1,000 users' 500 rows with two joins on (user_id, value) strings, so 53 ms)
        user = _run_numbers(starts) - 1
        numbers = pl.DataFrame(
            {"user_id": frame["user_id"].filter(pl.Series(starts)), "_user": np.arange(user[-1] + 1)}
        )
        hit = np.zeros(frame.height, bool)
        for facet in ("topic", "content_type"):
            codes = frame[facet].cast(pl.Categorical).to_physical()
            first = codes.arg_unique()  # the distinct values from one row each: a unique() of the strings took 4 ms
            vocab = pl.DataFrame({facet: frame[facet].gather(first), "_code": codes.gather(first)}).drop_nulls()
            hits = _search_hits(words, vocab[facet], facet).join(numbers, on="user_id").join(vocab, on=facet)
            width = int(codes.max() or 0) + 1
            key = pl.Series(user * width) + codes.cast(pl.Int64)  # null where the value is null: no hit
            hit |= key.is_in((hits["_user"] * width + hits["_code"]).implode()).fill_null(False).to_numpy()
        out = frame.filter(pl.Series(hit))
    queries = ctx.searches.select("user_id", context=pl.col("query"))
    out = out.drop("context") if "context" in out.columns else out
    return out.join(queries, on="user_id", how="left", maintain_order="left")


def _search_hits(words: pl.DataFrame, values: pl.Series, facet: str) -> pl.DataFrame:
    """(user_id, `facet`) of each of the distinct `values` all of whose words are among the user's `words`."""
    vocab = (
        values.to_frame(facet)
        .drop_nulls()
        .with_columns(word=pl.col(facet).str.split("_"), n_words=pl.col(facet).str.split("_").list.len())
        .explode("word")
    )
    return (
        words.join(vocab, on="word")
        .group_by("user_id", facet)
        .agg(pl.len(), pl.first("n_words"))
        .filter(pl.col("len") == pl.col("n_words"))
        .select("user_id", facet)
    )


@rule(FILTER)
def limit(frame: pl.DataFrame, ctx: RuleContext, n: int = 100) -> pl.DataFrame:
    """Keep each user's best `n` rows (bounds the work of the rules after it)."""
    return frame.filter(_position(frame) < n)


# --- aggregation ---------------------------------------------------------------------


@rule(MIXED)
def roll_up_series(frame: pl.DataFrame, ctx: RuleContext) -> pl.DataFrame:
    """Replace the items of a series by one row for the series, at the best rank any of them had."""
    if frame["series_id"].null_count() == frame.height:
        return frame
    starts = _user_starts(frame)
    if starts is not None:  # rows in rank order user by user: a series' row takes the place of its best item
        order, first = _groups(frame, "series_id", starts)
        best = np.fmax.reduceat(frame["score"].to_numpy()[order], np.flatnonzero(first))  # max ignoring NaN
        group_max, leads = np.empty(frame.height), np.zeros(frame.height, bool)
        group_max[order], leads[order[first]] = best[np.cumsum(first) - 1], True
        rolled = pl.col("series_id").is_not_null()
        replaced = {"score": pl.col("_max"), "item_id": pl.col("series_id"), "entity_type": pl.lit(ENTITY_SERIES)}
        replaced["series_position"] = pl.lit(None)
        return (
            frame.with_columns(_max=pl.Series(group_max), _lead=pl.Series(leads))
            .filter(~rolled | pl.col("_lead"))
            .with_columns(pl.when(rolled).then(e).otherwise(c).alias(c) for c, e in replaced.items() if c in frame)
            .drop("_max", "_lead")
        )
    rolled = (
        frame.filter(pl.col("series_id").is_not_null())
        .group_by("user_id", "series_id")
        .agg(pl.exclude("score").first(), score=pl.col("score").max())  # rows arrive in rank order
        .with_columns(item_id=pl.col("series_id"), entity_type=pl.lit(ENTITY_SERIES), series_position=pl.lit(None))
    )
    singles = frame.filter(pl.col("series_id").is_null())
    return _sorted_by_user(pl.concat([singles, rolled.select(frame.columns)], how="vertical_relaxed"), "rank")


# --- freshness and diversity ---------------------------------------------------------


def played_pairs(interactions: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """(user_id, item_id, favourite) of every item each user played (a content start), favourite when they
    also favourited it: the replays the repeat-listen policy counts."""
    return (
        interactions.lazy()
        .filter(pl.col("event_type").is_in(["content_start", "favorite"]))
        .group_by("user_id", "item_id")
        .agg(
            played=(pl.col("event_type") == "content_start").any(),
            favourite=(pl.col("event_type") == "favorite").any(),
        )
        .filter(pl.col("played"))
        .select("user_id", "item_id", "favourite")
        .collect()
    )


def limit_replays(
    frame: pl.DataFrame, played: pl.DataFrame, n: int, top: int, favourites_exempt: bool = True
) -> pl.DataFrame:
    """The repeat-listen policy: at most `n` items the user already played among the first `top` of each list
    (frames sorted by user, rank); further replays move to just after position `top`, in their order.
    Favourites do not count when `favourites_exempt`. Ranks are renumbered; `n` < 0 turns the policy off."""
    if n < 0 or frame.height == 0:
        return frame
    flags = played.select("user_id", "item_id", _fav="favourite", _played=pl.lit(True))
    marked = frame.join(flags, on=["user_id", "item_id"], how="left", maintain_order="left")
    counted = pl.col("_played").fill_null(False)
    if favourites_exempt:
        counted = counted & ~pl.col("_fav").fill_null(False)
    marked = marked.with_columns(_replay=counted)
    demote = pl.col("_replay") & (pl.col("_nth") > n)
    starts = _user_starts(marked)
    if starts is None:
        marked = marked.with_columns(_nth=pl.col("_replay").cast(pl.Int64).cum_sum().over("user_id"))
        kept_pos = (~demote).cast(pl.Int64).cum_sum().over("user_id") - 1  # position among the rows that stay
        user = pl.col("user_id")
    else:  # running counts in numpy, integer user keys: the policy takes 24 ms on 1,000 users' 150 rows, not 37
        marked = marked.with_columns(_nth=_run_counts(starts, marked["_replay"].to_numpy()))
        kept_pos = pl.lit(_run_counts(starts, marked.select(~demote).to_series().to_numpy())) - 1
        user = pl.Series(_run_numbers(starts))
    key = pl.when(demote).then(pl.lit(top - 0.5) + pl.col("_nth") * 1e-9).otherwise(kept_pos.cast(pl.Float64))
    out = (
        marked.with_columns(_key=key, _user=user)
        .drop("_fav", "_played", "_replay", "_nth")  # before the sort: fewer columns to reorder
        .sort("_user", "_key", maintain_order=True)
        .drop("_key", "_user")
    )
    # the sort keeps each user's rows where they were: the runs (and the new ranks) are those of `marked`
    return _renumber(out) if starts is None else out.with_columns(rank=pl.Series(_offsets(starts) + 1))


@rule(REORDER)
def max_replays(
    frame: pl.DataFrame, ctx: RuleContext, n: int = 3, top: int = 10, favourites_exempt: bool = True
) -> pl.DataFrame:
    """At most `n` items the user already played in the first `top` positions (favourites exempt by default);
    further replays move to just after position `top` (`limit_replays`, as the served lists apply it)."""
    return limit_replays(frame, ctx.played, n, top, favourites_exempt)


@rule(REORDER)
def daily_shuffle(frame: pl.DataFrame, ctx: RuleContext, window: int = 4, keep_top: int = 1) -> pl.DataFrame:
    """Shuffle within consecutive windows of `window` ranks, stable per user per day.

    The key is a hash of (user, day, item): the same all day, different the next day. The
    first `keep_top` rows stay in place and no row moves more than `window - 1` places."""
    frame = frame.with_columns(_pos=_position(frame))
    pos = pl.col("_pos")
    noise = pl.concat_str("user_id", pl.lit(ctx.today.isoformat()), "item_id", separator="|").hash(_SHUFFLE_SEED)
    block = pl.when(pos < keep_top).then(pos - keep_top).otherwise((pos - keep_top) // window)
    frame = frame.with_columns(_block=block, _noise=pl.when(pos < keep_top).then(0).otherwise(noise))
    return _sorted_by_user(frame, "_block", "_noise").drop("_block", "_noise", "_pos")


@rule(REORDER)
def max_consecutive(
    frame: pl.DataFrame, ctx: RuleContext, column: Literal["content_type", "topic"] = "content_type", max_run: int = 2
) -> pl.DataFrame:
    """At most `max_run` consecutive rows with the same `column` value where the list allows it.

    The rows past the limit in a run move just after the first row of the next run; repeated
    until nothing changes (a tail with a single value left is kept as it is). Runs on integer
    codes in numpy, each pass only over the users that still have a run too long."""
    if frame.height == 0:
        return frame
    codes = frame.select(
        user=pl.col("user_id").rle_id(),
        value=pl.lit(_codes(frame, column)).fill_null(-1 - pl.int_range(pl.len())),
    )
    perm, converged = _consecutive_order(codes["user"].to_numpy(), codes["value"].to_numpy(), max_run)
    if not converged:
        logger.warning("max_consecutive(%s, %d) did not converge in 50 passes", column, max_run)
    return frame if perm is None else frame[perm]


def _consecutive_order(user: np.ndarray, value: np.ndarray, max_run: int, passes: int = 50):
    """Row order after the `max_consecutive` passes (None when nothing moves) and whether it converged.

    `user` numbers the contiguous blocks of rows of each user, `value` codes the column (nulls unique)."""
    n = len(user)
    first = np.r_[0, np.flatnonzero(np.diff(user)) + 1]
    lengths = np.diff(np.r_[first, n])
    start_of = np.repeat(first, lengths)  # per position: first position of its user (users never move)
    end_of = start_of + np.repeat(lengths, lengths)
    perm = np.arange(n)
    rows = np.arange(n)  # positions of the users still being fixed (each user's positions whole)
    moved = False
    for _ in range(passes):
        v, us = value[perm[rows]], start_of[rows]
        new_run = np.ones(len(rows), bool)
        new_run[1:] = (v[1:] != v[:-1]) | (us[1:] != us[:-1]) | (v[1:] < 0)
        in_run = _offsets(new_run)
        run_lengths = np.diff(np.r_[np.flatnonzero(new_run), len(rows)])
        next_run = rows - in_run + np.repeat(run_lengths, run_lengths)  # position of the next run's first row
        excess = (in_run >= max_run) & (next_run < end_of[rows])
        if not excess.any():
            return (perm if moved else None), True
        # A row past the limit goes just after the next run's first row, after the run's earlier excess rows; the
        # others keep their place. As one integer key per position, distinct within a user (rows of a user lie
        # between 2*start*width and 2*end*width): its stable sort of a mostly sorted array took 0.7 ms on 90k rows
        # where sorting (user, fractional position) took 2.5.
        width = int(in_run.max()) + 1
        key = np.where(excess, (2 * next_run + 1) * width + in_run, 2 * rows * width)
        perm[rows] = perm[rows][np.argsort(key, kind="stable")]
        moved = True
        fixing = np.zeros(n, bool)
        fixing[us[excess]] = True
        rows = rows[fixing[us]]
    return perm, False


@rule(REORDER)
def new_release_slot(
    frame: pl.DataFrame, ctx: RuleContext, days: int = 14, slot: int = 3, count: int = 1
) -> pl.DataFrame:
    """Exploration slot: lift each user's best `count` new releases (last `days` days) to rank `slot`
    when they rank lower; nothing else changes order."""
    since = ctx.today - timedelta(days=days)
    is_new = (pl.col("release_date") > since) & (pl.col("release_date") <= ctx.today)
    pos = pl.lit(_position(frame) + 1)
    nth_new = pl.lit(_running_count(frame, frame.select(is_new.fill_null(False)).to_series())).cast(pl.Float64)
    lift = is_new & (nth_new <= count) & (pos > slot)
    key = pl.when(lift).then(slot - 0.5 + nth_new * 1e-3).otherwise(pos.cast(pl.Float64))
    return _rerank(frame, key)


# --- application -----------------------------------------------------------------------


def _sorted_by_user_rank(frame: pl.DataFrame) -> bool:
    """Whether rows are already ordered by (user_id, rank) (one pass instead of a sort of a 500-deep list)."""
    u, r = pl.col("user_id"), pl.col("rank")
    ok = (u > u.shift(1)) | ((u == u.shift(1)) & (r > r.shift(1)))
    return bool(frame.select(ok.slice(1).all()).item()) if frame.height > 1 else True


def _renumber(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(rank=(_position(frame) + 1).cast(pl.Int64))


def _moved(before: pl.DataFrame, after: pl.DataFrame, same_rows: bool) -> int:
    """Rows that sit at another position among the rows both frames share (frames sorted by user, rank).

    `same_rows`: the rule only reorders. Otherwise the shared rows are found by (user, item) even when
    the heights match (a roll-up of one-item series replaces rows one for one)."""
    if same_rows and before.height == after.height:
        return int((before["item_id"] != after["item_id"]).sum() + (before["user_id"] != after["user_id"]).sum())
    # A row is shared when its (user, item) pair is in the other frame (nulls never match, as in a semi join), and
    # rows are compared by integer codes of both frames' ids (one cast each): 11 ms for the sleep set's roll-up of
    # 1,000 users' 150 rows where two semi joins and a comparison on the strings took 34.
    user, item = (pl.concat([before[c], after[c]]).cast(pl.Categorical).to_physical() for c in ("user_id", "item_id"))
    pair = user.cast(pl.Int64) * ((item.max() or 0) + 1) + item.cast(pl.Int64)
    pair_before, pair_after = pair.head(before.height), pair.tail(after.height)
    shared_before = pair_before.is_in(pair_after.implode()).fill_null(False)  # filters keep row order
    shared_after = pair_after.is_in(pair_before.implode()).fill_null(False)
    if shared_before.sum() != shared_after.sum():  # duplicates; count by rank instead
        return int(shared_after.sum())
    moved = 0
    for codes in (user, item):
        moved += (
            codes.head(before.height).filter(shared_before) != codes.tail(after.height).filter(shared_after)
        ).sum()
    return int(moved)


@dataclass(frozen=True)
class RuleStep:
    """One configured rule of a set: its name and parameters."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


def ranked_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` as rules receive it: sorted by (user_id, rank), ranks renumbered 1..n, with an entity_type."""
    frame = _renumber(frame if _sorted_by_user_rank(frame) else frame.sort("user_id", "rank"))
    if "entity_type" not in frame.columns:
        frame = frame.with_columns(entity_type=pl.lit(ENTITY_ITEM))
    return frame


def apply_rules(
    frame: pl.DataFrame, steps: list[RuleStep], ctx: RuleContext, ranked: bool = False
) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    """Apply the steps in order; return the frame (ranks renumbered) and per step the rows removed and moved.

    `ranked`: `frame` is already what `ranked_frame` returns (several sets start from one frame)."""
    frame = frame if ranked else ranked_frame(frame)
    counts = []
    for step in steps:
        spec = RULES[step.name]
        out = spec.fn(frame, ctx, **step.params)
        if spec.kind != FILTER or out.height != frame.height:  # a filter that kept every row changed no rank
            out = _renumber(out)
        removed = frame.height - out.height
        moved = 0 if spec.kind == FILTER else _moved(frame, out, same_rows=spec.kind == REORDER)
        counts.append({"rule": step.name, "rows_in": frame.height, "removed": removed, "moved": moved})
        logger.debug("rule %s: %d removed, %d moved", step.name, removed, moved)
        frame = out
    return frame, counts
