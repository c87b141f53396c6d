"""Candidates and lists: what may be recommended, the feature matrix, blocks, fill and rescore."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from recsys_platform import schemas
from recsys_platform.config import PipelineParams
from recsys_platform.dev.generator import GeneratorConfig, generate
from recsys_platform.features.tables import build_interactions
from recsys_platform.model import procedure
from recsys_platform.model.candidates import FEATURES, MISSING_RANK
from recsys_platform.model.params import ModelParams
from recsys_platform.model.profiles import Profiles
from recsys_platform.model.ranker import ColumnScorer
from recsys_platform.model.recommender import fit_serving
from recsys_platform.model.sources import SOURCE_NAMES
from tests.conftest import FIXED_END

CUTOFF = datetime(2026, 3, 1, 12, tzinfo=UTC)
FAST = ModelParams(ials_factors=4, ials_iterations=2, recent_completion_days=3.0)  # 3 days (default: half a day)


# --- the rules, on a hand-made catalogue ------------------------------------------------------------------

ITEMS = schemas.conform(
    pl.DataFrame(
        {
            "item_id": ["kids", "n0", "n1", "n2", "n3", "n4", "soon"],
            "topic": ["t"] * 7,
            "release_date": [date(2025, 1, 1)] * 6 + [CUTOFF.date() + timedelta(days=5)],
            "is_kids": [True] + [False] * 6,
        }
    ),
    schemas.ITEM_SCHEMA,
)
USERS = schemas.conform(
    pl.DataFrame(
        {
            "user_id": ["fam", "single", "unknown_household", "r"] + [f"f{k}" for k in range(6)],
            "household_type": ["family_with_kids", "single", None, "couple"] + ["couple"] * 6,
        }
    ),
    schemas.USER_SCHEMA,
)


def interactions(rows: list[tuple[str, str, str, float]]) -> pl.DataFrame:
    """Interactions from (user, item, event_type, days before CUTOFF) rows."""
    return schemas.conform(
        pl.DataFrame(
            {
                "event_id": [f"e{k}" for k in range(len(rows))],
                "user_id": [r[0] for r in rows],
                "item_id": [r[1] for r in rows],
                "event_type": [r[2] for r in rows],
                "event_time": [CUTOFF - timedelta(days=r[3]) for r in rows],
                "is_bounce": [False] * len(rows),
                "weight": [schemas.EVENT_WEIGHTS[r[2]] for r in rows],
            }
        ),
        schemas.INTERACTION_SCHEMA,
    )


# six filler users make "kids" and the unreleased "soon" the most popular items (pre-release plays happen in
# imported data); fam, single and unknown_household played n4 once; r played n0, n1, n2 in the past days.
RULES = interactions(
    [(f"f{k}", item, "content_start", 5) for k in range(6) for item in ("kids", "soon")]
    + [(f"f{k}", "n3", "content_start", 5) for k in range(3)]
    + [(u, "n4", "content_start", 4) for u in ("fam", "single", "unknown_household")]
    + [
        ("r", "n0", "content_start", 1.0),
        ("r", "n0", "content_complete", 1.0),  # completed a day ago: within recent_completion_days (3)
        ("r", "n1", "content_start", 1.0),  # played a day ago, never completed
        ("r", "n2", "content_start", 10.0),
        ("r", "n2", "content_complete", 10.0),  # completed ten days ago
    ]
)


def lists(exclude_seen: bool, fill: bool, users=("fam", "single", "unknown_household", "r")) -> dict[str, list]:
    rec = fit_serving(RULES, ITEMS, USERS, CUTOFF, FAST.with_(exclude_seen=exclude_seen), ColumnScorer("score_pop"))
    recs = rec.recommend(pl.Series(users), k=10, fill=fill)
    return {u: recs.filter(pl.col("user_id") == u)["item_id"].to_list() for u in users}


@pytest.mark.parametrize("fill", [False, True])
def test_kids_items_only_for_families_and_unreleased_items_never(fill: bool) -> None:
    got = lists(exclude_seen=True, fill=fill)
    assert got["fam"][0] == "kids"  # the most popular released item
    assert "kids" not in got["single"] and "kids" not in got["unknown_household"]  # no household: no kids items
    assert all("soon" not in items for items in got.values())  # the most played item, but released in 5 days
    if fill:  # every other allowed item: 5 released non-kids items minus n4 (seen)
        assert sorted(got["single"]) == ["n0", "n1", "n2", "n3"]


@pytest.mark.parametrize("fill", [False, True])
def test_seen_items_excluded_when_asked_else_replays_minus_recent_completions(fill: bool) -> None:
    assert set(lists(exclude_seen=True, fill=fill)["r"]).isdisjoint({"n0", "n1", "n2"})
    replays = lists(exclude_seen=False, fill=fill)["r"]
    assert {"n1", "n2"} <= set(replays)  # played a day ago / completed ten days ago: may be played again
    assert "n0" not in replays  # completed a day ago: not yet


def test_by_default_a_title_completed_yesterday_may_be_recommended_again() -> None:
    assert ModelParams().recent_completion_days == PipelineParams().model_params().recent_completion_days == 0.5
    params = FAST.with_(exclude_seen=False, recent_completion_days=ModelParams().recent_completion_days)
    rec = fit_serving(RULES, ITEMS, USERS, CUTOFF, params, ColumnScorer("score_pop"))
    assert {"n0", "n1", "n2"} <= set(rec.recommend(pl.Series(["r"]), k=10)["item_id"])  # n0: completed a day ago


def test_unknown_users_are_skipped() -> None:
    rec = fit_serving(RULES, ITEMS, USERS, CUTOFF, FAST, ColumnScorer("score_pop"))
    assert rec.recommend(pl.Series(["nobody", "single"]), k=3)["user_id"].unique().to_list() == ["single"]


# --- a generated world, with a trained ranker -------------------------------------------------------------


@pytest.fixture(scope="module")
def world() -> dict:
    ds = generate(GeneratorConfig(n_users=300, days=14, seed=5, end=FIXED_END))
    inter = build_interactions(ds.events, ds.items)
    params = procedure.data_params(inter, FAST.with_(depth=20))
    booster, _ = procedure.train(procedure.training_set(inter, ds.items, ds.users, params, 0), params)
    end = inter["event_time"].max() + timedelta(microseconds=1)
    rec = fit_serving(inter, ds.items, ds.users, end, params, booster)
    return {"ds": ds, "inter": inter, "params": params, "end": end, "rec": rec}


def test_feature_matrix_is_in_features_order_from_the_sources(world) -> None:
    rec = world["rec"]
    rows = np.arange(0, rec.vocab.n_users, 3)
    profiles, block = rec.block(rows)
    assert block.features.shape == (len(block), len(FEATURES)) and block.features.dtype == np.float32
    assert np.all(np.diff(block.rows) >= 0)  # grouped by user, as the ranker's queries need
    for name in SOURCE_NAMES:
        scores = rec.sources[name].score(profiles)[block.rows, block.items]
        np.testing.assert_array_equal(
            block.column(f"score_{name}"), np.where(np.isfinite(scores), scores, np.nan).astype(np.float32)
        )
        rank = block.column(f"rank_{name}")
        assert np.all((rank >= 1) & ((rank <= rec.vocab.n_items) | (rank == MISSING_RANK)))
        assert np.all(np.isnan(block.column(f"score_{name}")) == (rank == MISSING_RANK))
        # z-scores per user: mean 0, and standard deviation 1 where the user's scores differ
        z = pl.DataFrame({"u": block.rows, "z": block.column(f"z_{name}")}).drop_nans()
        per_user = z.group_by("u").agg(mean=pl.col("z").mean(), sd=pl.col("z").std(ddof=0), n=pl.len())
        assert per_user["mean"].abs().max() < 1e-5, name
        varied = per_user.filter(pl.col("sd") > 0)
        assert varied.height > 0 and (varied["sd"] - 1).abs().max() < 1e-4, name
    # a candidate is in some source's top depth: n_sources counts them
    n = sum((block.column(f"rank_{s}") <= rec.params.depth).astype(int) for s in SOURCE_NAMES)
    np.testing.assert_array_equal(block.column("n_sources"), n)
    assert n.min() >= 1
    # features read off the user's own profile
    seen = np.asarray(profiles.seen.sum(axis=1)).ravel()
    np.testing.assert_allclose(block.column("user_items_log"), np.log1p(seen)[block.rows], rtol=1e-6)


def test_recommend_in_blocks_of_1_7_and_1000_users_gives_the_same_lists(world) -> None:
    rec, users = world["rec"], world["ds"].users["user_id"]
    some = users.head(40)
    # each user as of their own time as well (recommend's cutoff_s)
    cut = rec.history.user_last_s()[rec.vocab.user_rows(some)] + 1e-6
    cut = np.where(np.isfinite(cut), cut, rec.history.cutoff_s)
    for cutoff_s in (None, cut):
        expected = rec.recommend(some, 10, cutoff_s, block_users=1000)
        assert expected["user_id"].n_unique() == some.len() and expected.height == 10 * some.len()
        for size in (1, 7):
            assert rec.recommend(some, 10, cutoff_s, block_users=size).equals(expected)


def test_fill_reaches_k_with_the_tail_below_every_candidate(world) -> None:
    rec, users = world["rec"], world["ds"].users["user_id"].head(30)
    k = 20 * len(SOURCE_NAMES) + 10  # past the most candidates a depth of 20 per source can give
    short = rec.recommend(users, k)
    filled = rec.recommend(users, k, fill=True)
    assert (short.group_by("user_id").len()["len"] < k).all()
    assert (filled.group_by("user_id").len()["len"] == k).all()
    for user in users:
        head = short.filter(pl.col("user_id") == user)
        mine = filled.filter(pl.col("user_id") == user)
        # the candidates come first, as they were; every item after them scores below all of them
        assert mine.head(head.height).equals(head)
        tail = mine.slice(head.height)
        assert tail["score"].max() < head["score"].min()
        assert tail["item_id"].is_in(head["item_id"].implode()).sum() == 0
        assert mine["item_id"].n_unique() == k


def test_rescore_on_the_same_interactions_gives_the_same_lists_as_recommend(world) -> None:
    rec, inter, ds, end = world["rec"], world["inter"], world["ds"], world["end"]
    who = sorted(ds.users["user_id"].sample(25, seed=3).to_list())
    for fill in (False, True):
        expected = rec.recommend(pl.Series(who), 20, fill=fill)
        mine = inter.filter(pl.col("user_id").is_in(who))
        assert rec.rescore(mine, ds.users, who, end, 20, fill=fill).equals(expected)


def test_the_fit_and_the_lists_are_the_same_for_the_same_seed(world) -> None:
    ds, inter, params, end = world["ds"], world["inter"], world["params"], world["end"]
    users = ds.users["user_id"]
    booster, _ = procedure.train(procedure.training_set(inter, ds.items, ds.users, params, 0), params)
    assert booster.model_to_string() == world["rec"].scorer.model_to_string()
    again = fit_serving(inter, ds.items, ds.users, end, params, booster)
    assert again.recommend(users, 10).equals(world["rec"].recommend(users, 10))


def test_profiles_of_a_block_are_the_users_own_rows(world) -> None:
    rec = world["rec"]
    rows = np.array([5, 2, 9])
    block, alone = Profiles.of(rec.history, rows), Profiles.of(rec.history, np.array([2]))
    assert (block.seen[1] != alone.seen[0]).nnz == 0
    assert block.last_s[1] == alone.last_s[0]


def test_a_source_gives_at_most_depth_candidates_and_none_when_it_cannot_tell_items_apart() -> None:
    from recsys_platform.model.candidates import _ranked, _top_depth

    scores = np.array(
        [
            [5.0, 1.0, 1.0, 1.0, 1.0, -np.inf],  # ties at the boundary: exactly `depth`, the best one among them
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # all equal and more than depth: no information, no candidates
            [-np.inf, 2.0, -np.inf, -np.inf, -np.inf, -np.inf],  # fewer finite scores than depth: all of them
        ]
    )
    mask = _top_depth(*_ranked(scores), 2)
    assert mask.sum(axis=1).tolist() == [2, 0, 1]
    assert mask[0, 0] and not mask[0, 5] and mask[2, 1]
    # each row on its own gives the same mask (no dependence on the rest of the block)
    for r in range(3):
        np.testing.assert_array_equal(_top_depth(*_ranked(scores[r : r + 1]), 2)[0], mask[r])


def test_a_sources_z_feature_is_the_score_standardised_among_the_rows_finite_candidates() -> None:
    from recsys_platform.model.candidates import _per_row_z

    # block rows 0, 2 and 3 have candidates (1 has none); row 2's scores are all -inf, row 3's are all equal
    rows = np.array([0, 0, 0, 0, 2, 2, 3, 3])
    values = np.array([1.0, 3.0, -np.inf, 5.0, -np.inf, -np.inf, 7.0, 7.0], np.float32)
    z = _per_row_z(values, rows)
    # row 0's finite scores 1, 3, 5: mean 3, population sd sqrt(8/3); the -inf is no score (NaN)
    sd = np.sqrt(8 / 3)
    np.testing.assert_allclose(z[:4], [-2 / sd, 0.0, np.nan, 2 / sd], rtol=1e-12)
    assert np.isnan(z[4:6]).all() and z[6:].tolist() == [0.0, 0.0]  # no finite scores; no spread
    assert _per_row_z(np.zeros(0, np.float32), np.zeros(0, np.int64)).shape == (0,)


@pytest.mark.parametrize("seed", range(3))
def test_the_row_then_score_order_equals_the_three_key_lexsort_ties_and_negative_zero_included(seed: int) -> None:
    from recsys_platform.model.recommender import _by_row_then_score

    rng = np.random.default_rng(seed)
    for _ in range(100):
        rows, items = np.nonzero(rng.random((rng.integers(1, 30), rng.integers(1, 40))) < rng.random())
        score = rng.integers(-3, 3, len(rows)).astype(np.float64)  # many equal scores within a row
        score += (rng.random(len(rows)) < 0.3) * rng.normal(size=len(rows))
        score[rng.random(len(rows)) < 0.1] = -0.0  # equal to 0.0
        expected = np.lexsort((items, -score, rows))
        np.testing.assert_array_equal(_by_row_then_score(rows, items, score), expected)
        # pairs out of (row, item) order: the same order of (row, item) pairs
        p = rng.permutation(len(rows))
        got = _by_row_then_score(rows[p], items[p], score[p])
        np.testing.assert_array_equal(rows[p][got], rows[expected])
        np.testing.assert_array_equal(items[p][got], items[expected])


def _top_depth_by_partition(scores: np.ndarray, depth: int) -> np.ndarray:
    """The definition `_top_depth` keeps: a per-row argpartition of every row (the finite scores), minus rows whose
    finite scores are all equal and more than `depth`."""
    finite = np.isfinite(scores)
    k = min(depth, scores.shape[1])
    top = np.argpartition(-np.where(finite, scores, -np.inf), k - 1, axis=1)[:, :k]
    mask = np.zeros(scores.shape, bool)
    np.put_along_axis(mask, top, True, axis=1)
    mask &= finite
    hi, lo = np.where(finite, scores, -np.inf).max(axis=1), np.where(finite, scores, np.inf).min(axis=1)
    mask[(hi == lo) & (finite.sum(axis=1) > k)] = False
    return mask


def _ranks_by_count(scores: np.ndarray, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
    """1 + how many finite scores of the row are higher; MISSING_RANK for a non-finite score."""
    from recsys_platform.model.candidates import MISSING_RANK

    value = scores[rows, items]
    higher = (np.where(np.isfinite(scores), scores, -np.inf)[rows] > value[:, None]).sum(axis=1)
    return np.where(np.isfinite(value), higher + 1.0, MISSING_RANK)


@pytest.mark.parametrize("kind", ["continuous", "counts", "rounded", "constant"])
def test_top_depth_and_ranks_from_one_sort_equal_their_definitions(kind: str) -> None:
    """The threshold read off each row's sort takes the same items as a partition of the row (ties at the boundary,
    -inf, NaN, rows with fewer finite scores than depth, rows that cannot tell items apart), and the ranks equal a
    count of the higher scores."""
    from recsys_platform.model.candidates import _ranked, _ranks_of, _top_depth

    rng = np.random.default_rng(len(kind))
    for n_items in (3, 40, 600):
        raw = {
            "continuous": rng.normal(size=(60, n_items)),
            "counts": rng.integers(0, 4, size=(60, n_items)),
            "rounded": np.round(rng.normal(size=(60, n_items)), 1),
            "constant": np.ones((60, n_items)),
        }[kind]
        scores = raw.astype(np.float32)
        scores[rng.random(scores.shape) < rng.uniform(0.05, 0.9)] = -np.inf
        scores[rng.random(scores.shape) < 0.02] = np.nan
        scores[:3] = -np.inf
        for depth in (1, 5, 30):
            negated, order = _ranked(scores)
            mask = _top_depth(negated, order, depth)
            np.testing.assert_array_equal(mask, _top_depth_by_partition(scores, depth))
            rows, items = np.nonzero(mask | (rng.random(scores.shape) < 0.1))
            np.testing.assert_array_equal(_ranks_of(order, negated, rows, items), _ranks_by_count(scores, rows, items))


@pytest.mark.parametrize("kind", ["continuous", "counts", "rounded", "constant"])
def test_a_source_with_one_vector_for_everyone_is_ranked_as_its_repeated_rows_are(kind: str) -> None:
    """Popularity-like sources are sorted once per block, each row's allowed items counted along that order: the
    same top `depth` (ties at the boundary, -inf, NaN, rows with nothing or little allowed, a vector that cannot
    tell items apart), scores and ranks as the per-row sort of the vector repeated and masked, and as their
    definitions."""
    from recsys_platform.model.candidates import _RowRanking, _SharedRanking

    rng = np.random.default_rng(7 + len(kind))
    for n_items in (3, 40, 600):
        raw = {
            "continuous": rng.normal(size=n_items),
            "counts": rng.integers(0, 4, size=n_items),
            "rounded": np.round(rng.normal(size=n_items), 1),
            "constant": np.ones(n_items),
        }[kind]
        vector = raw.astype(np.float32)
        vector[rng.random(n_items) < 0.2] = -np.inf
        vector[rng.random(n_items) < 0.03] = np.nan
        allowed = rng.random((80, n_items)) < rng.uniform(0.05, 1.0, size=(80, 1))
        allowed[:2] = False
        allowed[2:4] = True
        repeated = np.broadcast_to(vector, allowed.shape).copy()
        shared, per_row = _SharedRanking(vector, allowed), _RowRanking(repeated, allowed)
        masked = np.where(allowed, repeated, -np.inf)
        for depth in (1, 5, 30):
            mask = shared.top(depth)
            np.testing.assert_array_equal(mask, per_row.top(depth))
            np.testing.assert_array_equal(mask, _top_depth_by_partition(masked, depth))
            rows, items = np.nonzero(mask | (rng.random(allowed.shape) < 0.1))
            np.testing.assert_array_equal(shared.scores_at(rows, items), per_row.scores_at(rows, items))
            np.testing.assert_array_equal(shared.ranks_at(rows, items), per_row.ranks_at(rows, items))
            np.testing.assert_array_equal(shared.ranks_at(rows, items), _ranks_by_count(masked, rows, items))


def test_float_keys_keep_the_order_of_their_floats() -> None:
    """`_sortable_bits` orders as float comparison does: -0.0 equal to 0.0, infinities at the ends, NaN after all."""
    from recsys_platform.model.recommender import _sortable_bits as sortable_bits

    rng = np.random.default_rng(5)
    values = np.r_[rng.normal(size=500) * 10.0 ** rng.integers(-30, 30, 500), 0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45]
    values = values.astype(np.float32)
    keys = sortable_bits(values)
    finite_order = np.argsort(values, kind="stable")
    assert (np.diff(keys[finite_order].astype(np.int64)) >= 0).all()
    same = values[:, None] == values[None, :]
    np.testing.assert_array_equal(keys[:, None] == keys[None, :], same)
    assert sortable_bits(np.array([np.nan, -np.nan], np.float32)).min() > keys.max()


@pytest.mark.parametrize("kind", ["continuous", "counts", "rounded", "constant"])
def test_the_fill_order_equals_its_two_key_sort(kind: str) -> None:
    """Each row's best allowed items by (score, shared tie-break vector, item index) from one sort of integer keys:
    the same items in the same order as a lexsort of the two keys (ties, -0.0, -inf and NaN scores, rows with few
    or no allowed items), and the candidates' lists with the tail merged after them are what one sort of both
    gives."""
    from recsys_platform.model.history import Vocabulary
    from recsys_platform.model.recommender import _best_allowed, _run_positions, _top_k

    rng = np.random.default_rng(11 + len(kind))
    for n_items in (3, 40, 600):
        raw = {
            "continuous": rng.normal(size=(50, n_items)),
            "counts": rng.integers(-2, 3, size=(50, n_items)),
            "rounded": np.round(rng.normal(size=(50, n_items)), 1),
            "constant": np.zeros((50, n_items)),
        }[kind]
        score = raw.astype(np.float32)
        score[rng.random(score.shape) < 0.05] = -np.inf
        score[rng.random(score.shape) < 0.02] = np.nan
        score[score == 0] = np.where(rng.random(int((score == 0).sum())) < 0.5, -0.0, 0.0)
        tie_break = np.round(rng.normal(size=n_items), 1).astype(np.float32)
        allowed = rng.random(score.shape) < rng.uniform(0.0, 1.0, size=(50, 1))
        for k in (1, 7, n_items + 5):
            rows, cols = _best_allowed(score, tie_break, allowed, k)
            expected_rows, expected_cols = [], []
            for r in range(len(score)):
                ease = np.where(allowed[r] & np.isfinite(score[r]), score[r], -1e30)
                order = np.lexsort((-tie_break, -ease))[:k]
                order = order[allowed[r, order]]
                expected_rows += [r] * len(order)
                expected_cols += order.tolist()
            np.testing.assert_array_equal(rows, expected_rows)
            np.testing.assert_array_equal(cols, expected_cols)
        # the tail after each row's candidates, merged by one stable sort by row, is a sort of everything
        n_rows = len(score)
        vocab = Vocabulary(pl.Series([f"u{i}" for i in range(n_rows)]), pl.Series([f"i{j}" for j in range(n_items)]))
        cand = rng.random(score.shape) < 0.2
        c_rows, c_items = np.nonzero(cand)
        c_score = np.round(rng.normal(size=len(c_rows)), 1)
        c_score[rng.random(len(c_score)) < 0.05] = np.nan
        t_rows, t_items = _best_allowed(score, tie_break, allowed & ~cand, n_items)
        floor = np.full(n_rows, np.inf)
        np.minimum.at(floor, c_rows[np.isfinite(c_score)], c_score[np.isfinite(c_score)])
        floor = np.where(np.isfinite(floor), floor, 0.0)
        t_score = floor[t_rows] - 1.0 - _run_positions(t_rows) * 1e-3
        users = np.arange(n_rows)
        merged = _top_k(c_rows, c_items, c_score, 25, users, vocab, (t_rows, t_items, t_score))
        together = _top_k(np.r_[c_rows, t_rows], np.r_[c_items, t_items], np.r_[c_score, t_score], 25, users, vocab)
        assert merged.equals(together)


def test_blocks_scored_on_threads_give_the_same_lists_in_the_same_order(world) -> None:
    rec, users = world["rec"], world["ds"].users["user_id"]
    one = rec.recommend(users, 20, block_users=32)
    assert one["user_id"].n_unique() > 200  # several blocks of 32 users
    for fill in (False, True):
        serial = rec.recommend(users, 20, block_users=32, fill=fill)
        threaded = rec.recommend(users, 20, block_users=32, fill=fill, workers=2)
        assert threaded.equals(serial)


def test_a_block_of_users_without_history_gets_the_lists_of_the_shared_sources() -> None:
    # a block in which no user has an interaction (new accounts in the users table, scored together) once failed
    # in the session features: scipy's indexing of no pairs gives an empty sparse matrix, not an empty array
    users = schemas.conform(
        pl.concat([USERS, pl.DataFrame({"user_id": ["new"], "household_type": ["single"]})], how="diagonal"),
        schemas.USER_SCHEMA,
    )
    rec = fit_serving(RULES, ITEMS, users, CUTOFF, FAST, ColumnScorer("score_pop"))
    alone = rec.recommend(pl.Series(["new"]), k=3)
    assert alone["user_id"].to_list() == ["new"] * 3  # popular released items: never kids (single) nor "soon"
    assert set(alone["item_id"]) <= {"n0", "n1", "n2", "n3", "n4"}
    together = rec.recommend(pl.Series(["single", "new"]), k=3, block_users=1000)
    assert together.filter(pl.col("user_id") == "new").equals(alone)


def test_a_block_without_any_candidate_gives_no_lists_rather_than_an_error() -> None:
    # nothing released yet: no source has a candidate for anyone, and the pair features read no pair
    unreleased = ITEMS.with_columns(release_date=pl.lit(CUTOFF.date() + timedelta(days=30)))
    rec = fit_serving(RULES, unreleased, USERS, CUTOFF, FAST, ColumnScorer("score_pop"))
    profiles, block = rec.block(rec.vocab.user_rows(pl.Series(["r", "single"])))
    assert len(block) == 0 and block.features.shape == (0, len(FEATURES))
    assert rec.recommend(pl.Series(["r", "single"]), k=3).is_empty()
