"""Leakage: nothing at or after a user's cutoff reaches a feature or a candidate, in training or in evaluation.

The harness builds the ranker's training rows (`procedure.training_set`) and the evaluation's inputs (what
`procedure.evaluate` fits on and the candidate rows it scores), then rewrites *everything* after each
user's cutoff - which users the events belong to, their items, times (still after the cutoff), how many
there are (rows dropped and duplicated) and their event types - and builds them again. Every candidate
(user, item) and every feature value must be the same; only labels may move.

A split is the experiment's design, not a feature: the per-user split places each cutoff by counting the
user's plays, held-out ones included, and the global split's cutoff is a quantile of all plays, so
rewriting the counts after the cutoff would move the cutoffs themselves. The harness therefore holds the
split fixed (computed once on the original data). What the cutoff *time* may reveal is checked separately:
moving each user's held-out events later, which keeps the per-user split's positions, must not change any
feature either - the cutoff is the time of the user's next event, which no feature may read.

Session signals (searches, biometric readings) are held to the same rule: they reach every harness, and
their own tests rewrite every signal after each cutoff (owners, times, query texts, readings).

Each harness also catches a leaky feature planted on purpose (the last tests), so it can fail.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import polars as pl
import pytest

from recsys_platform import schemas
from recsys_platform.dev.generator import GeneratorConfig, generate
from recsys_platform.features.tables import build_interactions
from recsys_platform.model import candidates, procedure, windows
from recsys_platform.model.candidates import ALL_FEATURES, FEATURES, SESSION_FEATURE_GROUPS
from recsys_platform.model.params import ModelParams
from recsys_platform.model.ranker import ColumnScorer
from recsys_platform.model.recommender import Recommender, build_vocab, fit_serving
from recsys_platform.model.signals import signal_events
from recsys_platform.model.windows import Split
from tests.conftest import FIXED_END

KEYS = ["user_id", "item_id"]
# Small and fast: the harness compares feature values, not model quality.
# The per-user window alone: the per-user tests fix its split; the global windows have a test of their own.
BASE = ModelParams(ials_factors=8, ials_iterations=3, depth=30, training_windows="temporal")


@dataclass
class World:
    items: pl.DataFrame
    users: pl.DataFrame
    interactions: pl.DataFrame
    params: ModelParams
    signals: pl.DataFrame  # searches and biometric readings (every harness passes them)


@pytest.fixture(scope="module", params=["profile", "latent"])
def world(request) -> World:
    """A small generated dataset in each taste mode, with its data-derived params (held fixed: choose_params
    reads all the interactions it is given, and evaluate gives it only the known part)."""
    ds = generate(GeneratorConfig(n_users=200, days=14, seed=11, end=FIXED_END, tastes=request.param))
    inter = build_interactions(ds.events, ds.items)
    return World(ds.items, ds.users, inter, procedure.data_params(inter, BASE), signal_events(ds.events))


# --- the perturbation -------------------------------------------------------------------------------------


def cutoff_expr(split: Split) -> pl.Expr:
    """Each row's cutoff under `split` (users it does not hold out: its cutoff of the others, else never)."""
    others = split.common_cutoff or split.end
    return pl.coalesce("cutoff", pl.lit(others, dtype=windows.TS))


def rewrite_after(inter: pl.DataFrame, split: Split, items: pl.DataFrame, owners: pl.Series, seed: int) -> pl.DataFrame:
    """`inter` with every event at or after its user's cutoff replaced: resampled (some dropped, some
    duplicated, 30% more in all), each given to one of `owners` (every owner at least once) at a random time
    between that owner's cutoff and the split's end, a random catalogue item and a random event type."""
    rng = np.random.default_rng(seed)
    tagged = inter.join(split.cutoffs, on="user_id", how="left")
    after = pl.col("event_time") >= cutoff_expr(split)
    before, held = tagged.filter(~after).drop("cutoff"), tagged.filter(after).drop("cutoff")
    n = int(held.height * 1.3)
    assert n > len(owners)
    new = held[rng.integers(0, held.height, n)]
    who = pl.DataFrame(
        {"user_id": owners.gather(np.r_[np.arange(len(owners)), rng.integers(0, len(owners), n - len(owners))])}
    )
    start = who.join(split.cutoffs, on="user_id", how="left", maintain_order="left").select(cutoff_expr(split))
    start_us = start.to_series().dt.epoch("us").to_numpy()
    end_us = int(split.end.timestamp() * 1e6)
    times = start_us + (rng.random(n) * (end_us - start_us)).astype(np.int64)
    kinds = np.array(schemas.CONTENT_EVENT_TYPES)[rng.integers(0, len(schemas.CONTENT_EVENT_TYPES), n)]
    new = new.with_columns(
        user_id=who["user_id"],
        item_id=items["item_id"].gather(rng.integers(0, items.height, n)),
        event_time=pl.Series(times).cast(pl.Datetime("us", "UTC")),
        event_type=pl.Series(kinds),
        is_bounce=pl.Series(kinds == "content_exit") & pl.Series(rng.random(n) < 0.5),
    ).with_columns(
        weight=pl.when(pl.col("is_bounce"))
        .then(schemas.BOUNCE_WEIGHT)
        .otherwise(pl.col("event_type").replace_strict(schemas.EVENT_WEIGHTS, return_dtype=pl.Float64))
    )
    return pl.concat([before, new.select(before.columns)]).sample(fraction=1.0, shuffle=True, seed=seed)


def delay_held_out(inter: pl.DataFrame, split: Split, items: pl.DataFrame, seed: int) -> pl.DataFrame:
    """`inter` with each held-out user's events from the cutoff on moved later by up to three days (one
    random delay per user, so their order and the per-user split's positions stay), on random items, and
    their non-play events of a random non-play type."""
    rng = np.random.default_rng(seed)
    delay = split.cutoffs.select(
        "user_id", delay=pl.Series((rng.random(split.cutoffs.height) * 3 * 86400e6).astype(np.int64))
    )
    tagged = inter.join(split.cutoffs, on="user_id", how="left")
    after = pl.col("event_time") >= cutoff_expr(split)
    before, held = tagged.filter(~after).drop("cutoff"), tagged.filter(after).drop("cutoff")
    others = ["content_complete", "content_exit", "favorite"]
    kinds = np.array(others)[rng.integers(0, 3, held.height)]
    held = (
        held.join(delay, on="user_id")
        .with_columns(
            event_time=pl.col("event_time") + pl.duration(microseconds=pl.col("delay")),
            item_id=items["item_id"].gather(rng.integers(0, items.height, held.height)),
            event_type=pl.when(pl.col("event_type") == "content_start")
            .then(pl.col("event_type"))
            .otherwise(pl.Series(kinds)),
        )
        .drop("delay")
    )
    return pl.concat([before, held.select(before.columns)])


def rewrite_signals_after(signals: pl.DataFrame, split: Split, owners: pl.Series, seed: int) -> pl.DataFrame:
    """`signals` with every one at or after its user's cutoff replaced, as `rewrite_after` replaces events:
    resampled (30% more), given to random `owners` at random times between their cutoff and the split's end,
    with other query texts and readings."""
    rng = np.random.default_rng(seed)
    tagged = signals.join(split.cutoffs, on="user_id", how="left")
    after = pl.col("event_time") >= cutoff_expr(split)
    before, held = tagged.filter(~after).drop("cutoff"), tagged.filter(after).drop("cutoff")
    n = int(held.height * 1.3)
    new = held[rng.integers(0, held.height, n)]
    who = pl.DataFrame({"user_id": owners.gather(rng.integers(0, len(owners), n))})
    start = who.join(split.cutoffs, on="user_id", how="left", maintain_order="left").select(cutoff_expr(split))
    start_us = start.to_series().dt.epoch("us").to_numpy()
    end_us = int(split.end.timestamp() * 1e6)
    kinds = np.array(["search", "biometric"])[rng.integers(0, 2, n)]
    words = np.array(["sleep", "yoga", "rain", "focus", "piano", "kids", "story", "calm"])
    new = new.with_columns(
        event_id=pl.format("rewritten-{}", pl.int_range(pl.len())),
        user_id=who["user_id"],
        event_time=pl.Series(start_us + (rng.random(n) * (end_us - start_us)).astype(np.int64)).cast(windows.TS),
        event_type=pl.Series(kinds),
        query=pl.Series(words[rng.integers(0, len(words), n)] + " " + words[rng.integers(0, len(words), n)]),
        steps=pl.Series(rng.poisson(2000, n).astype(np.float64)),
        heart_rate=pl.Series(rng.normal(120, 20, n)),
    )
    return pl.concat([before, new.select(before.columns)]).sample(fraction=1.0, shuffle=True, seed=seed)


def delay_signals(signals: pl.DataFrame, split: Split, seed: int) -> pl.DataFrame:
    """`signals` with each held-out user's from the cutoff on moved later by the delay `delay_held_out` draws
    for them with the same seed (the held-out sessions move as a whole)."""
    rng = np.random.default_rng(seed)
    delay = split.cutoffs.select(
        "user_id", delay=pl.Series((rng.random(split.cutoffs.height) * 3 * 86400e6).astype(np.int64))
    )
    tagged = signals.join(split.cutoffs, on="user_id", how="left").join(delay, on="user_id", how="left")
    late = pl.col("event_time") >= cutoff_expr(split)
    return tagged.with_columns(
        event_time=pl.when(late)
        .then(pl.col("event_time") + pl.duration(microseconds=pl.col("delay").fill_null(0)))
        .otherwise(pl.col("event_time"))
    ).select(signals.columns)


# --- what is compared ---------------------------------------------------------------------------------------


def differences(a: pl.DataFrame, b: pl.DataFrame) -> list[str]:
    """What differs between two frames of candidate rows: "candidates" when the (user, item) pairs do,
    else the features whose values do (NaN equal to NaN)."""
    a, b = a.sort(KEYS), b.sort(KEYS)
    if not a.select(KEYS).equals(b.select(KEYS)):
        return ["candidates"]
    return [f for f in ALL_FEATURES if f in a.columns and not a[f].equals(b[f])]


@contextmanager
def fixed_split(monkeypatch: pytest.MonkeyPatch, split: Split):
    """The procedure's per-user split (its newest training window; an earlier one is cut from that split's known
    part, so it is built as usual) and evaluation split replaced by `split`."""
    real = windows.per_user_split

    def per_user(data: pl.DataFrame, *args, name: str = "per_user", **kwargs) -> Split:
        return real(data, *args, name=name, **kwargs) if name.startswith("training-") else split

    with monkeypatch.context() as m:
        m.setattr(procedure, "per_user_split", per_user)
        m.setattr(procedure, "split_for", lambda *a, **k: split)
        yield


def training_rows(world: World, interactions: pl.DataFrame, signals: pl.DataFrame | None = None) -> pl.DataFrame:
    signals = world.signals if signals is None else signals
    # every feature the builder can compute, the session groups the ranker does not read today included
    return procedure.training_set(interactions, world.items, world.users, world.params, 0, signals, ALL_FEATURES)


@dataclass
class EvaluationInputs:
    known: pl.DataFrame  # what the whole procedure is fitted on
    fitted_until: object  # the cutoff the serving sources are fitted with
    rows: pl.DataFrame  # every candidate row evaluate scores: user, item, features


def evaluation_inputs(
    world: World,
    interactions: pl.DataFrame,
    protocol: str,
    monkeypatch: pytest.MonkeyPatch,
    signals: pl.DataFrame | None = None,
) -> EvaluationInputs:
    """Run `procedure.evaluate` and record what it fits on and every candidate row it scores (the fit is the
    serving fit with fixed params and one baseline scorer: tuning and the ranker are functions of `known`)."""
    seen: dict = {"rows": []}

    def fit(known, items, users, cutoff, *args, signals=None, **kwargs):
        seen["known"], seen["until"] = known, cutoff
        return fit_serving(known, items, users, cutoff, world.params, ColumnScorer("score_ease"), signals)

    original_block = Recommender.block

    def block(self, rows, cutoff_s=None):
        profiles, cands = original_block(self, rows, cutoff_s)
        pairs = candidates.pairs_frame(cands, profiles, self.vocab.user_ids, self.vocab.item_ids)
        seen["rows"].append(pl.concat([pairs, pl.DataFrame(cands.features, schema=list(FEATURES))], how="horizontal"))
        return profiles, cands

    with monkeypatch.context() as m:
        m.setattr(procedure, "fit_recommender", fit)
        m.setattr(Recommender, "block", block)
        signals = world.signals if signals is None else signals
        procedure.evaluate(interactions, world.items, world.users, protocol, max_users=0, signals=signals)
    known = seen["known"].sort("event_time", "event_id")
    # every model is scored on the same candidate rows: keep one copy
    rows = pl.concat(seen["rows"]).unique(KEYS, keep="first", maintain_order=True)
    return EvaluationInputs(known, seen["until"], rows)


def assert_same_evaluation_inputs(a: EvaluationInputs, b: EvaluationInputs) -> None:
    assert a.known.equals(b.known)
    assert a.fitted_until == b.fitted_until
    assert a.rows.height > 1000
    assert differences(a.rows, b.rows) == []


# --- per-user protocol ------------------------------------------------------------------------------------


def test_training_rows_ignore_everything_after_each_users_cutoff(world: World, monkeypatch) -> None:
    split = windows.per_user_split(world.interactions, name="training")
    changed = rewrite_after(world.interactions, split, world.items, split.cutoffs["user_id"], seed=1)
    assert changed.height > world.interactions.height  # rows were duplicated as well as dropped
    with fixed_split(monkeypatch, split):
        before, after = training_rows(world, world.interactions), training_rows(world, changed)
    assert before.height > 5000 and before["relevance"].sum() > 100
    assert differences(before, after) == []
    # ... while the labels did change: the rewrite reached the held-out part
    labels = before.select(*KEYS, "relevance").join(after.select(*KEYS, "relevance"), on=KEYS, suffix="_after")
    assert (labels["relevance"] != labels["relevance_after"]).sum() > 50


def test_evaluation_inputs_ignore_everything_after_each_users_cutoff(world: World, monkeypatch) -> None:
    split = procedure.split_for("per_user", world.interactions)
    changed = rewrite_after(world.interactions, split, world.items, split.cutoffs["user_id"], seed=2)
    with fixed_split(monkeypatch, split):
        before = evaluation_inputs(world, world.interactions, "per_user", monkeypatch)
        after = evaluation_inputs(world, changed, "per_user", monkeypatch)
    assert_same_evaluation_inputs(before, after)


def test_no_feature_reads_when_the_held_out_events_happened(world: World) -> None:
    """The per-user cutoff is the time of the user's next event: moving the held-out events later (the same
    events stay held out) must change no feature and no candidate, in training and in evaluation."""
    split = windows.per_user_split(world.interactions, name="training")
    changed = delay_held_out(world.interactions, split, world.items, seed=3)
    moved = windows.per_user_split(changed, name="training")
    assert moved.cutoffs["user_id"].equals(split.cutoffs["user_id"])  # the same users held out ...
    assert (moved.cutoffs["cutoff"] > split.cutoffs["cutoff"]).mean() > 0.9  # ... from later cutoffs
    assert moved.known(changed).sort("event_id").equals(split.known(world.interactions).sort("event_id"))
    signals = delay_signals(world.signals, split, seed=3)
    assert differences(training_rows(world, world.interactions), training_rows(world, changed, signals)) == []


def test_evaluation_inputs_ignore_when_the_held_out_events_happened(world: World, monkeypatch) -> None:
    split = procedure.split_for("per_user", world.interactions)
    changed = delay_held_out(world.interactions, split, world.items, seed=4)
    before = evaluation_inputs(world, world.interactions, "per_user", monkeypatch)
    after = evaluation_inputs(world, changed, "per_user", monkeypatch, delay_signals(world.signals, split, seed=4))
    assert_same_evaluation_inputs(before, after)


# --- global protocol --------------------------------------------------------------------------------------


def test_global_protocol_ignores_everything_after_the_cutoff_of_anyone(world: World, monkeypatch) -> None:
    """Every event from the global cutoff on - of evaluated users, of users it does not evaluate and of
    users never seen before - is rewritten: the training rows and evaluation inputs stay the same."""
    split = procedure.split_for("global", world.interactions)
    owners = pl.concat([world.users["user_id"], pl.Series(["newcomer-1", "newcomer-2"])])
    changed = rewrite_after(world.interactions, split, world.items, owners, seed=5)
    assert changed.filter(pl.col("user_id").str.starts_with("newcomer")).height > 0
    with fixed_split(monkeypatch, split):
        before = evaluation_inputs(world, world.interactions, "global", monkeypatch)
        after = evaluation_inputs(world, changed, "global", monkeypatch)
    assert_same_evaluation_inputs(before, after)
    assert before.known["event_time"].max() < split.known_until
    # the ranker evaluate trains is trained on the known part alone
    assert differences(training_rows(world, before.known), training_rows(world, after.known)) == []


def test_global_training_windows_ignore_everything_after_their_cutoffs(world: World, monkeypatch) -> None:
    """The ranker's global windows (the newest tenth of the plays, the tenth before it, ...): every event from
    the newest window's cutoff on is rewritten; no window's features or candidates may change."""
    fixed = list(procedure._global_windows(world.interactions, 3))
    assert len(fixed) == 3
    newest = fixed[0][0]
    owners = pl.concat([world.users["user_id"], pl.Series(["newcomer-1"])])
    changed = rewrite_after(world.interactions, newest, world.items, owners, seed=6)

    def same_windows(interactions: pl.DataFrame, n: int) -> list:
        # the splits of the original data; each window's data cut where the procedure cuts it
        out, data = [], interactions
        for split, _ in fixed[:n]:
            out.append((split, data))
            data = data.filter(pl.col("event_time") < split.known_until)
        return out

    params = replace(world.params, training_windows="global3")
    monkeypatch.setattr(procedure, "_global_windows", same_windows)
    before = procedure.training_set(world.interactions, world.items, world.users, params, 0, world.signals)
    after = procedure.training_set(changed, world.items, world.users, params, 0, world.signals)
    assert set(before["window"].unique()) == {"training-global-0", "training-global-1", "training-global-2"}
    assert before.height > 2000
    assert differences(before, after) == []
    newest_labels = before.filter(pl.col("window") == "training-global-0").select(*KEYS, "relevance")
    changed_labels = after.filter(pl.col("window") == "training-global-0").select(*KEYS, "relevance")
    both = newest_labels.join(changed_labels, on=KEYS, suffix="_after")
    assert (both["relevance"] != both["relevance_after"]).sum() > 20  # the rewrite reached the labels


# --- session signals ----------------------------------------------------------------------------------------

SESSION_COLUMNS = [f for group in SESSION_FEATURE_GROUPS.values() for f in group]


def test_training_rows_ignore_every_signal_after_each_users_cutoff(world: World, monkeypatch) -> None:
    split = windows.per_user_split(world.interactions, name="training")
    signals = rewrite_signals_after(world.signals, split, split.cutoffs["user_id"], seed=7)
    assert not signals.sort("event_id").equals(world.signals.sort("event_id"))
    with fixed_split(monkeypatch, split):
        before, after = training_rows(world, world.interactions), training_rows(world, world.interactions, signals)
    # the session features are there to be compared: most rows have a value of each kept group
    for name in ("search_sim", "type_bounce_rate", "steps_rise"):
        assert before[name].is_not_nan().sum() > 1000, name
    assert differences(before, after) == []


def test_the_session_window_ignores_every_event_and_signal_after_each_users_cutoff(world: World, monkeypatch) -> None:
    params = replace(world.params, training_windows="session")
    split = windows.session_split(world.interactions, params.session_gap_minutes * 60.0, name="training-session")
    plain = replace(split, cutoffs=split.cutoffs.select("user_id", "cutoff"))  # the perturbation's view of it
    owners = split.cutoffs["user_id"]
    inter = rewrite_after(world.interactions, plain, world.items, owners, seed=5)
    signals = rewrite_signals_after(world.signals, plain, owners, seed=5)
    monkeypatch.setattr(procedure, "session_split", lambda *a, **k: split)

    def rows(interactions: pl.DataFrame, signals: pl.DataFrame) -> pl.DataFrame:
        return procedure.training_set(interactions, world.items, world.users, params, 0, signals, ALL_FEATURES)

    before, after = rows(world.interactions, world.signals), rows(inter, signals)
    # a sitting's labels end with it, and the rewrite spreads each user's new events to the end of the data: a user
    # whose rewritten sitting holds no play has no labels, so no rows; every user labelled both times is compared
    both = before.select("user_id").unique().join(after.select("user_id").unique(), on="user_id")
    assert both.height >= 20, both.height
    before, after = (f.join(both, on="user_id", how="semi") for f in (before, after))
    assert set(before["window"].unique()) == {"training-session"}
    assert before["search_sim"].is_not_nan().sum() > 100  # searches before the sittings are read
    assert differences(before, after) == []


def test_evaluation_inputs_ignore_every_signal_after_the_global_cutoff(world: World, monkeypatch) -> None:
    split = procedure.split_for("global", world.interactions)
    owners = pl.concat([world.users["user_id"], pl.Series(["newcomer-1"])])
    signals = rewrite_signals_after(world.signals, split, owners, seed=8)
    with fixed_split(monkeypatch, split):
        before = evaluation_inputs(world, world.interactions, "global", monkeypatch)
        after = evaluation_inputs(world, world.interactions, "global", monkeypatch, signals)
    assert_same_evaluation_inputs(before, after)


def test_the_harness_detects_signals_read_past_each_users_cutoff(world: World, monkeypatch) -> None:
    """Signals filtered at the window's feature time instead of each user's own cutoff: a search just before a
    held-out play (the per-user cutoff) and the ones after it reach the features."""
    split = windows.per_user_split(world.interactions, name="training")
    signals = rewrite_signals_after(world.signals, split, split.cutoffs["user_id"], seed=7)
    monkeypatch.setattr(procedure, "known_signals", lambda split, signals: signals)
    with fixed_split(monkeypatch, split):
        found = differences(training_rows(world, world.interactions), training_rows(world, world.interactions, signals))
    assert set(found) & set(SESSION_FEATURE_GROUPS["search"])


# --- the harness can fail -----------------------------------------------------------------------------------


def _count_every_event(monkeypatch: pytest.MonkeyPatch, world: World) -> None:
    """Plant a leak: `user_items_log` counts every interaction of the user given to training_set, including
    those after the cutoff (the kind of user-level count the old leakage test could not see)."""
    totals: dict[str, np.ndarray] = {}
    original_set, original_user_columns = procedure.training_set, candidates._user_columns

    def training_set(interactions, items, users, *args, **kwargs):
        vocab = build_vocab(interactions, items, users)
        counts = pl.DataFrame({"user_id": vocab.user_ids}).join(
            interactions.group_by("user_id").len(), on="user_id", how="left", maintain_order="left"
        )
        totals["n"] = counts["len"].fill_null(0).to_numpy()
        return original_set(interactions, items, users, *args, **kwargs)

    def user_columns(profiles, rows):
        cols = original_user_columns(profiles, rows)
        cols["user_items_log"] = np.log1p(totals["n"][profiles.rows])[rows]
        return cols

    monkeypatch.setattr(procedure, "training_set", training_set)
    monkeypatch.setattr(candidates, "_user_columns", user_columns)


def test_the_harness_detects_a_user_count_that_reads_after_the_cutoff(world: World, monkeypatch) -> None:
    split = windows.per_user_split(world.interactions, name="training")
    changed = rewrite_after(world.interactions, split, world.items, split.cutoffs["user_id"], seed=1)
    _count_every_event(monkeypatch, world)
    with fixed_split(monkeypatch, split):
        found = differences(
            procedure.training_set(world.interactions, world.items, world.users, world.params, 0, world.signals),
            procedure.training_set(changed, world.items, world.users, world.params, 0, world.signals),
        )
    assert found == ["user_items_log"]


def test_the_harness_detects_a_known_part_that_includes_the_future(world: World, monkeypatch) -> None:
    """The bug the global split had: a known part holding events from after the cutoff."""
    split = procedure.split_for("global", world.interactions)
    changed = rewrite_after(world.interactions, split, world.items, world.users["user_id"], seed=5)
    leaky = Split(split.name, split.cutoffs, split.end, split.known_until)  # without common_cutoff
    with fixed_split(monkeypatch, leaky):
        before = evaluation_inputs(world, world.interactions, "global", monkeypatch)
        after = evaluation_inputs(world, changed, "global", monkeypatch)
    with pytest.raises(AssertionError):
        assert_same_evaluation_inputs(before, after)
    # and the ranker trained on it: its training rows move with the rewritten future
    assert differences(training_rows(world, before.known), training_rows(world, after.known)) != []


def test_the_harness_detects_features_as_of_the_end_of_the_data(world: World, monkeypatch) -> None:
    """Features computed as of the split's end (the newest event of all) read held-out times."""
    split = windows.per_user_split(world.interactions, name="training")
    changed = delay_held_out(world.interactions, split, world.items, seed=3)
    monkeypatch.setattr(
        procedure, "feature_times", lambda split, vocab, rows: np.full(len(rows), split.end.timestamp())
    )
    assert differences(training_rows(world, world.interactions), training_rows(world, changed)) != []
