"""The refresh path on real data: a recommender fitted by the training procedure and saved as the serving state,
a deployed SQLite store, and session events that must move each user's recommendations (completed item leaves,
night sleep search, rising steps and heart rate)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from recsys_platform import schemas
from recsys_platform.config import PipelineParams
from recsys_platform.dev.generator import GeneratorConfig, generate
from recsys_platform.features.tables import build_interactions
from recsys_platform.model import procedure
from recsys_platform.model.serving import serving_recommender
from recsys_platform.model.state import save_state, state_url
from recsys_platform.realtime import refresh
from recsys_platform.realtime.sessions import SLEEP_TYPES, session_features
from recsys_platform.serve import deployment
from recsys_platform.serve import read_path as serving
from recsys_platform.serve.online_store import StaleWriteError, open_online_store

END = datetime(2026, 10, 1, 12, tzinfo=UTC)
NOW = END + timedelta(minutes=30)
PARAMS = replace(PipelineParams(), top_n=30)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """150 users x 8 days, the recommender fitted on them and saved as model 1's serving state beside the lake
    (as `recommendations` saves it), the interactions as the batch table."""
    ds = generate(GeneratorConfig(n_users=150, days=8, seed=5, end=END))
    interactions = build_interactions(ds.events, ds.items)
    cutoff = interactions["event_time"].max() + timedelta(microseconds=1)
    rec = procedure.fit_recommender(
        interactions, ds.items, ds.users, cutoff, PARAMS.model_params(), PARAMS.max_training_users
    )
    lake = str(tmp_path_factory.mktemp("lake"))
    save_state(rec, "1", state_url(lake))
    return {"items": ds.items, "users": ds.users, "interactions": interactions, "lake": lake, "params": rec.params}


@pytest.fixture
def store(tmp_path: Path):
    """A SQLite online store with version 1 active."""
    with open_online_store(f"sqlite:///{tmp_path / 'store.sqlite'}") as s:
        deployment.deploy(s, "1", "snap-1", {"recs": {}, "user_features": {}})
        yield s


def _event(user: str, kind: str, at: datetime, **kw: object) -> dict:
    return {
        "event_id": f"rt-{user}-{kind}-{at.timestamp()}",
        "user_id": user,
        "event_type": kind,
        "event_time": at,
        **kw,
    }


def _events(events: list[dict]) -> pl.DataFrame:
    if not events:
        return schemas.empty_frame(schemas.EVENT_SCHEMA)
    return schemas.conform(pl.DataFrame(events), schemas.EVENT_SCHEMA)


def _scored_for(world: dict, mine: pl.DataFrame, user_ids: list[str]):
    """What the refresh asset scores with: the saved serving state of the version, via `serving_recommender`."""

    def scored_for(version: str) -> pl.DataFrame:
        rec, _ = serving_recommender(
            None, world["items"], world["users"], NOW, version, "unused://", "recsys-ranker", world["lake"]
        )
        return refresh.score_touched(rec, mine, world["users"], user_ids, NOW, 3 * PARAMS.top_n)

    return scored_for


def _refresh(world: dict, store, user: str, events: list[dict]) -> list[serving.RecommendedItem]:
    recent = _events(events)
    mine = refresh.touched_interactions(world["interactions"], recent, world["items"], [user])
    assert mine["user_id"].unique().to_list() == [user]
    feats = refresh.touched_user_features(mine, world["items"], world["users"], [user], NOW)
    sessions = session_features(recent, world["users"], world["items"], PARAMS.watermark_minutes)
    report = refresh.refresh_users(
        store, feats, sessions, world["items"], PARAMS.top_n, _scored_for(world, mine, [user]), now=NOW
    )
    assert report.rescored_users == 1 and report.model_version == "1" and report.slot == "blue"
    return serving.recommend(store, user, k=PARAMS.top_n).items


def _user_with_offset(world: dict, night: bool, nth: int = 0) -> str:
    local = (NOW.hour + world["users"]["utc_offset_hours"]) % 24
    is_night = (local >= 21) | (local < 5)
    active = world["interactions"]["user_id"].unique()
    return world["users"].filter((is_night == night) & pl.col("user_id").is_in(active.implode()))["user_id"].sort()[nth]


def _ranks(items: list[serving.RecommendedItem], types: tuple[str, ...], top: int = 10) -> int:
    return sum(1 for i in items[:top] if i.content_type in types)


def test_refresh_writes_the_active_slot_and_a_completed_item_leaves_the_list(world: dict, store) -> None:
    user = _user_with_offset(world, night=False)
    before = _refresh(world, store, user, [])
    assert len(before) == PARAMS.top_n
    top = before[0].item_id
    after = _refresh(world, store, user, [_event(user, "content_complete", NOW - timedelta(minutes=1), item_id=top)])
    assert top not in [i.item_id for i in after]
    features = store.read("user_features", [user]).values[user]
    assert '"sess_completes":1' in features and '"refreshed_at"' in features


def test_touched_interactions_are_the_users_batch_rows_plus_new_events_once(world: dict) -> None:
    user = _user_with_offset(world, night=False)
    batch = world["interactions"].filter(pl.col("user_id") == user)
    replayed = batch.tail(1).select("event_id", "user_id", "event_type", "event_time", "item_id").to_dicts()
    other = _user_with_offset(world, night=False, nth=1)
    new = [_event(user, "content_start", NOW - timedelta(minutes=3), item_id=batch["item_id"][0])]
    new += [_event(other, "content_start", NOW - timedelta(minutes=3), item_id=batch["item_id"][0])]
    mine = refresh.touched_interactions(world["interactions"].lazy(), _events(replayed + new), world["items"], [user])
    assert mine.height == batch.height + 1  # the replayed batch event once, the other user's not at all
    assert mine["event_id"].is_unique().all() and mine["user_id"].unique().to_list() == [user]
    assert mine["event_time"].is_sorted()
    # and the re-scored list reads them: one more play changes the user's scores
    scored = _scored_for(world, mine, [user])("1")
    unchanged = _scored_for(world, batch, [user])("1")
    assert scored.height == unchanged.height == 3 * PARAMS.top_n
    assert not scored.select("item_id", "score").equals(unchanged.select("item_id", "score"))


def test_a_night_time_sleep_search_moves_sleep_content_up(world: dict, store) -> None:
    night_user = _user_with_offset(world, night=True)
    before = _refresh(world, store, night_user, [])
    search = [_event(night_user, "search", NOW - timedelta(minutes=2), query="sleep story bedtime")]
    after = _refresh(world, store, night_user, search)
    assert _ranks(after, SLEEP_TYPES) > _ranks(before, SLEEP_TYPES)
    assert _ranks(after, SLEEP_TYPES) >= 7
    # The same search in the daytime moves sleep content less.
    day_user = _user_with_offset(world, night=False)
    day_before = _refresh(world, store, day_user, [])
    day_after = _refresh(world, store, day_user, [_event(day_user, "search", NOW, query="sleep story bedtime")])
    assert _ranks(day_after, SLEEP_TYPES) - _ranks(day_before, SLEEP_TYPES) < _ranks(after, SLEEP_TYPES)
    # The same user and search with the clock of a daytime time zone: only `is_night` differs.
    offset = pl.when(pl.col("user_id") == night_user).then(pl.col("utc_offset_hours") + 12)
    daytime = dict(world, users=world["users"].with_columns(offset.otherwise(pl.col("utc_offset_hours"))))
    same_user_day = _refresh(daytime, store, night_user, search)
    assert _ranks(same_user_day, SLEEP_TYPES) < _ranks(after, SLEEP_TYPES)
    assert _ranks(same_user_day, SLEEP_TYPES, top=30) < _ranks(after, SLEEP_TYPES, top=30)


def test_rising_steps_and_heart_rate_move_movement_content_up(world: dict, store) -> None:
    # the first daytime user whose best movement item is not already first: there is room to move it up
    for nth in range(20):
        user = _user_with_offset(world, night=False, nth=nth)
        before = _refresh(world, store, user, [])
        if next((i.rank for i in before if i.content_type == "movement"), 99) > 1:
            break
    else:
        pytest.fail("no daytime user of the first 20 has room to move a movement item up")
    readings = [
        _event(user, "biometric", NOW - timedelta(minutes=m), steps=steps, heart_rate=hr)
        for m, steps, hr in ((8, 200, 70.0), (5, 600, 82.0), (2, 1100, 96.0), (0, 1500, 104.0))
    ]
    after = _refresh(world, store, user, readings)
    best = [next((i.rank for i in items if i.content_type == "movement"), 99) for items in (before, after)]
    # The session brings movement up, the best item to at least rank 8. How many movement items reach the top 10
    # depends on the spread of the model's scores (a count of 3 held with one set of package versions and not with
    # the next, at the same commit), so the mechanism is asserted exactly instead: rising steps and heart rate
    # (both at full strength here) add the same boost, 2 per-user standard deviations, to every movement item's
    # score and nothing to any other item's.
    moving = ("movement",)
    assert best[1] < best[0] and best[1] <= 8
    assert _ranks(after, moving) > _ranks(before, moving)
    assert _ranks(after, moving, top=30) > _ranks(before, moving, top=30)
    score_before = {i.item_id: i.score for i in before}
    shift = {i.item_id: round(i.score - score_before[i.item_id], 6) for i in after if i.item_id in score_before}
    kind = {i.item_id: i.content_type for i in after}
    assert {d for k, d in shift.items() if kind[k] == "movement"} == {2.0}
    assert {d for k, d in shift.items() if kind[k] != "movement"} == {0.0}
    assert any(kind[k] != "movement" for k in shift)
    # Whatever the model: a boost shared by every movement item can only move each of them up.
    rank_after = {i.item_id: i.rank for i in after}
    assert all(rank_after.get(i.item_id, 99) <= i.rank for i in before if i.content_type == "movement")
    # Only the context changed: the non-movement items keep their relative order.
    others = [i.item_id for i in after if i.content_type != "movement"]
    assert others == [i.item_id for i in before if i.item_id in set(others)]


def test_a_write_refused_after_a_flip_is_redone_on_the_new_slot(world: dict, store) -> None:
    user = _user_with_offset(world, night=False)
    mine = refresh.touched_interactions(world["interactions"], _events([]), world["items"], [user])
    feats = refresh.touched_user_features(mine, world["items"], world["users"], [user], NOW)
    scored = _scored_for(world, mine, [user])
    versions = []

    def scored_for(version: str) -> pl.DataFrame:
        # A deploy of version 2 lands while version 1 is being scored (only once).
        versions.append(version)
        if len(versions) == 1:
            deployment.deploy(store, "2", "snap-2", {"recs": {}, "user_features": {}})
        return scored("1")  # version 2 shares version 1's serving fit in this test

    report = refresh.refresh_users(store, feats, pl.DataFrame(), world["items"], PARAMS.top_n, scored_for, now=NOW)
    assert versions == ["1", "2"]
    assert (report.attempts, report.model_version, report.slot) == (2, "2", "green")
    assert store.read_slot("blue", "recs", [user]).values[user] is None  # nothing half-written in the old slot
    assert store.read_slot("blue", "user_features", [user]).values[user] is None
    assert (
        serving.recommend(store, user).model_version == "2" and serving.recommend(store, user).source == "personalized"
    )
    with pytest.raises(StaleWriteError):
        deployment.write_user_updates(store, "1", "recs", {user: "{}"})


def test_the_refreshed_list_follows_the_repeat_listen_policy(world: dict, store) -> None:
    from recsys_platform.batch.rules import played_pairs

    # the user who replays most: without the policy their refreshed top 10 holds many items they played
    played_all = played_pairs(world["interactions"]).filter(~pl.col("favourite"))
    user = played_all.group_by("user_id").len().sort("len", "user_id", descending=[True, False])["user_id"][0]
    mine = refresh.touched_interactions(world["interactions"], _events([]), world["items"], [user])
    feats = refresh.touched_user_features(mine, world["items"], world["users"], [user], NOW)
    played = played_pairs(mine)
    mine_played = set(played.filter(~pl.col("favourite"))["item_id"])

    def top10(policy: tuple[int, int]) -> list[str]:
        refresh.refresh_users(
            store, feats, pl.DataFrame(), world["items"], PARAMS.top_n, _scored_for(world, mine, [user]), NOW,
            played=played, replay_policy=policy,
        )  # fmt: skip
        return [i.item_id for i in serving.recommend(store, user, k=10).items]

    unlimited = top10((-1, 10))
    assert sum(i in mine_played for i in unlimited) > 1
    limited = top10((1, 10))
    assert sum(i in mine_played for i in limited) == 1 and len(limited) == 10


def test_the_refresh_reports_whose_top_recommendation_changed(world: dict, store) -> None:
    """The users whose first item the refresh changed (what event-driven push reacts to), and only them."""
    user = _user_with_offset(world, night=False, nth=1)

    def refreshed(events: list[dict]) -> refresh.RefreshReport:
        recent = _events(events)
        mine = refresh.touched_interactions(world["interactions"], recent, world["items"], [user])
        feats = refresh.touched_user_features(mine, world["items"], world["users"], [user], NOW)
        sessions = session_features(recent, world["users"], world["items"], PARAMS.watermark_minutes)
        scored = _scored_for(world, mine, [user])
        return refresh.refresh_users(store, feats, sessions, world["items"], PARAMS.top_n, scored, now=NOW)

    first = refreshed([])
    top = serving.recommend(store, user, k=1).items[0].item_id
    assert first.top_changed == {user: top}  # nothing was there before
    assert refreshed([]).top_changed == {}  # same events, same list
    done = refreshed([_event(user, "content_complete", NOW - timedelta(minutes=1), item_id=top)])
    new_top = serving.recommend(store, user, k=1).items[0].item_id
    assert new_top != top and done.top_changed == {user: new_top}


def test_each_refresh_adds_the_lists_it_wrote_to_the_lake(world: dict, store, tmp_path: Path) -> None:
    """The `realtime_recommendations` table (a catalog view): every list a refresh wrote, one file per run."""
    from recsys_platform.analytics.duckdb_catalog import build_catalog

    user = _user_with_offset(world, night=False, nth=2)
    items = _refresh(world, store, user, [])
    report = refresh.RefreshReport(users=1, model_version="1", slot="blue")
    report.lists = pl.DataFrame(
        {
            "user_id": [user] * len(items),
            "rank": [i.rank for i in items],
            "item_id": [i.item_id for i in items],
            "score": [i.score for i in items],
        }
    )
    rows = refresh.refreshed_rows(report, "2026-10-01-12:00", NOW)
    assert rows.columns == list(schemas.REALTIME_RECOMMENDATION_SCHEMA)
    assert rows["item_id"].to_list() == [i.item_id for i in items] and set(rows["slot"]) == {"blue"}
    lake = tmp_path / "lake"
    keys = [refresh.write_refreshed(str(lake), "2026-10-01-12:00", run, rows) for run in ("aaaa1111", "bbbb2222")]
    assert keys == [f"realtime_recommendations/2026-10-01-12:00.{r}.parquet" for r in ("aaaa1111", "bbbb2222")]
    assert refresh.write_refreshed(str(lake), "2026-10-01-12:00", "cccc", rows.head(0)) is None  # nothing to add
    assert build_catalog(tmp_path / "c.duckdb", str(lake), ["realtime_recommendations"]) == ["realtime_recommendations"]
    import duckdb

    con = duckdb.connect(str(tmp_path / "c.duckdb"), read_only=True)
    assert con.execute("SELECT count(*), count(DISTINCT user_id) FROM realtime_recommendations").fetchone() == (
        2 * len(items),
        1,
    )
    con.close()
