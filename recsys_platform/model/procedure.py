"""The one model path: the training procedure, its evaluation on two protocols, and the gate's choice.

`fit_recommender` is the whole procedure on the interactions it is given: settings read off the
data and picked on an inner per-user split (`choose_params`), the ranker trained on that split's
labels (`training_set`, `train`), then every source refitted on all of them (`fit_serving`). The
training cycle's assets call these same steps on all the data to serve, and `evaluate` runs the
whole procedure on each protocol's known part, so what is measured is what is served.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from threadpoolctl import threadpool_limits

from recsys_platform.model import evaluation
from recsys_platform.model.candidates import FEATURES, ItemStats, pairs_frame
from recsys_platform.model.catalogue import Catalogue
from recsys_platform.model.history import DAY_S, PairHistory, Vocabulary, epoch_s
from recsys_platform.model.params import ModelParams
from recsys_platform.model.ranker import ColumnScorer, train_ranker
from recsys_platform.model.recommender import BLOCK_USERS, Recommender, build_vocab, fit_serving
from recsys_platform.model.sources import SOURCES, fit_sources
from recsys_platform.model.text import resolve_encoder
from recsys_platform.model.tuning import tune
from recsys_platform.model.windows import (
    TS,
    PairSplit,
    Split,
    global_split,
    per_user_split,
    random_pair_split,
    repeat_share,
    session_split,
)

logger = logging.getLogger(__name__)

K = 10
# Below this share of plays that replay an earlier item, already-played items are not recommended.
REPEAT_SHARE_TO_KEEP_SEEN = 0.05
PRIMARY_PROTOCOL = "per_user"
# At most this many per-user training windows (`_per_user_windows`): more than one only where the newest one holds
# out fewer users than a window may label (`_label_cap`).
PER_USER_WINDOWS = 2
PROTOCOLS = ("per_user", "global")
HOLDOUTS = {"per_user": "each user's newest 20% (order-free: a random 20%)", "global": "the newest 10% of time"}
# Suffix of the protocol whose rows compare the serving champion: every model scored on the held-out events after
# the champion's newest training event (`registry.labels_until`), so that the champion is not judged on answers it
# was trained with. A ranker champion from the previous cycle has seen most of a holdout of the same data: on the
# whole holdout it scored above a new ranker of the same code and data (0.2989 against 0.2908 at 1M users).
UNSEEN_BY_CHAMPION = ":unseen_by_champion"
# Per model, the standard error of the per-user nDCG@K gap between the ranker and that model on the same users
# (paired: the spread of ranker minus model, over the square root of the users): how far apart two lists' means
# can be by chance on this holdout (`model.gate`).
GAP_SE = f"ndcg@{K}_gap_se"
PERSONALISED_BASELINES = ("ease", "item_knn", "replays")
# The baselines every cycle fits beside the ranker, each served by one source's own score. `replays` (the
# user's own items by plays and recency) is the strongest simple list where people replay what they like (the
# quickstart's synthetic app: 0.31 nDCG@10 on the per-user holdout, EASE 0.21); where seen items are not
# recommended (MovieLens) it has nothing to recommend and scores 0.
BASELINES: dict[str, str] = {
    "popularity": "score_pop",
    "recent_popularity": "score_pop_recent",
    "ease": "score_ease",
    "item_knn": "score_knn",
    "replays": "score_replays",
}
PERSONAL_SOURCES = tuple(s.name for s in SOURCES if s.personalised)
# Every other personalised source's own list, scored beside the baselines on each holdout: the ranker is promoted
# only if it beats all of them (`model.gate`), and when it does not, the gate serves the best personalised list of
# all of them (`PERSONALISED_CANDIDATES`), not only EASE or item-kNN. On order-free data (ml-100k's train part under
# the random protocol) the sittings-and-sequence EASE beat plain EASE on the cycle's own holdout.
SOURCE_CANDIDATES: dict[str, str] = {
    f"source_{n}": f"score_{n}" for n in PERSONAL_SOURCES if f"score_{n}" not in BASELINES.values()
}
PERSONALISED_CANDIDATES = (*PERSONALISED_BASELINES, *SOURCE_CANDIDATES)
SCORED_COLUMNS = {**BASELINES, **SOURCE_CANDIDATES}


def data_params(interactions: pl.DataFrame, params: ModelParams) -> ModelParams:
    """Settings read off the data: whether replays are recommended, and the recency half-life in days
    (the time span of the newest 10% of plays)."""
    share = repeat_share(interactions)
    starts = interactions.filter(pl.col("event_type") == "content_start")["event_time"]
    times = starts if starts.len() else interactions["event_time"]
    newest = times.quantile(0.9, interpolation="lower")
    span_days = (times.max() - newest).total_seconds() / DAY_S if newest is not None else 1.0
    return params.with_(
        exclude_seen=share < REPEAT_SHARE_TO_KEEP_SEEN,
        recent_half_life_days=round(max(span_days, 1.0), 2),
        text_encoder=resolve_encoder(params.text_encoder),
    )


def choose_params(
    interactions: pl.DataFrame,
    items: pl.DataFrame,
    users: pl.DataFrame,
    base: ModelParams,
    max_users: int,
    user_weight: float = 1.0,
) -> tuple[ModelParams, dict[str, Any]]:
    """Params for these interactions: read off the data, then tuned on their inner per-user split (`user_weight`:
    see `training_set`)."""
    vocab = build_vocab(interactions, items, users)
    catalogue = Catalogue.build(vocab, items, users)
    params = data_params(interactions, base)
    params, scores = tune(interactions, catalogue, params, max_users, user_weight)
    report = {"repeat_share": round(repeat_share(interactions), 4), "tuning_ndcg@10": scores}
    return params, report


def user_cutoffs(split: Split, vocab: Vocabulary, rows: np.ndarray) -> np.ndarray:
    """Epoch seconds of each row's cutoff in `split` (for users it does not hold out: its common cutoff, else
    its end)."""
    frame = pl.DataFrame({"user_id": vocab.user_ids.gather(rows)}).join(
        split.cutoffs, on="user_id", how="left", maintain_order="left"
    )
    cut = frame["cutoff"].dt.epoch("us").cast(pl.Float64) / 1e6
    return cut.fill_null(epoch_s(split.common_cutoff or split.end)).to_numpy()


def feature_times(split: Split, vocab: Vocabulary, rows: np.ndarray) -> np.ndarray:
    """Epoch seconds each row's features and candidates are as of: one time for everyone, as serving's now is.
    A global split's cutoff; under a per-user split the end of the known part, not the users' own cutoffs:
    each is the time of that user's next event, which no feature or candidate may depend on."""
    if split.common_cutoff is not None:
        return user_cutoffs(split, vocab, rows)
    return np.full(len(rows), epoch_s(split.known_until))


def training_set(
    interactions: pl.DataFrame,
    items: pl.DataFrame,
    users: pl.DataFrame,
    params: ModelParams,
    max_users: int,
    signals: pl.DataFrame | None = None,
    names: tuple[str, ...] = FEATURES,
    user_weight: float = 1.0,
) -> pl.DataFrame:
    """The ranker's training rows: candidates of the held-out users of each training window (at most
    `max_users` and `params.label_users`, a seeded sample) with the features `names` as of the window's
    feature time (`feature_times`), session signals before each user's own cutoff, and the relevance of
    their held-out pairs. Windows: `params.training_windows`. `user_weight`: how many users of the whole base
    each user of `interactions` stands for, when they are a sample of it (`PairHistory.user_weight`)."""
    vocab = build_vocab(interactions, items, users)
    catalogue = Catalogue.build(vocab, items, users)
    frames = [
        _window_rows(split, data, vocab, catalogue, params, max_users, signals, names, user_weight)
        for split, data in training_windows(interactions, params, max_users, signals)
    ]
    out = pl.concat(frames)
    return out.with_columns(
        label_pairs=pl.lit(int(sum(f["label_pairs"][0] for f in frames if f.height)), dtype=pl.Int64)
    )


def training_windows(
    interactions: pl.DataFrame, params: ModelParams, max_users: int, signals: pl.DataFrame | None = None
) -> Iterator[tuple[Split | PairSplit, pl.DataFrame]]:
    """(split, the data it cuts) of each training window `params.training_windows` names, joined by '+', one at
    a time: a successive window's data is the window before's known part, a copy of most of the history, so only
    the window being built holds one (at 1M users, all five at once held ~8 GiB before the first was built):
    `temporal` (per-user, `_per_user_windows`), `random` (order-free pairs), `global`, `global3` (three successive
    global windows) or `session` (each user's newest sitting, `windows.session_split`: only where there are session
    `signals`, which are what it teaches; without any it would repeat the per-user window's lesson on less data)."""
    label_cap = _label_cap(max_users, params)
    windows = {
        "temporal": lambda: _per_user_windows(interactions, label_cap),
        "random": lambda: [(random_pair_split(interactions, 0.2, params.seed, name="training-random"), interactions)],
        "global": lambda: [(global_split(interactions, 0.1, name="training-global"), interactions)],
        "global3": lambda: _global_windows(interactions, 3),
        "session": lambda: _session_windows(interactions, params, signals),
    }
    unknown = [w for w in params.training_windows.split("+") if w not in windows]
    if unknown:
        raise ValueError(
            f"unknown training window(s) {unknown} in {params.training_windows!r}; "
            f"join any of {sorted(windows)} with '+' (RECSYS_TRAINING_WINDOWS)"
        )
    return (window for w in params.training_windows.split("+") for window in windows[w]())


def _session_windows(
    interactions: pl.DataFrame, params: ModelParams, signals: pl.DataFrame | None
) -> list[tuple[Split, pl.DataFrame]]:
    """Each user's newest sitting (`windows.session_split`) where there are session `signals` to learn; else none."""
    if signals is None or not signals.height:
        return []
    split = session_split(interactions, params.session_gap_minutes * 60.0, name="training-session")
    return [(split, interactions)]


def _label_cap(max_users: int, params: ModelParams) -> int:
    """Users a training window may label: the smaller of the cycle's max_users and params.label_users (0: all)."""
    return min([c for c in (max_users, params.label_users) if c] or [0])


def _successive_windows(
    interactions: pl.DataFrame, split_of: Callable[[pl.DataFrame, int], Split], most: int, more: Callable[[int], bool]
) -> Iterator[tuple[Split, pl.DataFrame]]:
    """Up to `most` windows of one kind, newest first: window k is `split_of(data, k)` on the data window k-1 may
    know (the whole data for the first), while `more(users held out so far)` asks for another."""
    data, labelled = interactions, 0
    for k in range(most):
        if data.height < 2:
            return
        split = split_of(data, k)
        if not split.cutoffs.height:
            return
        yield split, data
        labelled += split.cutoffs.height
        if not more(labelled):
            return
        data = split.known(data)


def _per_user_windows(interactions: pl.DataFrame, label_cap: int) -> Iterator[tuple[Split, pl.DataFrame]]:
    """Each user's newest fifth of their plays; where that holds out fewer users than a window may label (`label_cap`:
    the smaller of max_users and label_users; 0, no cap: one window), the fifth before it too, up to
    PER_USER_WINDOWS: a small user base gets more queries."""
    return _successive_windows(
        interactions,
        lambda data, k: per_user_split(data, name="training" if k == 0 else f"training-{k}"),
        PER_USER_WINDOWS,
        lambda labelled: 0 < label_cap and labelled < label_cap,
    )


def _global_windows(interactions: pl.DataFrame, n: int) -> Iterator[tuple[Split, pl.DataFrame]]:
    """`n` global windows: the newest tenth of the plays, then the tenth before it (the data cut there), ..."""
    return _successive_windows(
        interactions, lambda data, k: global_split(data, 0.1, name=f"training-global-{k}"), n, lambda _: True
    )


def known_signals(split: Split | PairSplit, signals: pl.DataFrame | None) -> pl.DataFrame | None:
    """The session signals a split's known part may read: each user's before their own cutoff. None under a
    pair split: its held-out pairs lie anywhere in time, and a search just before one would name it."""
    if signals is None or isinstance(split, PairSplit):
        return None
    return split.known(signals)


def _window_rows(
    split, interactions, vocab, catalogue, params, max_users, signals=None, names=FEATURES, user_weight=1.0
):
    known, truth = split.known(interactions), split.truth(interactions)
    history = PairHistory.build(
        known, vocab, split.known_until, known_signals(split, signals), params.text_encoder, user_weight
    )
    fitted = Recommender(
        params, catalogue, history, fit_sources(history, catalogue, params), ItemStats.fit(history), None
    )
    who = truth["user_id"].unique().sort()
    cap = _label_cap(max_users, params) or who.len()
    if who.len() > cap:
        who = who.sample(cap, seed=params.seed).sort()
    rows = np.unique(vocab.user_rows(who))
    rows = rows[rows >= 0]
    parts = []
    for start in range(0, len(rows), BLOCK_USERS):
        r = rows[start : start + BLOCK_USERS]
        profiles, block = fitted.block(r, feature_times(split, vocab, r), names)
        pairs = pairs_frame(block, profiles, vocab.user_ids, vocab.item_ids)
        feats = pl.DataFrame(block.features, schema=list(names), orient="row")
        parts.append(pl.concat([pairs, feats], how="horizontal"))
    frame = pl.concat(parts) if parts else pl.DataFrame(schema={"user_id": pl.String, "item_id": pl.String})
    out = frame.join(truth, on=["user_id", "item_id"], how="left", maintain_order="left").with_columns(
        pl.col("relevance").fill_null(0)
    )
    labelled = truth.join(pl.DataFrame({"user_id": vocab.user_ids.gather(rows)}), on="user_id", how="semi")
    logger.info(
        "training set: %d rows for %d users, candidate recall %.3f of %d held-out pairs",
        out.height,
        len(rows),
        int((out["relevance"] > 0).sum()) / max(labelled.height, 1),
        labelled.height,
    )
    return out.with_columns(label_pairs=pl.lit(labelled.height, dtype=pl.Int64), window=pl.lit(split.name))


def window_weights(frame: pl.DataFrame, queries: np.ndarray, balance: float) -> np.ndarray:
    """Row weights that move each kind of training window (per-user, global, random) from its own size
    (`balance` 0) towards the same total weight as every other kind (`balance` 1), however many queries
    (`queries`: one id per row) it holds."""
    kind = frame["window"].str.replace(r"-\d+$", "")
    per_query = frame.select(kind=kind, q=pl.Series(queries)).unique().group_by("kind").len()
    size = pl.DataFrame({"kind": kind}).join(per_query, on="kind", how="left", maintain_order="left")["len"]
    even = per_query["len"].sum() / per_query.height
    return ((even / size) ** balance).to_numpy()


def query_ids(frame: pl.DataFrame) -> np.ndarray:
    """One id per `training_set` row: its query, a user in a window (rows of a query are consecutive)."""
    return frame.select(pl.struct("window", "user_id").rle_id()).to_series().to_numpy()


def train(frame: pl.DataFrame, params: ModelParams, threads: int = 1) -> tuple[Any, dict[str, float]]:
    """Train the ranker on `training_set` rows (grouped by query: a user in a window, in their order)."""
    users = query_ids(frame)
    features = frame.select([pl.col(c).cast(pl.Float32) for c in FEATURES]).to_numpy()
    weights = window_weights(frame, users, params.balance_windows) if params.balance_windows else None
    booster, facts = train_ranker(features, frame["relevance"].to_numpy(), users, params.seed, threads, weights)
    pairs = float(frame["label_pairs"][0]) if frame.height else 0.0
    facts["training_candidate_recall"] = float((frame["relevance"] > 0).sum()) / max(pairs, 1.0)
    return booster, facts


def fit_recommender(
    interactions: pl.DataFrame,
    items: pl.DataFrame,
    users: pl.DataFrame,
    cutoff: datetime,
    base: ModelParams | None = None,
    max_users: int = 4000,
    threads: int = 1,
    signals: pl.DataFrame | None = None,
) -> Recommender:
    """The whole training procedure on `interactions` and session `signals` (all before `cutoff`): params,
    ranker, serving sources."""
    started = time.perf_counter()
    params, report = choose_params(interactions, items, users, base or ModelParams(), max_users)
    booster, facts = train(training_set(interactions, items, users, params, max_users, signals), params, threads)
    rec = fit_serving(interactions, items, users, cutoff, params, booster, signals)
    rec.facts = {**report, **facts, "fit_seconds": round(time.perf_counter() - started, 2)}
    return rec


# --- evaluation --------------------------------------------------------------------------------------------


def split_for(protocol: str, interactions: pl.DataFrame, params: ModelParams | None = None) -> Split | PairSplit:
    """The holdout of a protocol: `per_user` (each user's newest 20%, or a seeded random 20% of each user's
    items when `params.order_free`: the gate's primary holdout asks what the ranker was trained for) or
    `global` (the newest 10% of time)."""
    if protocol == "per_user":
        if params is not None and params.order_free:
            return random_pair_split(interactions, 0.2, params.seed, name=protocol)
        return per_user_split(interactions, 0.2, name=protocol)
    if protocol == "global":
        return global_split(interactions, 0.1, name=protocol)
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")


def evaluate(
    interactions: pl.DataFrame,
    items: pl.DataFrame,
    users: pl.DataFrame,
    protocol: str,
    base: ModelParams | None = None,
    max_users: int = 4000,
    threads: int = 1,
    champion: tuple[Any, ModelParams, datetime | None] | None = None,
    signals: pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Run the procedure on the protocol's known part, recommend K for its held-out users and score the
    ranker and every baseline (the same fitted sources and candidate rules) against what they did next.
    With `champion` (scorer, params, labels_until), also the serving version as it is, on the same known part:
    it and every other model are scored again, as protocol `<protocol>:unseen_by_champion`, on the held-out events
    after `labels_until` (all of them when None); no such rows when none is after it. Session `signals` are read
    as far as each user's cutoff."""
    split = split_for(protocol, interactions, base)
    known, truth = split.known(interactions), split.truth(interactions)
    known_sig = known_signals(split, signals)
    rec = fit_recommender(known, items, users, split.known_until, base, max_users, threads, signals=known_sig)
    test_users = truth["user_id"].unique().sort()
    if max_users and test_users.len() > max_users:
        test_users = test_users.sample(max_users, seed=rec.params.seed).sort()
        truth = truth.join(pl.DataFrame({"user_id": test_users}), on="user_id", how="semi")
    cut = feature_times(split, rec.vocab, rec.vocab.user_rows(test_users).clip(0))
    pop = pl.DataFrame({"item_id": rec.vocab.item_ids, "count": rec.stats.users})
    facts = {**split.describe(), "test_users": test_users.len(), "params": rec.params.to_dict(), **rec.facts}
    scored = truth.select("user_id", "item_id")
    scorers = {"ranker": rec.scorer, **{name: ColumnScorer(col) for name, col in SCORED_COLUMNS.items()}}
    unseen = scored.clear()
    other_fit = None
    if champion is not None:
        scorer, params, champion_until = champion
        unseen = scored
        if champion_until is not None:
            after = interactions.filter(pl.col("event_time") > pl.lit(champion_until, dtype=TS))
            unseen = split.truth(after).join(scored, on=["user_id", "item_id"], how="semi").select(scored.columns)
        facts["champion_labels_until"] = str(champion_until) if champion_until is not None else "none (a baseline)"
        facts["champion_unseen_pairs"] = unseen.height
        if unseen.height:  # else nothing it was not trained with: it is not scored at all
            if params.to_dict() == rec.params.to_dict():
                scorers["champion"] = scorer
            else:
                other_fit = fit_serving(known, items, users, split.known_until, params, scorer, known_sig)
    lists = rec.recommend_each(scorers, test_users, K, cut)
    if other_fit is not None:
        lists["champion"] = other_fit.recommend(test_users, K, cut)

    def scored_rows(name: str, pairs: pl.DataFrame, models: list[str]) -> list[dict[str, Any]]:
        out = []
        per_user = {model: evaluation.ndcg_per_user(pairs, lists[model], K) for model in models}
        for model in models:
            metrics = evaluation.evaluate_all(pairs, lists[model], K, n_items=rec.vocab.n_items, item_popularity=pop)
            metrics[GAP_SE] = gap_standard_error(per_user["ranker"], per_user[model])
            out += [{"protocol": name, "model": model, "metric": m, "value": float(v)} for m, v in metrics.items()]
        return out

    # the champion is judged only on what it was not trained with, as are the others beside it
    rows = scored_rows(protocol, scored, [m for m in lists if m != "champion"])
    if unseen.height:
        rows += scored_rows(protocol + UNSEEN_BY_CHAMPION, unseen, list(lists))
    return pl.DataFrame(rows), facts


def gap_standard_error(a: pl.DataFrame, b: pl.DataFrame) -> float:
    """The standard error of the mean per-user gap between two [user_id, ndcg] frames of the same users (0 for
    fewer than two users)."""
    gap = a.join(b, on="user_id", how="inner", suffix="_b").select(pl.col("ndcg") - pl.col("ndcg_b")).to_series()
    if gap.len() < 2:
        return 0.0
    return float(gap.std(ddof=1) / np.sqrt(gap.len()))


def evaluate_protocols(
    interactions: pl.DataFrame,
    items: pl.DataFrame,
    users: pl.DataFrame,
    protocols: tuple[str, ...] = PROTOCOLS,
    base: ModelParams | None = None,
    max_users: int = 4000,
    threads: int = 1,
    champion: Callable[[], tuple[Any, ModelParams] | None] | None = None,
    signals: pl.DataFrame | None = None,
) -> dict[str, tuple[pl.DataFrame, dict[str, Any]]]:
    """`evaluate` on each protocol. With two or more threads, protocols run at once: each after the first in a
    child Python process (`_Child`), each side with half the threads. The procedure is mostly single-threaded
    Python and numpy (candidates, features, the training windows) between LightGBM's threaded fits, so one
    process leaves a core idle most of the time. `champion` is a picklable loader of the serving champion (each
    process loads its own: a compiled ranker does not pickle), or None. The child is a new interpreter started
    with `subprocess`, not a `multiprocessing` child, so a daemonic process (a Celery prefork worker: the
    production profile's steps), which `multiprocessing` forbids to have children, runs them side by side too."""
    args = (interactions, items, users)
    if threads < 2 or len(protocols) < 2:
        return {p: evaluate(*args, p, base, max_users, threads, _load(champion), signals) for p in protocols}
    here, there = protocols[0], protocols[1:]
    child_threads = max(1, threads // 2)
    children: dict[str, _Child] = {}
    try:
        for p in there:
            children[p] = _Child(_evaluate_loaded, (*args, p, base, max_users, child_threads, champion, signals))
        with threadpool_limits(limits=threads - child_threads):  # BLAS too: the two processes share the cores
            out = {here: evaluate(*args, here, base, max_users, threads - child_threads, _load(champion), signals)}
        out.update({p: child.result() for p, child in children.items()})
    finally:
        for child in children.values():
            child.stop()
    return {p: out[p] for p in protocols}


def _load(champion: Callable[[], tuple[Any, ModelParams] | None] | None) -> tuple[Any, ModelParams] | None:
    return champion() if champion is not None else None


def _evaluate_loaded(interactions, items, users, protocol, base, max_users, threads, champion, signals):
    """`evaluate` in a child process, the champion loaded there, BLAS held to the same threads as LightGBM."""
    with threadpool_limits(limits=threads):
        return evaluate(interactions, items, users, protocol, base, max_users, threads, _load(champion), signals)


class _Child:
    """`fn(*args)` in a new Python interpreter (this one's executable and environment), started at once: the call
    and its result travel as pickles in a private temporary directory; the child's output goes where this
    process's goes, and it exits when this process dies. `result()` waits for it and returns its value, or raises
    with the child's traceback."""

    def __init__(self, fn: Callable[..., Any], args: tuple) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="recsys-child-")
        try:
            call, self.out = Path(self.dir.name) / "call.pkl", Path(self.dir.name) / "result.pkl"
            call.write_bytes(pickle.dumps((fn, args), protocol=pickle.HIGHEST_PROTOCOL))
            code = f"from {__name__} import _child_main; _child_main({str(call)!r}, {str(self.out)!r}, {os.getpid()})"
            self.process = subprocess.Popen([sys.executable, "-c", code])
        except BaseException:
            self.dir.cleanup()
            raise

    def result(self) -> Any:
        """The call's return value, once the child has exited."""
        code = self.process.wait()
        ok, value = pickle.loads(self.out.read_bytes()) if self.out.exists() else (False, None)
        if code != 0 or not ok:
            raise RuntimeError(f"the child process failed (exit code {code}):\n{value or 'it wrote no result'}")
        return value

    def stop(self) -> None:
        """Kill the child if it still runs (the parent's side failed) and remove its files."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.dir.cleanup()


def _child_main(call: str, out: str, parent: int) -> None:
    """The child's side of `_Child`: run the pickled call, pickle (ok, value or traceback) to `out` atomically; exit
    at once if the `parent` process dies first (a run killed without a chance to stop its children)."""
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    fn, args = pickle.loads(Path(call).read_bytes())
    try:
        result = (True, fn(*args))
    except BaseException:  # noqa: BLE001 - every failure goes back to the parent, with its traceback
        result = (False, traceback.format_exc())
    partial = Path(out).with_suffix(".partial")
    partial.write_bytes(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
    partial.replace(out)
    if not result[0]:
        sys.exit(1)


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def metric(table: pl.DataFrame, protocol: str, model: str, name: str = f"ndcg@{K}") -> float:
    """One value of a long metrics frame (NaN when absent)."""
    hit = table.filter((pl.col("protocol") == protocol) & (pl.col("model") == model) & (pl.col("metric") == name))
    return float(hit["value"][0]) if hit.height else float("nan")


def strongest_baseline(
    table: pl.DataFrame, protocol: str = PRIMARY_PROTOCOL, names=tuple(BASELINES)
) -> tuple[str, float]:
    """(name, nDCG@K) of the best of `names` on `protocol`."""
    scores = {name: metric(table, protocol, name) for name in names}
    best = max(scores, key=lambda n: -np.inf if np.isnan(scores[n]) else scores[n])
    return best, scores[best]
