"""Candidate sources on hand-made histories: every score checked against arithmetic in the comments."""

from __future__ import annotations

from datetime import UTC, date, datetime

import numpy as np
import polars as pl
import pytest

from recsys_platform import schemas
from recsys_platform.model import sources
from recsys_platform.model.candidates import FEATURES
from recsys_platform.model.catalogue import Catalogue
from recsys_platform.model.history import DAY_S, PairHistory, Vocabulary
from recsys_platform.model.params import ModelParams
from recsys_platform.model.profiles import Profiles

CUTOFF = datetime(2026, 3, 1, tzinfo=UTC)
CUT_S = CUTOFF.timestamp()

# a and b are always consumed together; c is popular on its own; d is rare (as in test_collaborative).
PAIRS = [
    ("u1", "a"),
    ("u1", "b"),
    ("u2", "a"),
    ("u2", "b"),
    ("u3", "a"),
    ("u3", "b"),
    ("u3", "c"),
    ("u4", "c"),
    ("u5", "c"),
    ("u6", "c"),
    ("u6", "d"),
    ("u7", "a"),
]


def history_of(pairs: list[tuple[str, str]], days_before: list[float] | None = None, **cols) -> PairHistory:
    """A history of (user, item) pairs, the k-th pair first played k seconds after the epoch (or
    `days_before` the cutoff), on the vocabulary of the ids that appear."""
    users, items = (pl.Series([p[n] for p in pairs]) for n in (0, 1))
    vocab = Vocabulary.build(users, items)
    first = np.arange(len(pairs), dtype=float) if days_before is None else CUT_S - np.asarray(days_before) * DAY_S
    return PairHistory.from_arrays(vocab, CUT_S, vocab.user_rows(users), vocab.item_cols(items), first_s=first, **cols)


def everyone(history: PairHistory) -> Profiles:
    return Profiles.of(history, np.arange(history.vocab.n_users))


def catalogue_of(history: PairHistory, items: pl.DataFrame | None = None) -> Catalogue:
    items = items if items is not None else pl.DataFrame({"item_id": history.vocab.item_ids})
    return Catalogue.build(history.vocab, items, pl.DataFrame({"user_id": history.vocab.user_ids}))


# --- popularity ------------------------------------------------------------------------------------------


def test_popularity_counts_distinct_users_not_plays() -> None:
    # the same pairs plus u1 playing a three more times: a is still played by u1, u2, u3, u7 = 4 users
    history = history_of(PAIRS, plays=[4] + [1] * (len(PAIRS) - 1))
    scores = sources.fit_popularity(history, catalogue_of(history), ModelParams()).score(everyone(history))
    assert scores.shape == (7, 4) and scores.dtype == np.float32
    # a: 4, b: u1 u2 u3 = 3, c: u3 u4 u5 u6 = 4, d: 1 -- log-scaled, the same for every user
    np.testing.assert_allclose(np.expm1(scores), np.tile([4, 3, 4, 1], (7, 1)), rtol=1e-6)


def test_recent_popularity_decays_by_the_half_life() -> None:
    # half-life 14 days: x played by one user today (weight 1), y by two users 14 days ago (2 x 0.5 = 1),
    # z by four users 28 days ago (4 x 0.25 = 1), w by one user 28 days ago (0.25)
    pairs = [("u0", "x"), ("u1", "y"), ("u2", "y"), *[(f"u{k}", "z") for k in range(4)], ("u3", "w")]
    history = history_of(pairs, days_before=[0, 14, 14, 28, 28, 28, 28, 28])
    src = sources.fit_recent_popularity(history, catalogue_of(history), ModelParams(recent_half_life_days=14.0))
    weighted = dict(zip(history.vocab.item_ids, np.expm1(src.scores), strict=True))
    assert weighted == pytest.approx({"w": 0.25, "x": 1.0, "y": 1.0, "z": 1.0}, rel=1e-5)
    # all time, z (four users) leads: recency is what evens them out
    assert sources.fit_popularity(history, None, ModelParams()).scores.argmax() == 3


# --- EASE / EDLAE ----------------------------------------------------------------------------------------


def test_ease_weights_equal_the_closed_form_with_zero_diagonal() -> None:
    history = history_of(PAIRS)
    src = sources.fit_ease(history, catalogue_of(history), ModelParams(ease_l2=2.0))
    x = history.matrix().toarray().astype(np.float64)
    p = np.linalg.inv(x.T @ x + 2.0 * np.eye(4))
    expected = np.eye(4) - p / np.diag(p)  # Steck 2019, eq. 8: B = I - P / diag(P)
    np.testing.assert_allclose(src.weights, expected, atol=1e-5)
    assert np.all(np.diag(src.weights) == 0)
    # the scores are the binary profile times B; u7 only saw a, and b (always with a) is its best unseen item
    scores = src.score(everyone(history))
    np.testing.assert_allclose(scores, x @ expected, atol=1e-5)
    u7 = history.vocab.user_rows(["u7"])[0]
    assert int(np.argmax(np.where(x[u7] > 0, -np.inf, scores[u7]))) == history.vocab.item_cols(["b"])[0]


def test_the_symmetric_inverse_is_the_inverse_whether_or_not_the_matrix_is_positive_definite() -> None:
    rng = np.random.default_rng(5)
    x = (rng.random((60, 12)) < 0.3).astype(np.float64)
    definite = x.T @ x + 3.0 * np.eye(12)  # a regularised Gram matrix: the Cholesky path
    got = sources.symmetric_inverse(definite)
    np.testing.assert_allclose(got @ definite, np.eye(12), atol=1e-10)
    np.testing.assert_array_equal(got, got.T)
    counts = rng.integers(0, 5, (12, 12)).astype(np.float64)
    indefinite = counts + counts.T  # zero-mean-ish symmetric counts with a small diagonal: not positive definite
    assert np.linalg.eigvalsh(indefinite).min() < 0
    np.testing.assert_allclose(sources.symmetric_inverse(indefinite) @ indefinite, np.eye(12), atol=1e-8)
    np.testing.assert_array_equal(definite, x.T @ x + 3.0 * np.eye(12))  # the argument is left as it was


def test_edlae_is_ease_with_a_dropout_scaled_item_l2() -> None:
    x = (np.random.default_rng(3).random((40, 8)) < 0.3).astype(np.float64)
    gram = x.T @ x
    np.testing.assert_allclose(sources.ease_weights(gram, 5.0, 0.0), sources.ease_weights(gram, 5.0), atol=1e-6)
    dropout, l2 = 0.25, 2.0
    weights = sources.ease_weights(gram, l2, dropout)
    item_l2 = l2 + dropout / (1 - dropout) * np.diag(gram)  # 1/3 of each item's count on top of l2
    for j in range(8):  # column j: ridge regression of item j on the other items, penalty item_l2 per item
        rest = np.delete(np.arange(8), j)
        expected = np.linalg.solve(gram[np.ix_(rest, rest)] + np.diag(item_l2[rest]), gram[rest, j])
        np.testing.assert_allclose(weights[rest, j], expected, atol=1e-5)
        assert weights[j, j] == 0.0


def test_the_gram_matrix_and_ease_weights_are_computed_once_per_history() -> None:
    history = history_of(PAIRS)
    first = sources.fit_ease(history, None, ModelParams(ease_l2=2.0))
    assert sources.fit_ease_recent(history, None, ModelParams(ease_l2=2.0)).weights is first.weights
    assert sources.fit_ease(history, None, ModelParams(ease_l2=3.0)).weights is not first.weights


def test_the_recency_weighted_profile_weights_the_latest_item_1_and_one_half_life_back_half() -> None:
    # u0 played a, b, c, d, e in that order (e latest); half-life 2 positions:
    # e 2^0 = 1, d 2^-0.5 = 0.7071, c 2^-1 = 0.5, b 2^-1.5 = 0.3536, a 2^-2 = 0.25
    history = history_of([("u0", i) for i in "abcde"], days_before=[5, 4, 3, 2, 1])
    profiles = everyone(history)
    np.testing.assert_allclose(
        profiles.recency_weighted(2.0).toarray(), [[0.25, 2**-1.5, 0.5, 2**-0.5, 1.0]], rtol=1e-6
    )
    # ease_recent scores that profile with the same EASE weights
    src = sources.fit_ease_recent(history, None, ModelParams(ease_l2=1.0, recency_half_life=2.0))
    np.testing.assert_allclose(
        src.score(profiles), profiles.recency_weighted(2.0).toarray() @ src.weights, rtol=1e-5, atol=1e-6
    )


# --- item-kNN, sequences, iALS -----------------------------------------------------------------------------


def test_item_knn_keeps_the_k_nearest_neighbours_by_cosine() -> None:
    # users per item: a 4, b 3, c 4, d 1; co-occurrence a-b 3, a-c 1, b-c 1, c-d 1
    # cosine: a-b 3/sqrt(12) = 0.866, a-c 1/4 = 0.25, b-c 1/sqrt(12) = 0.2887, c-d 1/2 = 0.5
    history = history_of(PAIRS)
    ab, ac, bc, cd = 3 / np.sqrt(12), 0.25, 1 / np.sqrt(12), 0.5
    one = sources.fit_item_knn(history, None, ModelParams(knn_neighbours=1)).weights
    np.testing.assert_allclose(one, [[0, ab, 0, 0], [ab, 0, 0, 0], [0, 0, 0, cd], [0, 0, cd, 0]], rtol=1e-6)
    two = sources.fit_item_knn(history, None, ModelParams(knn_neighbours=2)).weights
    # row c keeps d (0.5) and b (0.289), not a (0.25); rows are neighbourhoods, so the matrix is not symmetric
    np.testing.assert_allclose(two, [[0, ab, ac, 0], [ab, 0, bc, 0], [0, bc, 0, cd], [0, 0, cd, 0]], rtol=1e-6)


def test_sequential_transitions_recommend_what_followed_the_last_item() -> None:
    # three users consume a, b, c in that order; u3 has only b, u4 only a. Window 2 steps, decay 0.7:
    # counts a->b 3, b->c 3, a->c 3 x 0.7 = 2.1, plus half of each reverse: b->a 1.5, c->b 1.5, c->a 1.05
    # rows normalised: a [0, 3, 2.1] / 5.1, b [1.5, 0, 3] / 4.5, c [1.05, 1.5, 0] / 2.55
    pairs = [(u, i) for u in ("u0", "u1", "u2") for i in "abc"] + [("u3", "b"), ("u4", "a")]
    history = history_of(pairs)
    src = sources.fit_sequential(history, None, ModelParams(seq_window=2, seq_last_k=10))
    expected = np.array([[0, 3, 2.1], [1.5, 0, 3], [1.05, 1.5, 0]])
    np.testing.assert_allclose(src.transitions, expected / expected.sum(axis=1, keepdims=True), rtol=1e-6)
    scores = src.score(everyone(history))
    assert scores[3].argmax() == 2  # after b: c (3 / 4.5) over a (1.5 / 4.5)
    assert scores[4].argmax() == 1  # after a: b (3 / 5.1) over c (2.1 / 5.1)
    # u0's latest is c (weight 1), then b (1/2), then a (1/3): c's row + b's row / 2 + a's row / 3
    np.testing.assert_allclose(
        scores[0], src.transitions[2] + src.transitions[1] / 2 + src.transitions[0] / 3, rtol=1e-6
    )


def test_ials_separates_two_taste_blocks_and_is_seeded() -> None:
    # users 0-9 like items 0-4, users 10-19 like items 5-9; each user misses one item of their block
    pairs = []
    for u in range(20):
        block = range(0, 5) if u < 10 else range(5, 10)
        missing = (u % 5) + (0 if u < 10 else 5)
        pairs += [(f"u{u:02d}", f"i{i}") for i in block if i != missing]
    history = history_of(pairs)
    params = ModelParams(ials_factors=4, ials_alpha=10.0, ials_l2=1.0, ials_iterations=10, seed=0)
    model = sources.fit_ials(history, None, params)
    profiles = everyone(history)
    scores = np.where(profiles.seen.toarray() > 0, -np.inf, model.score(profiles))
    assert scores.argmax(axis=1).tolist() == [(u % 5) + (0 if u < 10 else 5) for u in range(20)]
    again = sources.fit_ials(history, None, params)
    np.testing.assert_array_equal(model.item_factors, again.item_factors)


def test_ials_user_step_solves_each_users_least_squares_and_leaves_an_empty_profile_at_zero() -> None:
    # the score's definition, one numpy solve per user: (YtY + l2 I + alpha sum y y^T) x = (1 + alpha) sum y; users
    # with at most 3 items (the factors) are solved in item space, u5 (5 items) in factor space
    pairs = [("u0", "a"), ("u0", "b"), ("u1", "c"), ("u2", "a"), ("u2", "c"), ("u2", "d"), ("u3", "e")]
    pairs += [("u5", i) for i in "abcde"]
    users, items = (pl.Series([p[n] for p in pairs]) for n in (0, 1))
    vocab = Vocabulary.build(pl.concat([users, pl.Series(["u4"])]), items)  # u4: in the vocabulary, no pairs
    first = np.arange(len(pairs), dtype=float)
    history = PairHistory.from_arrays(vocab, CUT_S, vocab.user_rows(users), vocab.item_cols(items), first_s=first)
    rng = np.random.default_rng(3)
    factors = sources.Factors(rng.normal(size=(history.vocab.n_items, 3)).astype(np.float32), 2.0, 5.0)
    rows = vocab.user_rows(pl.Series(["u0", "u1", "u2", "u3", "u4", "u5"]))
    profiles = Profiles.of(history, rows)
    y = factors.item_factors.astype(np.float64)
    expected = np.zeros((len(rows), history.vocab.n_items))
    for r in range(len(rows)):
        mine = y[profiles.seen[r].indices]
        x = np.linalg.solve(y.T @ y + 2.0 * np.eye(3) + 5.0 * mine.T @ mine, 6.0 * mine.sum(axis=0))
        expected[r] = x @ y.T
    scores = factors.score(profiles)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    assert not scores[4].any() and scores[:4].all() and scores[5].all()  # u4 has no pairs: x = 0, every score 0
    assert np.diff(profiles.seen.indptr).tolist() == [2, 1, 3, 1, 0, 5]


# --- replays, content, new releases ----------------------------------------------------------------------


def test_replays_rank_the_users_own_most_played_recent_item_first() -> None:
    # ages count from the user's own latest play (z, an hour before the cutoff), half-life 7 days:
    # x 3 plays, 23/24 day before z -> 3 x 2^(-(23/24)/7) = 2.73; y 5 plays, 30 - 1/24 days -> 5 x 2^(-29.96/7)
    # = 0.26; z 1 play -> 1.0; w never played by u0 (only by u1) -> not a candidate
    pairs = [("u0", "x"), ("u0", "y"), ("u0", "z"), ("u1", "w")]
    history = history_of(pairs, days_before=[1, 30, 1 / 24, 2], plays=[3, 5, 1, 1])
    src = sources.fit_replays(history, None, ModelParams(recent_half_life_days=7.0))
    scores = src.score(everyone(history))[0]
    expected = {"w": -np.inf, "x": 3 * 2 ** (-(23 / 24) / 7), "y": 5 * 2 ** (-(30 - 1 / 24) / 7), "z": 1.0}
    assert dict(zip(history.vocab.item_ids, scores.tolist(), strict=True)) == pytest.approx(expected, rel=1e-5)
    assert history.vocab.item_ids[int(scores.argmax())] == "x"
    # the same history seen a month later scores the same: replays do not read the cutoff
    later = Profiles.of(history, np.arange(2), np.full(2, CUT_S + 30 * DAY_S))
    np.testing.assert_array_equal(src.score(later)[0], scores)


CONTENT_ITEMS = pl.DataFrame(
    {
        "item_id": ["i0", "i1", "i2", "i3", "i4"],
        "topic": ["sleep", "focus", "sleep", "calm", "calm"],
        "narrator": ["n1", "n1", "n2", "n1", "n3"],
        "content_type": ["meditation", "music", "music", "meditation", "soundscape"],
    }
)


def test_content_sums_facet_shares_with_the_documented_weights() -> None:
    # u0 played i0 (sleep, n1, meditation) and i1 (focus, n1, music): topic shares sleep 1/2, focus 1/2;
    # narrator n1 1; type meditation 1/2, music 1/2. Weights topic 1.0, narrator 0.6, type 0.4.
    history = history_of([("u0", "i0"), ("u0", "i1"), ("u1", "i2"), ("u1", "i3"), ("u1", "i4")])
    src = sources.fit_content(history, catalogue_of(history, CONTENT_ITEMS), ModelParams())
    assert src.weights == {"topic": 1.0, "narrator": 0.6, "content_type": 0.4}
    expected = [
        1.0 * 0.5 + 0.6 * 1 + 0.4 * 0.5,  # i0: 1.3
        1.0 * 0.5 + 0.6 * 1 + 0.4 * 0.5,  # i1: 1.3
        1.0 * 0.5 + 0.6 * 0 + 0.4 * 0.5,  # i2 (sleep, n2, music): 0.7
        1.0 * 0.0 + 0.6 * 1 + 0.4 * 0.5,  # i3 (calm, n1, meditation): 0.8
        -np.inf,  # i4 (calm, n3, soundscape): nothing in common
    ]
    np.testing.assert_allclose(src.score(everyone(history))[0], expected, rtol=1e-6)


def test_content_ignores_a_facet_every_item_shares() -> None:
    history = history_of([("u0", "i0"), ("u0", "i1"), ("u1", "i2"), ("u1", "i3"), ("u1", "i4")])
    same_narrator = CONTENT_ITEMS.with_columns(narrator=pl.lit("n1"))
    src = sources.fit_content(history, catalogue_of(history, same_narrator), ModelParams())
    assert set(src.facets) == {"topic", "content_type"}
    # i3 now: topic 0 + type 0.4 x 0.5 = 0.2 (the shared narrator adds nothing)
    assert src.score(everyone(history))[0, 3] == pytest.approx(0.2)


def test_new_releases_only_within_two_half_lives_of_the_cutoff() -> None:
    # half-life 7 days: window 14 days before the cutoff (2026-03-01)
    items = pl.DataFrame(
        {
            "item_id": ["fresh", "old", "future", "undated", "today"],
            "release_date": [date(2026, 2, 26), date(2026, 2, 1), date(2026, 3, 3), None, date(2026, 3, 1)],
        }
    ).with_columns(pl.col("release_date").cast(pl.Date))
    # fresh has two users, today one; the others are played too (plays alone do not make an item new)
    pairs = [("u0", "fresh"), ("u1", "fresh"), ("u0", "today"), ("u0", "old"), ("u0", "future"), ("u0", "undated")]
    history = history_of(pairs, days_before=[1, 1, 0.1, 20, 1, 1])
    src = sources.fit_new_releases(history, catalogue_of(history, items), ModelParams(recent_half_life_days=7.0))
    scores = dict(zip(history.vocab.item_ids, src.scores.tolist(), strict=True))
    # log1p(users) + 1: fresh log(3) + 1, released on the cutoff's day log(2) + 1; the rest are not candidates
    assert scores == pytest.approx(
        {"fresh": np.log(3) + 1, "future": -np.inf, "old": -np.inf, "today": np.log(2) + 1, "undated": -np.inf}
    )


# --- the registry ----------------------------------------------------------------------------------------


def test_source_names_are_unique_and_each_has_its_three_features() -> None:
    names = [s.name for s in sources.SOURCES]
    assert len(names) == len(set(names)) and tuple(names) == sources.SOURCE_NAMES
    for name in names:
        for kind in ("score", "z", "rank"):
            assert f"{kind}_{name}" in FEATURES
    assert len(FEATURES) == len(set(FEATURES))
    # every per-source feature belongs to a registered source
    per_source = [f for f in FEATURES if f.split("_", 1)[0] in ("score", "z", "rank")]
    assert sorted(per_source) == sorted(f"{k}_{n}" for n in names for k in ("score", "z", "rank"))
    with pytest.raises(KeyError, match="unknown candidate source 'nope'"):
        sources.spec("nope")


@pytest.mark.parametrize("spec", sources.SOURCES, ids=lambda s: s.name)
def test_every_source_scores_a_block_as_a_float32_users_by_items_array(spec: sources.SourceSpec) -> None:
    """The contract of `Source.score`: one float32 row per profile, finite or -inf, never NaN."""
    history = history_of(PAIRS, days_before=list(range(len(PAIRS))))
    items = pl.DataFrame(
        {
            "item_id": ["a", "b", "c", "d"],
            "topic": ["sleep", "sleep", "focus", None],
            "release_date": [date(2026, 2, 20), None, date(2025, 1, 1), date(2026, 2, 27)],
        }
    )
    catalogue = catalogue_of(history, schemas.conform(items, schemas.ITEM_SCHEMA))
    fitted = spec.fit(history, catalogue, ModelParams(ials_factors=2, ials_iterations=2))
    block = Profiles.of(history, np.array([6, 0, 3]))  # any subset of users, in any order
    scores = fitted.score(block)
    assert scores.shape == (3, 4) and scores.dtype == np.float32
    assert not np.isnan(scores).any()
    # a user's row is the same in any block
    np.testing.assert_array_equal(scores[1], fitted.score(Profiles.of(history, np.array([0])))[0])


def test_journey_position_is_the_mean_place_of_an_item_in_its_users_histories() -> None:
    from recsys_platform.model.candidates import ItemStats

    stats = ItemStats.fit(history_of(PAIRS))  # the k-th pair is played at k seconds: each user's order as listed
    place = dict(zip(history_of(PAIRS).vocab.item_ids.to_list(), stats.journey_position.tolist(), strict=True))
    # a: first for u1, u2 and u3 (u7 has one item: no place); b: last for u1 and u2, the middle of u3's three;
    # c: last for u3, first for u6 (u4 and u5 have one item); d: last for u6
    assert place == pytest.approx({"a": 0.0, "b": (1 + 1 + 0.5) / 3, "c": 0.5, "d": 1.0})
    assert "item_journey_position" in FEATURES


def test_neighbour_counts_pairs_within_the_window_of_one_users_sequence_decayed_by_steps() -> None:
    """u1 plays a, b, c, e in that order; u2 plays c then d. Window 2, decay 0.5: a step apart counts 1, two steps
    0.5; never across users (u1's e and u2's c are adjacent rows), symmetric, nothing on the diagonal."""
    # a pair is a user and an item once, so u1's fourth play is another item, e
    history = history_of([("u1", "a"), ("u1", "b"), ("u1", "c"), ("u1", "e"), ("u2", "c"), ("u2", "d")])
    cols = {i: history.vocab.item_cols(pl.Series([i]))[0] for i in "abcde"}
    gram = sources._neighbour_gram(history, 2, 0.5)
    expected = {("a", "b"): 1.0, ("b", "c"): 1.0, ("c", "e"): 1.0, ("a", "c"): 0.5, ("b", "e"): 0.5, ("c", "d"): 1.0}
    want = np.zeros_like(gram)
    for (x, y), v in expected.items():
        want[cols[x], cols[y]] = want[cols[y], cols[x]] = v
    np.testing.assert_array_equal(gram, want)


def test_a_history_is_ordered_by_user_first_time_and_item_stably_as_lexsort_orders_it() -> None:
    """from_arrays' order (user, first time, item; ties and NaN times included) and dtypes, against np.lexsort; the
    arrays are the history's own (writable)."""
    rng = np.random.default_rng(1)
    for n in (0, 1, 60, 5000):
        users, items = max(n // 10, 1), 30
        user, item = rng.integers(0, users, n), rng.integers(0, items, n)
        first = np.round(rng.random(n) * 20) + 1.7e9  # many ties on (user, first)
        first[rng.random(n) < 0.02] = np.nan
        cols = {
            "first_s": first,
            "last_s": first + 5,
            "plays": rng.integers(0, 5, n),
            "weight": rng.random(n),
            "last_complete_s": np.where(rng.random(n) < 0.5, np.nan, first + 3),
        }
        vocab = Vocabulary.build(pl.Series([str(k) for k in range(users)]), pl.Series([str(k) for k in range(items)]))
        history = PairHistory.from_arrays(vocab, CUT_S, user, item, **cols)
        order = np.lexsort((item, first, user))
        np.testing.assert_array_equal(history.user, user[order])
        np.testing.assert_array_equal(history.item, item[order])
        for name, values in cols.items():
            want = np.asarray(values, np.float64 if name.endswith("_s") else np.float32)[order]
            got = getattr(history, name)
            assert got.dtype == want.dtype and got.flags.writeable
            np.testing.assert_array_equal(got, want)
        assert history.completes.dtype == np.float32 and not history.completes.any()


def test_the_session_ease_takes_its_l2_and_dropout_from_the_params() -> None:
    """EDLAE dropout on the sittings-and-sequence Gram matrix: `fit_ease_session` is `ease_weights` of
    `session_gram` with the params' l2 and dropout, and a dropout changes the weights."""
    history = history_of(PAIRS)
    catalogue = catalogue_of(history)
    params = ModelParams(ease_session_l2=3.0, ease_session_dropout=0.25)
    got = sources.fit_ease_session(history, catalogue, params).weights
    gram = sources.session_gram(history, params.session_gap_minutes)
    np.testing.assert_array_equal(got, sources.ease_weights(gram, 3.0, 0.25))
    plain = sources.fit_ease_session(history, catalogue, params.with_(ease_session_dropout=0.0)).weights
    assert not np.allclose(got, plain)
