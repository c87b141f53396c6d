"""benchmarks/synthetic_ceiling.py reads the generator's hidden state: it must be the state the plays came from."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys_platform.config import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))

import synthetic_ceiling as sc  # noqa: E402

from recsys_platform.quality_benchmark.holdout import ITEM, USER, InteractionsFile, split  # noqa: E402


@pytest.fixture(scope="module")
def generated() -> tuple[pl.DataFrame, sc.HiddenState, list]:
    calls: list = []
    with sc._recording_choices(calls):
        plays, state = sc.generate_with_state(600, 10, seed=5)
    return plays, state, calls


def test_every_play_is_a_choice_or_one_of_the_users_favourites(generated) -> None:
    plays, state, calls = generated
    # the fixture's wrapper saw the one choice call generate_with_state made (one chunk of users)
    (call,) = calls
    p_user, p_item = call.users, call.items
    starts = plays.filter(pl.col("event_type") == "content_start")
    user_index = {u: k for k, u in enumerate(state.user_ids)}
    item_index = {i: k for k, i in enumerate(state.item_ids)}
    users = np.array([user_index[u] for u in starts[USER].to_list()])
    items = np.array([item_index[i] for i in starts[ITEM].to_list()])
    # a replay takes a play's place, so only a favourite is started more often than it was chosen
    choices = pl.DataFrame({"u": p_user, "i": p_item}).group_by("u", "i").len("chosen")
    started = pl.DataFrame({"u": users, "i": items}).group_by("u", "i").len("started")
    more = started.join(choices, on=["u", "i"], how="left").filter(pl.col("started") > pl.col("chosen").fill_null(0))
    assert more.height > 100
    more_u, more_i = more["u"].to_numpy(), more["i"].to_numpy()
    assert ((state.favourites[more_u, 0] == more_i) | (state.favourites[more_u, 1] == more_i)).all()
    favourite = (state.favourites[users, 0] == items) | (state.favourites[users, 1] == items)
    # ... as often as the reconstructed repeat propensity says: the quarter most prone replay far more
    share = pl.DataFrame({"u": users, "f": favourite}).group_by("u").agg(pl.col("f").mean()).sort("u")
    prone = state.repeat_p[share["u"].to_numpy()]
    high, low = prone >= np.quantile(prone, 0.75), prone <= np.quantile(prone, 0.25)
    assert share["f"].to_numpy()[high].mean() > share["f"].to_numpy()[low].mean() + 0.15


def test_play_probabilities_are_a_distribution_over_what_the_generator_may_pick(generated) -> None:
    _, state, _ = generated
    users = np.arange(40)
    at = np.full(40, 3 * 86400.0)
    probs = sc.play_probabilities(state, users, at, draws=64)
    assert probs.sum(axis=1) == pytest.approx(np.ones(40))
    assert (probs[:, state.release_sec > at[0]] == 0).all()  # not released yet
    no_kids = ~state.has_kids[users]
    assert no_kids.any() and (probs[np.ix_(no_kids, state.kids)] == 0).all()
    for row, user in enumerate(users):  # a favourite is at least as likely as its replay share
        for fav in state.favourites[user]:
            if fav >= 0 and state.release_sec[fav] <= at[0]:
                assert probs[row, fav] >= 0.5 * state.repeat_p[user] - 1e-12


def test_the_ceiling_lists_respect_the_cap_and_beat_own_replays(generated) -> None:
    from recsys_platform.model.evaluation import evaluate_all
    from recsys_platform.model.params import ModelParams
    from recsys_platform.quality_benchmark.baselines import fit_baseline, pair_history, top_k, truth_of

    plays, state, _ = generated
    holdout = split(InteractionsFile(Path("synthetic"), "table", plays), "per-user")
    truth = truth_of(holdout.test)
    seen = holdout.train.select(user_id=pl.col(USER), item_id=pl.col(ITEM)).unique()
    held_out = sc.HeldOutUsers.of(state, holdout.test, holdout.train)
    probs = sc.first_play_probabilities(state, held_out, draws=128)
    for cap in (0, 2):
        recs = sc.ranked_lists(state, held_out, probs, cap=cap)
        assert recs.group_by("user_id").len()["len"].max() == sc.K
        per_user = recs.join(seen, on=["user_id", "item_id"], how="semi").group_by("user_id").len()
        assert per_user.height == 0 if cap == 0 else per_user["len"].max() == cap
    oracle = sc.ranked_lists(state, held_out, probs, cap=None)
    history = pair_history(holdout.train, holdout.cutoff_s)
    users = truth["user_id"].unique().sort()
    own = top_k(fit_baseline("replays", history, ModelParams()), history, users, sc.K, unseen_only=False)
    own_ndcg = evaluate_all(truth, own, sc.K)["ndcg@10"]
    assert evaluate_all(truth, oracle, sc.K)["ndcg@10"] > 1.1 * own_ndcg
    informed = sc.informed_lists(state, held_out)
    assert set(informed) == set(sc.INFORMED_WEIGHTS)
    for recs in informed.values():
        assert recs.group_by("user_id").len()["len"].unique().to_list() == [sc.K]
        assert recs.select("user_id").unique().height == truth["user_id"].n_unique()
    # knowing every item's factors, the users' own plays still carry it past own replays, not to the oracle
    best = max(evaluate_all(truth, recs, sc.K)["ndcg@10"] for recs in informed.values())
    assert own_ndcg < best < evaluate_all(truth, oracle, sc.K)["ndcg@10"]
