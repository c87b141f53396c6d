"""The training procedure: settings read off the data, the ranker's training rows and labels, evaluation on
both protocols and the gate's choice of the strongest baseline."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys_platform import schemas
from recsys_platform.dev.generator import GeneratorConfig, generate
from recsys_platform.features.tables import build_interactions
from recsys_platform.model import procedure, tuning
from recsys_platform.model.catalogue import Catalogue
from recsys_platform.model.params import ModelParams
from recsys_platform.model.recommender import build_vocab
from recsys_platform.model.windows import per_user_split, require_enough
from tests.conftest import FIXED_END

FAST = ModelParams(ials_factors=8, ials_iterations=3, depth=30, training_windows="temporal")
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def plays(rows: list[tuple[str, str, float]]) -> pl.DataFrame:
    """content_start interactions from (user, item, day) rows."""
    return schemas.conform(
        pl.DataFrame(
            {
                "user_id": [r[0] for r in rows],
                "item_id": [r[1] for r in rows],
                "event_time": [T0 + timedelta(days=r[2]) for r in rows],
                "event_type": ["content_start"] * len(rows),
            }
        ),
        schemas.INTERACTION_SCHEMA,
    )


def test_data_params_read_replays_and_the_recent_time_span_off_the_data() -> None:
    # 20 plays on days 0-19, each pair once: no replays -> seen items excluded; the newest 10% of plays span
    # from the 0.9 quantile (lower: index floor(0.9 x 19) = 17, day 17) to day 19 -> a 2-day half-life
    once = plays([(f"u{d % 4}", f"i{d}", d) for d in range(20)])
    params = procedure.data_params(once, ModelParams())
    assert params.exclude_seen is True and params.recent_half_life_days == 2.0
    # the same plus u0 replaying i0 on day 19.5: 1 of 21 plays replays a pair (0.048 < 0.05) -> still excluded
    once_more = once.vstack(plays([("u0", "i0", 19.5)]))
    assert procedure.data_params(once_more, ModelParams()).exclude_seen is True
    # two replays: 1 - 20 / 22 = 0.091 of plays -> replays are recommended
    twice = once_more.vstack(plays([("u1", "i1", 19.6)]))
    assert procedure.data_params(twice, ModelParams()).exclude_seen is False
    # a burst within one day: the half-life never goes below a day
    burst = plays([("u0", f"i{k}", k / 100) for k in range(20)])
    assert procedure.data_params(burst, ModelParams()).recent_half_life_days == 1.0


@pytest.fixture(scope="module")
def world() -> dict:
    ds = generate(GeneratorConfig(n_users=300, days=14, seed=7, end=FIXED_END, tastes="latent"))
    inter = build_interactions(ds.events, ds.items)
    return {"ds": ds, "inter": inter, "params": procedure.data_params(inter, FAST)}


def test_training_labels_come_only_from_each_users_held_out_part(world) -> None:
    ds, inter, params = world["ds"], world["inter"], world["params"]
    everything = procedure.training_set(inter, ds.items, ds.users, params, 0)
    frame = everything.filter(pl.col("window") == "training")
    truth = per_user_split(inter, name="training").truth(inter)
    positives = frame.filter(pl.col("relevance") > 0).select("user_id", "item_id", "relevance")
    joined = positives.join(truth, on=["user_id", "item_id"], how="left", suffix="_held_out")
    assert positives.height > 100
    assert joined["relevance_held_out"].null_count() == 0  # every label is a held-out pair ...
    assert (joined["relevance"] == joined["relevance_held_out"]).all()  # ... with its relevance
    # ... and every held-out pair that is a candidate is labelled
    candidates = truth.join(frame.select("user_id", "item_id"), on=["user_id", "item_id"], how="semi")
    assert candidates.height == positives.height
    assert set(frame["user_id"]) == set(truth["user_id"])
    # 300 users, fewer than label_users (1,000): a second per-user window, each user's fifth before, labelled from
    # the data cut at their first cutoff and from nothing after it
    split = per_user_split(inter, name="training")
    earlier = everything.filter(pl.col("window") == "training-1")
    assert set(everything["window"]) == {"training", "training-1"}
    before = split.known(inter)
    truth_before = per_user_split(before, name="training-1").truth(before)
    labels_before = earlier.filter(pl.col("relevance") > 0).select("user_id", "item_id", "relevance")
    assert labels_before.height > 100
    assert labels_before.join(truth_before, on=["user_id", "item_id", "relevance"], how="anti").height == 0
    assert everything["label_pairs"].unique().to_list() == [truth.height + truth_before.height]
    # candidates are as of the end of the known part for everyone, not as of each user's next (held-out)
    # event: nothing released after that day, items released after a user's cutoff included
    last_day = split.known_until.date()
    assert split.known_until == split.known(inter)["event_time"].max() + timedelta(microseconds=1)
    released = frame.join(ds.items.select("item_id", "release_date"), on="item_id")
    assert released.height == frame.height and (released["release_date"] <= last_day).all()
    late = released.join(split.cutoffs, on="user_id").filter(pl.col("release_date") > pl.col("cutoff").dt.date())
    assert late.height > 0


def test_label_users_caps_each_window_with_a_seeded_sample_and_max_users_still_applies(world) -> None:
    ds, inter, params = world["ds"], world["inter"], world["params"]
    every = procedure.training_set(inter, ds.items, ds.users, params.with_(label_users=0), 0)
    capped = procedure.training_set(inter, ds.items, ds.users, params.with_(label_users=50), 0)
    again = procedure.training_set(inter, ds.items, ds.users, params.with_(label_users=50), 0)
    assert every["user_id"].n_unique() > 200
    assert capped["user_id"].n_unique() == 50 and set(capped["user_id"]) < set(every["user_id"])
    assert capped.equals(again)  # the same sample on every run
    # the sampled users keep every candidate row and label they had uncapped, and label_pairs counts theirs only
    mine = every.join(capped.select("user_id").unique(), on="user_id", how="semi")
    assert mine.drop("label_pairs").equals(capped.drop("label_pairs"))
    truth = per_user_split(inter, name="training").truth(inter)
    assert capped["label_pairs"][0] == truth.join(capped.select("user_id").unique(), on="user_id", how="semi").height
    # the cycle's max_users is a cap too: the smaller of the two wins
    fewer = procedure.training_set(inter, ds.items, ds.users, params.with_(label_users=50), 20)
    assert fewer["user_id"].n_unique() == 20


def test_train_refuses_a_frame_without_a_positive_and_reports_recall(world) -> None:
    ds, inter, params = world["ds"], world["inter"], world["params"]
    frame = procedure.training_set(inter, ds.items, ds.users, params, 0)
    with pytest.raises(ValueError, match="no candidate of any training user is a label"):
        procedure.train(frame.filter(pl.col("relevance") == 0), params)
    booster, facts = procedure.train(frame, params)
    assert facts["training_candidate_recall"] == pytest.approx((frame["relevance"] > 0).sum() / frame["label_pairs"][0])
    assert 0 < facts["train_users"] <= frame.select("window", "user_id").n_unique()  # a user in a window: a query
    # only each member's trees up to its best iteration are kept (a bag of rankers: best_iteration is their mean)
    assert booster.num_trees() == facts["trees"] == pytest.approx(facts["best_iteration"] * facts["bag_members"])


def test_choose_params_picks_from_the_grids_on_the_inner_split(world) -> None:
    ds, inter = world["ds"], world["inter"]
    params, report = procedure.choose_params(inter, ds.items, ds.users, FAST, max_users=200)
    assert params.ease_l2 in tuning.EASE_L2_GRID and params.recency_half_life in tuning.HALF_LIFE_GRID
    scores = report["tuning_ndcg@10"]
    ease = {k: v for k, v in scores.items() if k.startswith("l2=")}
    assert len(ease) == len(tuning.EASE_L2_GRID) * len(tuning.HALF_LIFE_GRID)
    assert ease[f"l2={params.ease_l2:g},half_life={params.recency_half_life:g}"] == max(ease.values())
    # the sittings-and-sequence EASE's l2 and EDLAE dropout, on the same split by that source's own list
    session = {k: v for k, v in scores.items() if k.startswith("session_")}
    assert len(session) == len(tuning.SESSION_L2_GRID) * len(tuning.SESSION_DROPOUT_GRID) == len(scores) - len(ease)
    chosen = f"session_l2={params.ease_session_l2:g},dropout={params.ease_session_dropout:g}"
    assert session[chosen] == max(session.values())


def test_order_free_tuning_averages_the_grids_over_several_random_splits(world, monkeypatch) -> None:
    ds, inter = world["ds"], world["inter"]
    catalogue = Catalogue.build(build_vocab(inter, ds.items, ds.users), ds.items, ds.users)
    params = FAST.with_(training_windows="random")
    assert params.order_free and tuning.RANDOM_TUNING_FOLDS == 3
    chosen, scores = tuning.tune(inter, catalogue, params, max_users=0)
    monkeypatch.setattr(tuning, "RANDOM_TUNING_FOLDS", 1)
    alone = [tuning.tune(inter, catalogue, params.with_(seed=params.seed + f), max_users=0)[1] for f in range(3)]
    assert scores.keys() == alone[0].keys()
    for setting, value in scores.items():  # each setting scored by its mean over the three seeded splits
        assert value == pytest.approx(np.mean([a[setting] for a in alone]), abs=1e-5)
    assert len({a["session_l2=1000,dropout=0.5"] for a in alone}) > 1  # the splits differ
    session = {k: v for k, v in scores.items() if k.startswith("session_")}
    assert session[f"session_l2={chosen.ease_session_l2:g},dropout={chosen.ease_session_dropout:g}"] == max(
        session.values()
    )


@pytest.mark.parametrize("protocol", procedure.PROTOCOLS)
def test_evaluate_reports_every_metric_for_the_ranker_and_every_baseline(world, protocol: str) -> None:
    ds, inter = world["ds"], world["inter"]
    table, facts = procedure.evaluate(inter, ds.items, ds.users, protocol, FAST, max_users=0)
    truth = procedure.split_for(protocol, inter).truth(inter)
    assert facts["protocol"] == protocol and facts["test_users"] == truth["user_id"].n_unique() > 50
    assert set(table["protocol"]) == {protocol}
    expected = {"ranker", "popularity", "recent_popularity", "ease", "item_knn", "replays"}
    assert expected == {"ranker", *procedure.BASELINES}
    # and every other personalised source's own list, the gate's other candidates
    others = {f"source_{s}" for s in procedure.PERSONAL_SOURCES} - {"source_ease", "source_knn", "source_replays"}
    assert others and set(procedure.SOURCE_CANDIDATES) == others
    assert set(table["model"]) == expected | others
    metrics = table.group_by("model").agg(pl.col("metric").sort())
    assert metrics["metric"].n_unique() == 1  # the same metrics for every model
    bounded = {f"{m}@10" for m in ("precision", "recall", "ndcg", "map", "mrr", "hit_rate", "catalog_coverage")}
    assert bounded <= set(metrics["metric"][0])
    assert table.filter(pl.col("metric").is_in(bounded))["value"].is_between(0.0, 1.0).all()
    assert procedure.metric(table, protocol, "ranker") > 0
    # the gate's noise bar: each model's per-user gap to the ranker has a standard error (the ranker's own is 0)
    assert procedure.metric(table, protocol, "ranker", procedure.GAP_SE) == 0.0
    se = table.filter((pl.col("metric") == procedure.GAP_SE) & (pl.col("model") != "ranker"))["value"]
    assert se.len() == len(expected | others) - 1 and (se >= 0).all() and 0 < se.max() < 0.1


def test_two_holdouts_side_by_side_give_what_each_gives_alone(world) -> None:
    # with two threads the second protocol runs in a spawned process, each with one LightGBM and BLAS thread:
    # the tables must be exactly those of `evaluate` on one thread, protocol by protocol
    ds, inter = world["ds"], world["inter"]
    both = procedure.evaluate_protocols(inter, ds.items, ds.users, procedure.PROTOCOLS, FAST, 300, threads=2)
    assert list(both) == list(procedure.PROTOCOLS)
    for protocol in procedure.PROTOCOLS:
        alone, facts = procedure.evaluate(inter, ds.items, ds.users, protocol, FAST, 300, threads=1)
        table, side_facts = both[protocol]
        assert table.equals(alone) and table.height > 0
        assert side_facts["test_users"] == facts["test_users"]
    # a champion loader is called in each process (a loader that fails there fails the evaluation)
    with pytest.raises(RuntimeError, match="no champion here"):
        procedure.evaluate_protocols(inter, ds.items, ds.users, procedure.PROTOCOLS, FAST, 300, 2, _no_champion)


def _protocols_in(queue, inter, items, users) -> None:
    queue.put(procedure.evaluate_protocols(inter, items, users, procedure.PROTOCOLS, FAST, 300, threads=2))


def test_a_daemonic_process_evaluates_the_protocols_side_by_side_too(world) -> None:
    # a Celery prefork worker (the production profile's steps) is daemonic and `multiprocessing` does not let it have
    # children (a spawned pool failed there: "daemonic processes are not allowed to have children"); the second
    # protocol's child is a new interpreter started by subprocess, so the protocols run side by side there too, with
    # the tables of `evaluate` on one thread each
    import multiprocessing

    ds, inter = world["ds"], world["inter"]
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_protocols_in, args=(queue, inter, ds.items, ds.users), daemon=True)
    child.start()
    out = queue.get(timeout=600)
    child.join(60)
    assert child.exitcode == 0 and list(out) == list(procedure.PROTOCOLS)
    for protocol in procedure.PROTOCOLS:
        alone, _ = procedure.evaluate(inter, ds.items, ds.users, protocol, FAST, 300, threads=1)
        assert out[protocol][0].equals(alone) and alone.height > 0


def test_a_child_that_dies_fails_the_evaluation_with_its_exit_code() -> None:
    # killed without writing a result (the OOM killer, a signal): the parent raises instead of waiting or guessing
    child = procedure._Child(os._exit, (3,))
    with pytest.raises(RuntimeError, match=r"(?s)exit code 3\).*no result"):
        child.result()
    child.stop()
    assert not Path(child.dir.name).exists()


def test_a_child_exits_when_its_parent_dies_without_stopping_it() -> None:
    # a run's process killed outright (SIGKILL, the OOM killer) cannot stop its children: the child notices and exits
    # instead of evaluating on for minutes with nobody to read its result
    script = (
        "import os, time; from recsys_platform.model import procedure; "
        "child = procedure._Child(time.sleep, (120,)); print(child.process.pid, flush=True); os._exit(0)"
    )
    parent = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    pid = int(parent.stdout.split()[0])
    deadline = time.monotonic() + 20
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def _no_champion():
    raise RuntimeError("no champion here")


def test_the_champion_is_scored_only_on_held_out_events_after_its_training_data(world) -> None:
    """The champion's rows (protocol `global:unseen_by_champion`) hold every model scored on the held-out pairs with
    an event after the champion's newest training event; none when it has seen them all; all of them for a
    baseline champion (a column: it learned nothing)."""
    from recsys_platform.model.ranker import ColumnScorer

    ds, inter = world["ds"], world["inter"]
    alone, facts = procedure.evaluate(inter, ds.items, ds.users, "global", FAST, 0)
    champion = ColumnScorer(procedure.SCORED_COLUMNS["ease"])
    params = ModelParams.from_dict(facts["params"])
    split = procedure.split_for("global", inter)
    truth = split.truth(inter)
    unseen = "global" + procedure.UNSEEN_BY_CHAMPION

    def with_champion(until):
        table, about = procedure.evaluate(
            inter, ds.items, ds.users, "global", FAST, 0, champion=(champion, params, until)
        )
        assert table.filter(pl.col("protocol") == "global").equals(alone)  # the protocol's rows are untouched
        assert table.filter((pl.col("protocol") == "global") & (pl.col("model") == "champion")).is_empty()
        return table.filter(pl.col("protocol") == unseen), about

    # a baseline champion: every held-out pair, so its list (EASE's own score) scores as the ease baseline
    rows, about = with_champion(None)
    assert about["champion_unseen_pairs"] == truth.height
    assert procedure.metric(rows, unseen, "champion") == procedure.metric(alone, "global", "ease")
    assert procedure.metric(rows, unseen, "ranker") == procedure.metric(alone, "global", "ranker")
    # trained up to the middle of the held-out time: only pairs with an event after it
    middle = inter.filter(pl.col("event_time") >= split.known_until)["event_time"].sort()
    middle = middle[middle.len() // 2]
    after = split.truth(inter.filter(pl.col("event_time") > middle))
    rows, about = with_champion(middle)
    assert 0 < about["champion_unseen_pairs"] == after.height < truth.height
    assert set(rows["model"]) == set(alone["model"]) | {"champion"}
    assert procedure.metric(rows, unseen, "champion") == procedure.metric(rows, unseen, "ease")
    assert procedure.metric(rows, unseen, "ranker") != procedure.metric(alone, "global", "ranker")
    # trained on everything: nothing to compare it on
    rows, about = with_champion(inter["event_time"].max())
    assert rows.is_empty() and about["champion_unseen_pairs"] == 0


def test_strongest_baseline_picks_the_best_and_ignores_missing_figures() -> None:
    table = pl.DataFrame(
        {
            "protocol": ["per_user"] * 4 + ["global"] * 2,
            "model": ["popularity", "recent_popularity", "ease", "ranker", "popularity", "ease"],
            "metric": ["ndcg@10"] * 6,
            "value": [0.10, 0.20, 0.15, 0.30, 0.05, 0.04],
        }
    )
    # item_knn has no figure (NaN): never the strongest
    assert procedure.strongest_baseline(table) == ("recent_popularity", 0.20)
    assert procedure.strongest_baseline(table, names=procedure.PERSONALISED_BASELINES) == ("ease", 0.15)
    assert procedure.strongest_baseline(table, "global") == ("popularity", 0.05)
    assert np.isnan(procedure.metric(table, "per_user", "item_knn"))


def test_a_small_dataset_trains_with_the_default_settings() -> None:
    """A week of 150 users (about two thousand interactions) is enough: the windows are read off the data."""
    ds = generate(GeneratorConfig(n_users=150, days=7, seed=2, end=FIXED_END))
    inter = build_interactions(ds.events, ds.items)
    require_enough(inter)
    assert inter.height < 2500
    rec = procedure.fit_recommender(inter, ds.items, ds.users, inter["event_time"].max())
    assert rec.facts["train_users"] > 20 and rec.facts["best_iteration"] >= 1
    recs = rec.recommend(ds.users["user_id"], 10)
    # everyone gets ten, the 13 users without a play too (from the popularity-like sources)
    assert recs.group_by("user_id").len()["len"].to_list() == [10] * ds.users.height


def test_an_order_free_objective_tunes_and_gates_on_random_holdouts(world) -> None:
    """RECSYS_TRAINING_WINDOWS=random (data whose order says nothing, e.g. ratings entered in one sitting): the
    gate's primary holdout and the tuning split are per-user random pairs, what the ranker was trained for; any
    other windows keep each user's newest 20%."""
    from recsys_platform.model.windows import PairSplit, Split, random_pair_split

    inter = world["inter"]
    free = FAST.with_(training_windows="random")
    assert free.order_free and not FAST.order_free and not FAST.with_(training_windows="random+temporal").order_free
    split = procedure.split_for("per_user", inter, free)
    assert isinstance(split, PairSplit)
    assert split.truth(inter).equals(random_pair_split(inter, 0.2, free.seed, name="per_user").truth(inter))
    assert isinstance(procedure.split_for("per_user", inter, FAST), Split)
    # held-out pairs lie anywhere in a user's history: some are older than pairs the models may read
    held = (
        split.truth(inter).join(inter, on=["user_id", "item_id"]).group_by("user_id").agg(t=pl.col("event_time").min())
    )
    known = split.known(inter).group_by("user_id").agg(t=pl.col("event_time").max())
    assert held.join(known, on="user_id").filter(pl.col("t") < pl.col("t_right")).height > 0
    table, facts = procedure.evaluate(inter, world["ds"].items, world["ds"].users, "per_user", free, max_users=300)
    assert facts["params"]["training_windows"] == "random" and procedure.metric(table, "per_user", "ranker") > 0


def _ranking_problem(seed: int = 3) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(6000, 5))
    y = np.clip(np.round(x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=1.5, size=6000)), 0, 3).astype(int)
    return x[:4800], y[:4800], x[4800:], y[4800:]


def _fit(callback, x, y, vx, vy):
    """The ranker fitted with `callback` as its early stopping, and how many rounds it trained."""
    import lightgbm as lgb

    rounds: list[int] = []

    def count(env) -> None:
        rounds.append(env.iteration)

    count.order = 10  # before early stopping
    model = lgb.LGBMRanker(n_estimators=400, learning_rate=0.3, num_leaves=7, verbose=-1, random_state=1, n_jobs=1)
    model.fit(
        x, y, group=[48] * 100, eval_set=[(vx, vy)], eval_group=[[48] * 25], eval_at=[10], callbacks=[count, callback]
    )
    return model, len(rounds)


def test_early_stopping_without_a_floor_is_lightgbms_own():
    import lightgbm as lgb

    from recsys_platform.model.ranker import early_stopping

    data = _ranking_problem()
    (own, own_rounds), (ours, our_rounds) = (
        _fit(lgb.early_stopping(10, verbose=False), *data),
        _fit(early_stopping(10), *data),
    )
    assert ours.best_iteration_ == own.best_iteration_ and our_rounds == own_rounds < 400  # stopped at the same round
    assert ours.best_score_["valid_0"]["ndcg@10"] == own.best_score_["valid_0"]["ndcg@10"]


def test_early_stopping_waits_for_the_floor_and_keeps_the_best_iteration():
    from recsys_platform.model.ranker import early_stopping

    data = _ranking_problem()
    (short, short_rounds), (floored, floored_rounds) = (
        _fit(early_stopping(10), *data),
        _fit(early_stopping(10, 150), *data),
    )
    assert short_rounds < 150 == floored_rounds  # the floor, and not a round more when nothing improved
    assert floored.best_iteration_ >= short.best_iteration_
    assert floored.best_score_["valid_0"]["ndcg@10"] >= short.best_score_["valid_0"]["ndcg@10"]


def test_a_bag_of_rankers_is_one_booster_that_scores_their_mean():
    import lightgbm as lgb

    from recsys_platform.model import ranker

    x, y, vx, _ = _ranking_problem()
    members = []
    for seed, rounds in ((1, 12), (2, 7), (3, 20)):  # different sizes: trees are renumbered across members
        params = {"objective": "lambdarank", "num_leaves": 7, "bagging_fraction": 0.8, "bagging_freq": 1}
        data = lgb.Dataset(x, y, group=[48] * 100, categorical_feature=[4] if seed == 3 else "auto")
        members.append(lgb.train({**params, "seed": seed, "verbose": -1}, data, rounds))
    x4 = vx.copy()
    x4[::7, 2] = np.nan  # missing values take each tree's default branch, merged or not
    merged = lgb.Booster(model_str=ranker.merge_boosters([m.model_to_string() for m in members]))
    assert merged.num_trees() == 12 + 7 + 20
    expected = np.mean([m.predict(x4) for m in members], axis=0)
    np.testing.assert_allclose(merged.predict(x4), expected, rtol=0, atol=1e-12)
    assert ranker.merge_boosters([members[0].model_to_string()]) == members[0].model_to_string()


def test_the_bag_grows_with_small_training_sets_only():
    from recsys_platform.model.ranker import MAX_MEMBERS, MEMBER_ROW_BUDGET, bag_size

    assert bag_size(0) == bag_size(1) == bag_size(MEMBER_ROW_BUDGET // MAX_MEMBERS) == MAX_MEMBERS
    assert bag_size(MEMBER_ROW_BUDGET // 2) == 2  # 750,000 // 375,000
    assert bag_size(MEMBER_ROW_BUDGET // 2 + 1) == 1 and bag_size(10 * MEMBER_ROW_BUDGET) == 1
    # the trainer reports its bag: 4,800 rows of 100 users, 80% fitted -> well under the budget -> the cap
    x, y, _, _ = _ranking_problem()
    from recsys_platform.model.candidates import FEATURES
    from recsys_platform.model.ranker import train_ranker

    wide = np.zeros((len(x), len(FEATURES)), np.float32)
    wide[:, : x.shape[1]] = x
    booster, facts = train_ranker(wide, y, np.repeat(np.arange(100), 48), seed=5)
    assert facts["bag_members"] == MAX_MEMBERS and facts["trees"] == booster.num_trees() >= MAX_MEMBERS
