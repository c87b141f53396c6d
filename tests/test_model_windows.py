"""Windows derived from the data: the per-user and global temporal splits, truth relevance, the minimum size."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from recsys_platform import schemas
from recsys_platform.model import windows
from recsys_platform.model.windows import (
    MIN_INTERACTIONS,
    MIN_USER_EVENTS,
    MIN_USERS_WITH_LABELS,
    InsufficientHistoryError,
    global_split,
    per_user_split,
    require_enough,
    session_split,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def events(rows: list[tuple[str, str, float, str]]) -> pl.DataFrame:
    """Interactions from (user, item, hour, event_type) rows."""
    return schemas.conform(
        pl.DataFrame(
            {
                "event_id": [f"e{k}" for k in range(len(rows))],
                "user_id": [r[0] for r in rows],
                "item_id": [r[1] for r in rows],
                "event_time": [T0 + timedelta(hours=r[2]) for r in rows],
                "event_type": [r[3] for r in rows],
            }
        ),
        schemas.INTERACTION_SCHEMA,
    )


def plays(user: str, hours: list[float]) -> list[tuple[str, str, float, str]]:
    return [(user, f"{user}-i{k}", h, "content_start") for k, h in enumerate(hours)]


def cutoff_of(split: windows.Split, user: str) -> datetime | None:
    hit = split.cutoffs.filter(pl.col("user_id") == user)
    return hit["cutoff"][0] if hit.height else None


# --- per-user temporal ----------------------------------------------------------------------------------


def test_per_user_split_holds_out_each_users_newest_fifth_at_least_one() -> None:
    rows = (
        plays("a", list(range(10)))  # 10 plays: round(2.0) = 2 held out, cutoff at the 9th (hour 8)
        + plays("b", [0, 1, 2, 3, 4, 5, 6])  # 7 plays: round(1.4) = 1, cutoff at hour 6
        + plays("c", [0, 1, 2])  # 3 = MIN_USER_EVENTS plays: round(0.6) = 1 (at least one), cutoff at hour 2
        + plays("d", [0, 5])  # 2 plays: fewer than MIN_USER_EVENTS, kept whole
        + [("a", "a-i0", 8.5, "content_complete"), ("a", "a-i1", 7.5, "favorite")]  # not plays: not counted
    )
    inter = events(rows)
    split = per_user_split(inter)
    assert MIN_USER_EVENTS == 3
    assert split.cutoffs["user_id"].to_list() == ["a", "b", "c"]
    assert [cutoff_of(split, u) for u in "abc"] == [T0 + timedelta(hours=h) for h in (8, 6, 2)]
    assert split.end == T0 + timedelta(hours=9, microseconds=1)  # just after the newest event (a's hour 9)
    known, truth = split.known(inter), split.truth(inter)
    # a: plays 0-7 and the favourite at 7.5 known; plays 8, 9 and the completion at 8.5 to predict
    known_a = known.filter(pl.col("user_id") == "a").sort("event_time")
    assert known_a["item_id"].to_list() == [f"a-i{k}" for k in range(8)] + ["a-i1"]
    assert known_a["event_type"][-1] == "favorite"
    assert truth.filter(pl.col("user_id") == "a").rows() == [("a", "a-i0", 2), ("a", "a-i8", 1), ("a", "a-i9", 1)]
    assert truth["user_id"].unique().sort().to_list() == ["a", "b", "c"]
    # d is kept whole: all of it known, nothing of it to predict
    assert known.filter(pl.col("user_id") == "d").height == 2
    held = inter.join(split.cutoffs, on="user_id").filter(pl.col("event_time") >= pl.col("cutoff"))
    assert known.height + held.height == inter.height


def test_per_user_split_sends_same_second_ties_with_the_cutoff_event() -> None:
    # 5 plays, the last two in the same second: round(1.0) = 1 held out, but its twin goes with it
    inter = events(plays("a", [0, 1, 2, 3, 3]))
    split = per_user_split(inter)
    assert cutoff_of(split, "a") == T0 + timedelta(hours=3)
    assert split.known(inter).height == 3
    assert split.truth(inter)["item_id"].to_list() == ["a-i3", "a-i4"]


def test_per_user_split_counts_every_event_when_there_are_no_plays() -> None:
    # a dataset of completions only (ratings imported as completions): each event counts as one
    inter = events([("a", f"i{k}", k, "content_complete") for k in range(5)])
    split = per_user_split(inter)
    assert cutoff_of(split, "a") == T0 + timedelta(hours=4)
    assert split.truth(inter).rows() == [("a", "i4", 2)]


def test_truth_relevance_is_the_best_event_favourite_3_completion_2_play_1() -> None:
    # 9 plays at hours 0-8 and x's at 8.2: 10 plays, the newest 2 held out, cutoff at hour 8
    rows = plays("a", [0, 1, 2, 3, 4, 5, 6, 7, 8]) + [
        ("a", "x", 8.2, "content_start"),
        ("a", "x", 8.4, "content_complete"),  # x: play then completion -> 2
        ("a", "y", 8.6, "content_exit"),  # y: an exit only -> 1
        ("a", "a-i8", 8.8, "favorite"),  # the held-out play a-i8 favourited -> 3
        ("a", "z", 7.9, "favorite"),  # before the cutoff (hour 8): known, not truth
    ]
    truth = per_user_split(events(rows)).truth(events(rows))
    assert dict(zip(truth["item_id"], truth["relevance"], strict=True)) == {"a-i8": 3, "x": 2, "y": 1}
    assert windows.RELEVANCE == {"favorite": 3, "content_complete": 2, "content_start": 1, "content_exit": 1}


# --- global temporal ------------------------------------------------------------------------------------


def test_global_split_cuts_at_the_90_percent_quantile_of_plays() -> None:
    rows = [("u0" if h % 2 else "u1", f"i{h}", h, "content_start") for h in range(20)]
    rows += [("late", "j", 18.5, "content_start")]  # only after the cutoff: no history, not evaluated
    rows += [("early", "k", 1.5, "content_start")]  # only before: nothing to predict, not evaluated
    rows += [("u0", "c", 17.0, "content_complete")]  # a completion at the cutoff itself: held out
    inter = events(rows)
    split = global_split(inter)
    # 22 plays at hours 0, 1, 1.5, 2, 3, ..., 18, 18.5, 19: the 0.9 quantile (lower) is index
    # floor(0.9 x 21 = 18.9) = 18 of them, hour 17; the completion is not a play and does not count
    assert split.known_until == T0 + timedelta(hours=17)
    assert split.cutoffs["user_id"].to_list() == ["u0", "u1"]
    assert split.cutoffs["cutoff"].unique().to_list() == [T0 + timedelta(hours=17)]
    truth = split.truth(inter)
    assert sorted(truth["item_id"]) == ["c", "i17", "i18", "i19"]


def test_global_split_knows_nothing_at_or_after_the_cutoff_of_any_user() -> None:
    """Users without history before the cutoff are not evaluated, but their later events are still the
    future: the models must not be fitted on them."""
    rows = [("u0", f"i{h}", h, "content_start") for h in range(20)] + [
        ("late", "j", 18.5, "content_start"),
        ("late", "k", 19.5, "content_complete"),
    ]
    inter = events(rows)
    split = global_split(inter)
    known = split.known(inter)
    assert known["event_time"].max() < split.known_until
    assert known.height == inter.filter(pl.col("event_time") < split.known_until).height
    assert "late" not in split.truth(inter)["user_id"].to_list()


# --- too little data --------------------------------------------------------------------------------------


def _many(n_users: int, per_user: int) -> pl.DataFrame:
    return events([r for u in range(n_users) for r in plays(f"u{u:03d}", list(range(per_user)))])


# --- session -----------------------------------------------------------------------------------------------


def test_session_split_labels_each_users_newest_sitting_from_its_first_play() -> None:
    gap = 1800.0  # half an hour, in seconds
    rows = (
        plays("a", [0, 1, 2, 10, 10.2, 10.4])  # sittings at 0, 1, 2 and 10-10.4: the newest starts at hour 10
        + [("a", "a-i5", 10.8, "content_complete")]  # within the gap of its last play: a label (completion)
        + [("a", "a-i1", 11.0, "favorite")]  # more than the gap after its last play: not this sitting's
        + plays("b", [0, 5])  # 1 play before the newest sitting: fewer than MIN_USER_EVENTS, not held out
        + plays("c", [0, 0.2, 0.4, 3])  # three plays in its first sitting, then one: held out at hour 3
    )
    inter = events(rows)
    split = session_split(inter, gap, name="s")
    assert split.cutoffs["user_id"].to_list() == ["a", "c"]
    assert cutoff_of(split, "a") == T0 + timedelta(hours=10)
    assert cutoff_of(split, "c") == T0 + timedelta(hours=3)
    truth = split.truth(inter)
    assert truth.filter(pl.col("user_id") == "a").select("item_id", "relevance").rows() == [
        ("a-i3", 1),
        ("a-i4", 1),
        ("a-i5", 2),
    ]
    assert truth.filter(pl.col("user_id") == "c")["item_id"].to_list() == ["c-i3"]
    known = split.known(inter)
    assert known.columns == inter.columns
    assert known.filter(pl.col("user_id") == "a")["event_time"].max() == T0 + timedelta(hours=2)
    assert known.filter(pl.col("user_id") == "b").height == 2  # not held out: known whole
    assert split.known_until == T0 + timedelta(hours=5, microseconds=1)


def test_a_session_window_is_built_only_where_there_are_session_signals() -> None:
    from recsys_platform.model import procedure
    from recsys_platform.model.params import ModelParams

    inter = events(plays("a", [0, 1, 2, 10]) + plays("c", [0, 1, 2, 3, 9]))
    params = ModelParams(training_windows="session")
    assert list(procedure.training_windows(inter, params, 0)) == []
    no_signals = pl.DataFrame({"user_id": []}, schema={"user_id": pl.String})
    assert list(procedure.training_windows(inter, params, 0, no_signals)) == []
    search = pl.DataFrame({"user_id": ["a"], "event_type": ["search"]})
    [(split, data)] = list(procedure.training_windows(inter, params, 0, search))
    assert split.name == "training-session" and data is inter
    assert split.cutoffs["user_id"].to_list() == ["a", "c"]


def test_require_enough_names_the_minimum_in_one_message() -> None:
    assert (MIN_INTERACTIONS, MIN_USERS_WITH_LABELS) == (1000, 20)
    require_enough(_many(20, 50))  # 1,000 interactions from 20 users: enough
    with pytest.raises(InsufficientHistoryError) as few_rows:
        require_enough(_many(111, 9))  # 999 interactions
    message = str(few_rows.value)
    assert message.startswith("999 content interactions from 111 users with at least 3 each")
    assert "at least 1,000 interactions and 20 such users" in message
    with pytest.raises(InsufficientHistoryError, match="from 19 users with at least 3 each"):
        require_enough(_many(19, 60))  # 1,140 interactions, but from 19 users
    with pytest.raises(InsufficientHistoryError, match="^0 content interactions from 0 users"):
        require_enough(_many(20, 50).head(0))
