"""Session signals as ranker features: the text encoders, the per-user session state and the feature values,
checked by hand on tiny inputs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from recsys_platform import schemas
from recsys_platform.model import candidates, text
from recsys_platform.model.candidates import FEATURES, SESSION_FEATURE_GROUPS, daypart
from recsys_platform.model.catalogue import Catalogue
from recsys_platform.model.history import PairHistory, Vocabulary
from recsys_platform.model.profiles import Profiles
from recsys_platform.model.signals import SignalHistory, signal_events, touched_signals

T = datetime(2026, 1, 10, 22, 30, tzinfo=UTC)  # u0's latest play (22:30 UTC, night for u0 at UTC+0)
CUTOFF = T + timedelta(hours=1)
ITEMS = pl.DataFrame(
    {
        "item_id": ["i0", "i1", "i2"],
        "title": ["Sleep Story fantasy #0", "Movement yoga #1", "Meditation calm #2"],
        "content_type": ["sleep_story", "movement", "meditation"],
        "topic": ["fantasy", "yoga", "calm"],
    }
)
USERS = pl.DataFrame({"user_id": ["u0", "u1"], "utc_offset_hours": [0, 2]})


def _s(moment: datetime) -> float:
    return moment.timestamp()


def _signals(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {
                "event_id": f"e{k}",
                "user_id": u,
                "event_time": t,
                "event_type": kind,
                "query": q,
                "steps": s,
                "heart_rate": h,
            }
            for k, (u, t, kind, q, s, h) in enumerate(rows)
        ],
        schema=schemas.SESSION_SIGNAL_SCHEMA,
    )


SIGNALS = _signals(
    [
        ("u0", T - timedelta(days=3), "search", "yoga", None, None),
        ("u0", T + timedelta(minutes=5), "search", "Sleep story fantasy", None, None),
        ("u0", T - timedelta(days=1), "biometric", None, 50.0, 50.0),
        ("u0", T - timedelta(minutes=10), "biometric", None, 100.0, 60.0),
        ("u0", T, "biometric", None, 300.0, 80.0),
        ("u0", CUTOFF + timedelta(minutes=1), "biometric", None, 9000.0, 190.0),  # after the cutoff: never read
        ("u0", CUTOFF + timedelta(minutes=2), "search", "kids lullaby", None, None),  # after the cutoff
    ]
)


@pytest.fixture()
def world() -> tuple[Catalogue, Profiles]:
    """u0 played i1 (movement) two days and 14 hours before T, i0 (sleep story, bounced) 20 minutes before T,
    and i2 (meditation) at T; u1 played nothing."""
    catalogue = Catalogue.build(Vocabulary.build(USERS["user_id"], ITEMS["item_id"]), ITEMS, USERS)
    return catalogue, Profiles.of(_history(catalogue, CUTOFF, SIGNALS), np.array([0, 1]))


def test_hashed_encoder_is_deterministic_unit_length_and_matches_shared_words() -> None:
    v = text.encode(["sleep story fantasy", "Sleep Story fantasy #0", "yoga stretch", ""], "hashed")
    assert v.shape == (4, text.HASHED_DIM) and v.dtype == np.float32
    assert np.linalg.norm(v[:3], axis=1) == pytest.approx([1.0, 1.0, 1.0], abs=1e-6)
    assert not v[3].any()  # no text: the zero vector
    # "sleep story fantasy" shares 3 of its 3 words with the title's 4 ("#0" is the word "0"): cosine 3/sqrt(12)
    # unless two words share a bucket, which these do not
    assert float(v[0] @ v[1]) == pytest.approx(3 / np.sqrt(3 * 4), abs=1e-6)
    assert float(v[0] @ v[2]) == pytest.approx(0.0, abs=1e-6)
    assert np.array_equal(text.encode(["yoga stretch"], "hashed")[0], v[2])


def test_auto_falls_back_to_hashed_without_the_embeddings_extra(monkeypatch) -> None:
    monkeypatch.setattr(text, "minilm_available", lambda: False)
    assert text.resolve_encoder("auto") == "hashed"
    with pytest.raises(text.EncoderUnavailableError, match=r"\[embeddings\]"):
        text.encode(["a query nobody has embedded yet"], "minilm")
    with pytest.raises(ValueError, match="unknown text encoder"):
        text.resolve_encoder("word2vec")


def test_session_state_by_hand(world) -> None:
    _, profiles = world
    s = profiles.session
    # the latest search before the cutoff, 5 minutes after the latest play (the one after the cutoff is unread)
    assert s.search_after_min[0] == pytest.approx(5.0)
    expected = text.encode(["sleep story fantasy"], "hashed")[0]
    assert np.allclose(s.search_vec[0], expected)
    mean = text.encode(["sleep story fantasy"], "hashed")[0] + text.encode(["yoga"], "hashed")[0]
    assert np.allclose(s.recent_search_vec[0], mean / np.linalg.norm(mean), atol=1e-6)
    # readings 10 min before and at the latest play are in the window (x = -10, 0 minutes): slopes 200/10, 20/10
    assert s.steps_trend[0] == pytest.approx(20.0) and s.heart_rate_trend[0] == pytest.approx(2.0)
    # the latest reading against the mean of the earlier ones: 300 - (50 + 100) / 2, 80 - (50 + 60) / 2
    assert s.steps_rise[0] == pytest.approx(225.0) and s.heart_rate_rise[0] == pytest.approx(25.0)
    assert s.bio_after_min[0] == pytest.approx(0.0)
    assert s.anchor_s[0] == pytest.approx(_s(T + timedelta(minutes=5)))
    # u1 has nothing
    assert np.isnan([s.search_after_min[1], s.steps_trend[1], s.steps_rise[1], s.bio_after_min[1]]).all()
    assert not s.search_vec[1].any()


def test_session_features_by_hand(world) -> None:
    catalogue, profiles = world
    rows, items = np.zeros(3, np.int64), np.array([0, 1, 2])  # u0 x (i0 sleep story, i1 movement, i2 meditation)
    every = tuple(f for group in SESSION_FEATURE_GROUPS.values() for f in group)
    cols = candidates._session_columns(catalogue, profiles, rows, items, "hashed", every)
    # one pair of each type; i0 bounced: (bounced + 0.5) / (pairs + 2)
    assert cols["type_bounce_rate"] == pytest.approx([1.5 / 3, 0.5 / 3, 0.5 / 3])
    # the hour up to the latest play holds i0 (bounced) and i2; no movement play in it
    assert cols["recent_type_bounce_rate"][[0, 2]] == pytest.approx([1.0, 0.0])
    assert np.isnan(cols["recent_type_bounce_rate"][1])
    assert cols["user_recent_bounce_rate"] == pytest.approx([0.5] * 3)
    # the latest event is the search at 22:35 UTC (u0 is at UTC+0): night; night plays are i0 and i2
    assert cols["local_hour"] == pytest.approx([22.0] * 3)
    assert cols["type_daypart_share"] == pytest.approx([0.5, 0.0, 0.5])
    q = text.encode(["sleep story fantasy"], "hashed")[0]
    assert cols["search_sim"] == pytest.approx(catalogue.item_vectors("hashed") @ q, abs=1e-6)
    assert cols["search_sim"][0] > 0.5 and cols["search_sim"][0] > cols["search_sim"][1]
    assert cols["search_after_min"] == pytest.approx([5.0] * 3)
    assert cols["steps_trend"] == pytest.approx([20.0] * 3)


def test_without_signals_the_session_features_are_missing_not_zero(world) -> None:
    catalogue, _ = world
    vocab = catalogue.vocab
    history = PairHistory.from_arrays(
        vocab, _s(CUTOFF), np.zeros(1, np.int64), np.array([0]), first_s=np.array([_s(T)]), plays=np.ones(1)
    )
    profiles = Profiles.of(history, np.array([0]))
    assert profiles.session is None
    cols = candidates._session_columns(catalogue, profiles, np.zeros(2, np.int64), np.array([0, 1]), "hashed", FEATURES)
    for name in ("search_sim", "steps_trend", "bio_after_min"):
        if name in cols:
            assert np.isnan(cols[name]).all()


def test_dayparts_follow_the_night_hours() -> None:
    hours = np.array([0, 4, 5, 11, 12, 16, 17, 20, 21, 23, np.nan])
    assert daypart(hours).tolist() == [3, 3, 0, 0, 1, 1, 2, 2, 3, 3, -1]
    assert schemas.DAYPARTS[daypart(np.array([schemas.NIGHT_START_HOUR]))[0]] == "night"


def test_signal_events_and_touched_signals_deduplicate_by_event_id() -> None:
    raw = pl.DataFrame(
        {
            "event_id": ["a", "a", "b", "c", "d"],
            "user_id": ["u0", "u0", "u0", "u1", "u0"],
            "event_type": ["search", "search", "biometric", "content_start", "search"],
            "event_time": [T, T, T + timedelta(minutes=1), T, T + timedelta(minutes=2)],
            "query": ["rain", "rain", None, None, "yoga"],
            "steps": [None, None, 120, None, None],
            "heart_rate": [None, None, 70.0, None, None],
        }
    )
    events = signal_events(raw)
    assert events["event_id"].to_list() == ["a", "b", "d"] and events.schema == pl.Schema(schemas.SESSION_SIGNAL_SCHEMA)
    batch = events.filter(pl.col("event_id") != "d")
    both = touched_signals(batch, raw, ["u0"])
    assert both["event_id"].to_list() == ["a", "b", "d"]
    assert touched_signals(None, raw, ["u1"]).height == 0


def test_time_features_are_relative_to_the_users_latest_event_not_the_cutoff(world) -> None:
    """The same history scored an hour or a week after its latest event gets the same session features."""
    catalogue, profiles = world
    every = tuple(f for group in SESSION_FEATURE_GROUPS.values() for f in group)
    rows, items = np.zeros(3, np.int64), np.array([0, 1, 2])
    base = candidates._session_columns(catalogue, profiles, rows, items, "hashed", every)
    shifted = Profiles.of(_history_with_signals(catalogue, CUTOFF + timedelta(days=7)), np.array([0, 1]))
    moved = candidates._session_columns(catalogue, shifted, rows, items, "hashed", every)
    for name in every:
        assert np.allclose(base[name], moved[name], equal_nan=True), name


def _history(catalogue: Catalogue, cutoff: datetime, signals: pl.DataFrame) -> PairHistory:
    """u0's three plays (the fixture's docstring) as of `cutoff`, with `signals`."""
    times = np.array([_s(T - timedelta(days=2, hours=14)), _s(T - timedelta(minutes=20)), _s(T)])
    history = PairHistory.from_arrays(
        catalogue.vocab,
        _s(cutoff),
        np.zeros(3, np.int64),
        np.array([1, 0, 2]),
        first_s=times,
        last_s=times,
        plays=np.ones(3),
        bounces=np.array([0.0, 1.0, 0.0]),
    )
    history.signals = SignalHistory.build(signals, catalogue.vocab.user_rows, cutoff, "hashed")
    return history


def _history_with_signals(catalogue: Catalogue, cutoff: datetime) -> PairHistory:
    # the same signals as the fixture's up to its cutoff: the later ones are dropped here by hand
    return _history(catalogue, cutoff, SIGNALS.filter(pl.col("event_time") < CUTOFF))


def test_each_group_reads_the_same_values_from_only_the_signals_signals_for_keeps(world) -> None:
    catalogue, profiles = world
    rows, items = np.zeros(3, np.int64), np.array([0, 1, 2])
    kept = candidates.signals_for(SIGNALS.lazy())  # the default features: search only
    assert set(kept["event_type"]) == set(candidates.GROUP_SIGNAL_TYPES["search"]) == {"search"}
    assert candidates.signals_for(SIGNALS, ()).height == 0
    assert candidates.signals_for(SIGNALS, candidates.ALL_FEATURES).height == SIGNALS.height
    for group, names in SESSION_FEATURE_GROUPS.items():
        trimmed = Profiles.of(_history(catalogue, CUTOFF, candidates.signals_for(SIGNALS, names)), np.array([0, 1]))
        want = candidates._session_columns(catalogue, profiles, rows, items, "hashed", names)
        got = candidates._session_columns(catalogue, trimmed, rows, items, "hashed", names)
        assert set(got) == set(names), group
        for name in names:
            np.testing.assert_allclose(got[name], want[name], err_msg=f"{group}: {name}")


def test_a_blocks_signals_are_found_per_user_as_a_pass_over_everyones_found_them() -> None:
    # the positions and block rows `of_rows` gives equal those of marking the block's rows in an array over every user
    # and mapping every signal through it (the pass it replaces), repeated users at their last position included
    rng = np.random.default_rng(3)
    user = np.sort(rng.integers(0, 60, 500))
    history = SignalHistory(
        encoder="hashed",
        user=user,
        time_s=np.arange(500, dtype=np.float64),
        query=np.full(500, -1),
        steps=np.full(500, np.nan),
        heart_rate=np.full(500, np.nan),
        queries=(),
    )
    for rows in (rng.integers(0, 80, 25), np.array([5, 9, 5, 70, 9]), np.arange(60), np.zeros(0, np.int64)):
        local = np.full(max(int(rows.max(initial=0)), int(user.max())) + 1, -1)
        local[rows] = np.arange(len(rows))
        expected_r = local[user]
        expected_at = np.flatnonzero(expected_r >= 0)
        at, r = history.of_rows(rows)
        np.testing.assert_array_equal(at, expected_at)
        np.testing.assert_array_equal(r, expected_r[expected_at])


def test_the_recent_search_vector_sums_each_users_latest_searches_oldest_first() -> None:
    """The recent-intent vector of a block: each user's latest RECENT_SEARCHES query vectors summed oldest first, then
    unit length; bit for bit what an unbuffered np.add.at in the users' time order gives (users with no search, one,
    and more than RECENT_SEARCHES, in a block whose rows are not in user order)."""
    from recsys_platform.model.signals import RECENT_SEARCHES, SessionState

    rng = np.random.default_rng(3)
    vectors = rng.random((40, 16)).astype(np.float32)
    n = 30
    per_user = rng.integers(0, 2 * RECENT_SEARCHES, n)
    block_rows = rng.permutation(n)  # a user's searches are a run in time order; the runs are not in row order
    r = np.concatenate([np.full(per_user[u], u) for u in block_rows])
    q = rng.integers(-1, 40, len(r))  # -1: a signal that is not a search
    t = np.arange(len(r), dtype=np.float64)
    state = SessionState(*(np.zeros((n, 16), np.float32) for _ in range(2)), *(np.full(n, np.nan) for _ in range(7)))
    state._searches(r, t, q, vectors, np.zeros(n))

    expected = np.zeros((n, 16), np.float32)
    searched = q >= 0
    rs, qs = r[searched], q[searched]
    for u in range(n):
        mine = qs[rs == u][-RECENT_SEARCHES:]
        np.add.at(expected, np.full(len(mine), u), vectors[mine])
    norm = np.linalg.norm(expected, axis=1, keepdims=True)
    expected /= np.where(norm > 0, norm, 1.0)
    np.testing.assert_array_equal(state.recent_search_vec, expected)
    assert (state.recent_search_vec.any(axis=1) == np.isin(np.arange(n), rs)).all()


def test_search_similarity_from_the_items_hashed_words_equals_the_dense_product(world, monkeypatch) -> None:
    """Hashed item texts are sparse, so each pair's similarity is summed over the item's few words; dense vectors
    (MiniLM, or any text with more than SPARSE_TEXT_SHARE non-zero cells) go through the matrix product. Both give
    the same values, and NaN for a user without a search (u1)."""
    from recsys_platform.model import catalogue as catalogue_module

    catalogue, profiles = world
    rows, items = np.array([0, 0, 0, 1, 1]), np.array([0, 1, 2, 0, 2])
    names = SESSION_FEATURE_GROUPS["search"]
    assert catalogue.sparse_item_vectors("hashed") is not None
    by_words = candidates._session_columns(catalogue, profiles, rows, items, "hashed", names)
    monkeypatch.setattr(catalogue_module, "SPARSE_TEXT_SHARE", 0.0)
    dense = Catalogue.build(catalogue.vocab, ITEMS, USERS)
    assert dense.sparse_item_vectors("hashed") is None
    by_product = candidates._session_columns(dense, profiles, rows, items, "hashed", names)
    for name in ("search_sim", "search_sim_recent"):
        np.testing.assert_allclose(by_words[name], by_product[name], rtol=0, atol=1e-6)
        assert np.isnan(by_words[name][3:]).all() and np.isfinite(by_words[name][:3]).all()
    assert by_words["search_sim"][0] > 0.5  # "Sleep story fantasy" against i0's title
