"""Batch scoring by user shard, recommendation sets on real scores, the JSON-lines export, the analyst guide."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys_platform import schemas
from recsys_platform.analytics.duckdb_catalog import build_catalog
from recsys_platform.batch import scoring as bs
from recsys_platform.batch.set_config import BatchConfig, Eligibility, load_sets_config
from recsys_platform.config import PROJECT_ROOT, PipelineParams, Settings
from recsys_platform.dev.experiment_sim import simulate_arms
from recsys_platform.dev.generator import GeneratorConfig, generate
from recsys_platform.experiments import ab_tests as ex
from recsys_platform.features.tables import build_interactions
from recsys_platform.model import procedure
from recsys_platform.model.candidates import allowed_items
from recsys_platform.model.state import load_state, save_state
from recsys_platform.realtime.tree_model import TreeEnsemble

END = datetime(2026, 10, 1, 12, tzinfo=UTC)
NOW = datetime(2026, 10, 1, 13, tzinfo=UTC)
BATCH = BatchConfig(shards=4, items_per_user=60, chunk_users=150)
UNRELEASED = 12  # items announced for next week (clones of popular items): never recommended before their date


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small synthetic world with the experiment simulated, the recommender fitted by the training procedure
    and saved as the serving state (as `recommendations` saves it), and every shard scored from that state."""
    config = load_sets_config(Settings.from_env().recommendation_sets_path)
    config = replace(config, batch=BATCH)
    ds = simulate_arms(generate(GeneratorConfig(n_users=600, days=21, seed=3, end=END)), config.experiments[0], seed=3)
    inter = build_interactions(ds.events, ds.items)
    cutoff = inter["event_time"].max() + timedelta(microseconds=1)
    popular = inter.group_by("item_id").agg(n=pl.col("user_id").n_unique()).sort("n", "item_id", descending=True)
    unreleased = (
        ds.items.join(popular.head(UNRELEASED), on="item_id", how="semi")
        .with_columns(
            item_id="next-" + pl.col("item_id"),
            release_date=pl.lit(cutoff.date() + timedelta(days=7)),
            series_id=pl.lit(None, dtype=pl.String),
            series_position=pl.lit(None, dtype=ds.items.schema["series_position"]),
        )
        .select(ds.items.columns)
    )
    items = pl.concat([ds.items, unreleased])
    ds = replace(ds, items=items)
    params = PipelineParams(recent_exclusion_days=3)  # the recent-completion rule over 3 days (default: half a day)
    rec = procedure.fit_recommender(inter, items, ds.users, cutoff, params.model_params(), params.max_training_users)
    path = str(tmp_path_factory.mktemp("lake") / "serving_state.pkl")
    save_state(rec, "7", path)
    version, served = load_state(path, lightgbm=True)  # as batch_scores loads it
    assert version == "7" and served.history.user.size == 0  # the refresh and the shards rebuild histories
    eligible = bs.eligible_users(ds.users, inter, cutoff, config.eligibility)
    shards = {
        k: bs.score_shard(served, "7", inter, ds.users, eligible, k, BATCH, cutoff, NOW)
        for k in bs.shard_keys(BATCH.shards)
    }
    scores = pl.concat(shards.values())
    searches = bs.last_search_queries(ds.events, before=cutoff)
    ctx = bs.rule_context(ds.users, inter, searches, NOW.date(), cutoff)
    sets, counts = bs.build_sets(scores, ds.items, ctx, config)
    return dict(
        ds=ds, inter=inter, rec=rec, served=served, config=config, cutoff=cutoff, eligible=eligible,
        shards=shards, scores=scores, sets=sets, counts=counts, searches=searches, unreleased=unreleased,
        state_path=path,
    )  # fmt: skip


def test_user_shards_cover_every_user_exactly_once_and_are_stable():
    users = pl.Series("user_id", [f"u{k:07d}" for k in range(20_000)])
    parts = [bs.users_of_shard(users, key, 8) for key in bs.shard_keys(8)]
    assert sum(p.len() for p in parts) == users.len()
    assert pl.concat(parts).sort().equals(users.sort())
    assert all(abs(p.len() - 2500) < 200 for p in parts)
    again = bs.user_shards(users.reverse(), 8).reverse()
    assert again.equals(bs.user_shards(users, 8))
    # sha256-based: pinned, independent of process and library versions
    assert bs.user_shards(pl.Series(["u0000000", "u0000001", "u0000002"]), 8).to_list() == [
        int.from_bytes(__import__("hashlib").sha256(u.encode()).digest()[:8], "big") % 8
        for u in ("u0000000", "u0000001", "u0000002")
    ]
    assert bs.shard_keys(3) == ["shard-00", "shard-01", "shard-02"] and bs.shard_index("shard-11") == 11
    with pytest.raises(ValueError, match="shard-NN"):
        bs.shard_index("eleven")


def test_eligibility_filters_on_status_language_and_recent_activity(world):
    users, inter, cutoff = world["ds"].users, world["inter"], world["cutoff"]
    everyone = bs.eligible_users(users, inter, cutoff, Eligibility(None, (), None))
    assert everyone.len() == users.height
    subs = bs.eligible_users(users, inter, cutoff, Eligibility(None, ("subscriber",), ("en",)))
    expected = users.filter((pl.col("subscription_status") == "subscriber") & (pl.col("language") == "en"))
    assert subs.to_list() == expected["user_id"].sort().to_list()
    recent = bs.eligible_users(users, inter, cutoff, Eligibility(2, (), None))
    active = inter.filter(pl.col("event_time") >= cutoff - timedelta(days=2))["user_id"].unique().sort()
    assert recent.to_list() == active.to_list()


def test_shards_score_each_eligible_user_once_from_the_saved_serving_state(world):
    scores, eligible = world["scores"], world["eligible"]
    per_shard_users = [s["user_id"].unique() for s in world["shards"].values()]
    assert sum(u.len() for u in per_shard_users) == scores["user_id"].n_unique()
    assert set(scores["user_id"].unique()) <= set(eligible)
    assert scores["user_id"].n_unique() >= 0.95 * eligible.len()
    per_user = scores.group_by("user_id").agg(n=pl.len(), ranks=pl.col("rank").sort())
    assert per_user["n"].max() == BATCH.items_per_user
    assert all(r.to_list() == list(range(1, len(r) + 1)) for r in per_user["ranks"])
    assert scores.columns == list(schemas.BATCH_SCORE_SCHEMA)
    # parity: a shard scored from the saved state (its users' rows only) lists exactly what the fitted recommender
    # lists for these users from everyone's history, with LightGBM (batch) and with the numpy trees (refresh)
    users = per_shard_users[0].sort().head(40)
    full = world["rec"].recommend(users, BATCH.items_per_user, fill=True).sort("user_id", "rank")
    mine = scores.filter(pl.col("user_id").is_in(users.implode())).sort("user_id", "rank")
    _, numpy_trees = load_state(world["state_path"])
    assert isinstance(numpy_trees.scorer, TreeEnsemble) and not isinstance(world["served"].scorer, TreeEnsemble)
    one_shard = replace(BATCH, shards=1)
    inter, cutoff = world["inter"], world["cutoff"]
    refresh_like = bs.score_shard(numpy_trees, "7", inter, world["ds"].users, users, "shard-00", one_shard, cutoff, NOW)
    assert full["user_id"].n_unique() == 40
    for other in (mine, refresh_like.sort("user_id", "rank")):
        assert other.select("user_id", "rank", "item_id").equals(full.select("user_id", "rank", "item_id"))
        assert other["score"].to_list() == pytest.approx(full["score"].to_list(), abs=1e-6)


def test_sets_obey_their_rules_on_real_scores(world):
    sets, items, users = world["sets"], world["ds"].items, world["ds"].users
    assert set(sets["set_name"].unique()) == {
        "recommended_for_you",
        "sleep_tonight",
        "because_you_searched",
        "new_for_you",
    }
    sizes = {s.name: s.size for s in world["config"].sets}
    lengths = sets.group_by("set_name", "user_id").agg(n=pl.len(), top=pl.col("rank").max())
    assert all(r["n"] == r["top"] <= sizes[r["set_name"]] for r in lengths.iter_rows(named=True))
    joined = sets.join(items.select("item_id", "is_kids", "release_date"), on="item_id", how="left").join(
        users.select("user_id", "household_type"), on="user_id"
    )
    kids = joined.filter(pl.col("is_kids").fill_null(False))
    assert kids.filter(pl.col("household_type") != "family_with_kids").height == 0
    assert kids.filter(pl.col("set_name") == "sleep_tonight").height == 0
    sleep = sets.filter(pl.col("set_name") == "sleep_tonight")
    assert set(sleep["content_type"].unique()) <= {"sleep_story", "soundscape", "music"}
    assert (sleep["entity_type"] == "series").any()
    new = joined.filter(pl.col("set_name") == "new_for_you")
    assert (new["release_date"] > NOW.date() - timedelta(days=30)).all()
    searched = sets.filter(pl.col("set_name") == "because_you_searched")
    assert searched["context"].is_not_null().all()
    assert set(searched["user_id"]) <= set(world["searches"]["user_id"])
    counts = world["counts"]
    assert counts.columns == list(bs.RULE_COUNT_SCHEMA)
    shuffle = counts.filter((pl.col("set_name") == "recommended_for_you") & (pl.col("rule") == "daily_shuffle"))
    assert shuffle["moved"][0] > 0 and shuffle["removed"][0] == 0
    assert counts.filter(pl.col("rule") == "content_type")["removed"][0] > 0


def test_item_columns_are_the_inner_join_with_the_catalog_in_score_order():
    scores = pl.DataFrame({"user_id": list("aabb"), "item_id": ["i2", "gone", "i1", None], "rank": [1, 2, 1, 2]})
    catalog = pl.DataFrame({"item_id": ["i1", "i2", "i3"], "topic": ["sleep", None, "focus"]})
    for cat in (catalog, pl.concat([catalog, catalog.head(1).with_columns(topic=pl.lit("again"))])):  # + a duplicate
        expected = scores.join(cat, on="item_id", how="inner", maintain_order="left")
        assert bs._with_item_columns(scores, cat).equals(expected)
    known = scores.filter(pl.col("item_id").is_in(["i1", "i2"]))
    assert bs._with_item_columns(known, catalog).equals(known.join(catalog, on="item_id", maintain_order="left"))


def test_sets_are_independent_of_chunking_and_of_row_order(world):
    scores, items, config = world["scores"], world["ds"].items, world["config"]
    ctx = bs.rule_context(world["ds"].users, world["inter"], world["searches"], NOW.date(), world["cutoff"])
    sets, counts = world["sets"], world["counts"]
    key = ["set_name", "user_id", "rank"]
    chunked, chunked_counts = bs.build_sets(scores, items, ctx, config, chunk_users=37)  # contiguous users: slices
    assert chunked.sort(key).equals(sets.sort(key)) and chunked_counts.equals(counts)
    mixed = scores.sample(fraction=1.0, shuffle=True, seed=1)  # users not contiguous: the semi-join path
    again, again_counts = bs.build_sets(mixed, items, ctx, config, chunk_users=37)
    assert again.sort(key).equals(sets.sort(key)) and again_counts.equals(counts)
    shard = world["shards"]["shard-02"]  # one shard, users ascending: the same rows in the same order
    assert bs.build_sets(shard, items, ctx, config, chunk_users=37)[0].equals(
        bs.build_sets(shard, items, ctx, config)[0]
    )


def test_json_lines_export_is_one_row_per_user_per_set_in_the_batch_format(world, tmp_path: Path):
    sets = world["sets"].filter(pl.col("user_id").is_in(world["shards"]["shard-01"]["user_id"].unique().implode()))
    written = bs.export_sets(sets, tmp_path, "shard-01")
    assert set(written) == set(sets["set_name"].unique())
    for name, info in written.items():
        path = Path(info["path"])
        assert path == tmp_path / name / "shard-01.jsonl"
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        expected = sets.filter(pl.col("set_name") == name)
        assert len(lines) == info["users"] == expected["user_id"].n_unique()
        assert len({row["userId"] for row in lines}) == len(lines)
        first = lines[0]
        assert list(first) == ["userId", "itemList", "modelVersion"] and first["modelVersion"] == "7"
        assert all(set(entry) == {"itemId", "score"} for entry in first["itemList"])
        want = expected.filter(pl.col("user_id") == first["userId"]).sort("rank")
        assert [e["itemId"] for e in first["itemList"]] == want["item_id"].to_list()
        assert [e["score"] for e in first["itemList"]] == pytest.approx(want["score"].to_list())
    assert not list(tmp_path.rglob("*.tmp"))


def _sql_blocks(markdown: str) -> list[str]:
    return re.findall(r"```sql\n(.*?)```", markdown, flags=re.S)


def test_every_query_in_the_readme_and_analyst_guide_runs_against_a_catalog(world, tmp_path: Path):
    import duckdb

    ds, inter = world["ds"], world["inter"]
    lake = tmp_path / "lake"
    lake.mkdir()
    exp = world["config"].experiments[0]
    start, end = ex.experiment_window(exp, inter["event_time"].max())
    exposures = ex.log_exposures(ds.events, exp, start, end)
    recs = world["scores"].filter(pl.col("rank") <= 10).select("user_id", "rank", "item_id", "score")
    recs = recs.with_columns(model_version=pl.lit("7"), generated_at=pl.lit(NOW))
    tables = {
        "items": ds.items,
        "users": ds.users,
        "interactions": inter,
        "recommendations": recs,
        "experiment_exposures": exposures,
        "experiment_analysis": ex.analyze(ex.user_outcomes(exposures, inter, end), exp.control),
    }
    for name, frame in tables.items():
        frame.write_parquet(lake / f"{name}.parquet")
    # what the API served these users: their arm's list, as the served log holds it (one file per hour)
    served = exposures.join(recs.group_by("user_id").agg(item_ids=pl.col("item_id")), on="user_id").select(
        served_at=pl.col("exposed_at"),
        request_id=pl.col("user_id") + "-r1",
        surface=pl.col("surface"),
        user_id="user_id",
        experiment="experiment",
        arm="arm",
        source=pl.lit("personalized"),
        model_version=pl.lit("7"),
        slot=pl.lit("blue"),
        item_ids="item_ids",
    )
    served = schemas.conform(served, schemas.SERVED_LOG_SCHEMA)
    # what two refresh runs wrote (a file per run) and the session windows they read
    from recsys_platform.realtime.sessions import session_features

    refreshed = schemas.conform(
        recs.head(40).with_columns(
            slot=pl.lit("blue"), partition_key=pl.lit("2026-10-01-12:00"), run=pl.int_range(pl.len()) % 2
        ),
        {**schemas.REALTIME_RECOMMENDATION_SCHEMA, "run": pl.Int64()},
    )
    sessions = session_features(ds.events.tail(5000), ds.users, ds.items, 10).with_columns(
        hour=pl.col("window_end").dt.hour()
    )
    snapshot = pl.DataFrame(
        {"slot": ["blue", "green"], "active": [True, False], "model_version": ["7", None], "state": ["ready", "empty"]}
    ).with_columns(rows=pl.lit(10, dtype=pl.Int64), recorded_at=pl.lit(NOW))
    snapshot.write_parquet(lake / "feature_store_snapshot.parquet")
    for name, frame in (
        ("batch_scores", world["scores"]),
        ("recommendation_sets", world["sets"]),
        ("served_log", served),
        ("realtime_recommendations", refreshed),
        ("session_features", sessions),
    ):
        (lake / name).mkdir()
        key_col = {
            "batch_scores": "shard",
            "recommendation_sets": "set_name",
            "served_log": "arm",
            "realtime_recommendations": "run",
            "session_features": "hour",
        }[name]
        for k, part in enumerate(frame.partition_by(key_col)):
            part.write_parquet(lake / name / f"part-{k}.parquet")
    catalog = tmp_path / "catalog.duckdb"
    partitioned = ["batch_scores", "recommendation_sets", "served_log", "realtime_recommendations", "session_features"]
    views = build_catalog(catalog, str(lake), [*tables, *partitioned, "feature_store_snapshot"])
    assert len(views) == 12
    blocks = [b for doc in ("README.md", "docs/analyst.md") for b in _sql_blocks((PROJECT_ROOT / doc).read_text())]
    assert len(blocks) >= 8
    con = duckdb.connect(str(catalog), read_only=True)
    try:
        results = [con.execute(sql).fetchall() for sql in blocks]
    finally:
        con.close()
    kids_audit = next(r for sql, r in zip(blocks, results, strict=True) if "kids_items_to_adults" in sql)
    assert kids_audit == []
    assert all(rows for sql, rows in zip(blocks, results, strict=True) if "kids_items_to_adults" not in sql)
    experiment = next(r for sql, r in zip(blocks, results, strict=True) if "FROM experiment_analysis" in sql)
    assert {row[2] for row in experiment} == {"control", "popularity", "model"}


# --- the lists: exclusions, depth, the filled tail, determinism ---------------------------------


def test_batch_lists_exclude_recent_completions_unreleased_and_kids_items_for_adults(world):
    out, cutoff, params = world["scores"], world["cutoff"], world["rec"].params
    assert not params.exclude_seen  # this world replays its favourites: played items stay recommendable...
    done = world["inter"].filter((pl.col("event_type") == "content_complete") & (pl.col("event_time") < cutoff))
    recent = done.filter(pl.col("event_time") >= cutoff - timedelta(days=params.recent_completion_days))
    assert recent.height > 0
    assert out.join(recent, on=["user_id", "item_id"], how="semi").height == 0  # ...except recent completions
    older = done.join(recent, on=["user_id", "item_id"], how="anti")
    assert out.join(older, on=["user_id", "item_id"], how="semi").height > 0  # replays of older ones come back
    items, users = world["ds"].items, world["ds"].users
    joined = out.join(items.select("item_id", "release_date", "is_kids"), on="item_id").join(
        users.select("user_id", "household_type"), on="user_id"
    )
    assert joined.height == out.height
    assert (joined["release_date"] <= cutoff.date()).all()
    assert joined.filter(pl.col("is_kids") & (pl.col("household_type") != "family_with_kids")).height == 0
    assert joined.filter(pl.col("is_kids") & (pl.col("household_type") == "family_with_kids")).height > 0
    assert out.select(pl.struct("user_id", "item_id").is_unique().all()).item()
    # as deep as the catalogue allows: every user gets items_per_user unless fewer items are left
    per_user = out.group_by("user_id").len()
    assert per_user["len"].min() == BATCH.items_per_user  # 600-user world: ~700 items, few masked per user


def test_a_list_as_deep_as_the_catalogue_holds_every_recommendable_item_and_nothing_else(world):
    """With `items_per_user` above the catalogue, a list is exactly the items the rules allow: the exclusions
    remove precisely the recent completions, the unreleased items and (for adults) the kids items."""
    key, cutoff = "shard-02", world["cutoff"]
    items, users, inter = world["ds"].items, world["ds"].users, world["inter"]
    deep = replace(BATCH, items_per_user=items.height + 10)
    out = bs.score_shard(world["served"], "7", inter, users, world["eligible"], key, deep, cutoff, NOW)
    shard_users = world["shards"][key]["user_id"].unique()
    assert set(out["user_id"].unique()) == set(shard_users)
    days = world["rec"].params.recent_completion_days
    recent = inter.filter(
        (pl.col("event_type") == "content_complete")
        & (pl.col("event_time") >= cutoff - timedelta(days=days))
        & (pl.col("event_time") < cutoff)
    ).select("user_id", "item_id")
    adults = users.filter(pl.col("household_type") != "family_with_kids").select("user_id")
    expected = (
        pl.DataFrame({"user_id": shard_users})
        .join(items.filter(pl.col("release_date") <= cutoff.date()).select("item_id", "is_kids"), how="cross")
        .join(recent, on=["user_id", "item_id"], how="anti")
    )
    expected = expected.filter(~(pl.col("is_kids") & pl.col("user_id").is_in(adults["user_id"].implode())))
    key_cols = ["user_id", "item_id"]
    assert out.select(key_cols).sort(key_cols).equals(expected.select(key_cols).sort(key_cols))
    assert out.join(world["unreleased"], on="item_id", how="semi").height == 0 < world["unreleased"].height


def test_the_deep_lists_tail_comes_after_every_ranked_candidate(world):
    """`fill=True`: the ranker orders the candidates; the other allowed items follow, ordered by the
    recency-weighted EASE score, then popularity, every one scored below the user's last candidate."""
    rec = world["rec"]
    users = world["eligible"].head(30)
    out = rec.recommend(users, rec.vocab.n_items, fill=True)
    rows = rec.vocab.user_rows(users)
    profiles, block = rec.block(rows)
    model = np.asarray(rec.scorer.predict(block.features), np.float64)
    allowed = allowed_items(profiles, rec.catalogue, rec.params.exclude_seen, rec._recently_completed(profiles))
    ease = rec.sources["ease_recent"].score(profiles)
    pop = rec.sources["pop"].score(profiles)
    ids = rec.vocab.item_ids
    tails = 0
    for r, user in enumerate(users):
        mine = out.filter(pl.col("user_id") == user).sort("rank")
        assert mine["rank"].to_list() == list(range(1, mine.height + 1))
        score = mine["score"].to_numpy()
        cand, cand_score = block.items[block.rows == r], model[block.rows == r]
        head = cand[np.lexsort((cand, -cand_score))]  # by the model's score, ties by item
        assert mine["item_id"].head(len(head)).to_list() == ids.gather(head).to_list()
        assert score[: len(head)] == pytest.approx(np.sort(cand_score)[::-1])
        others = np.flatnonzero(allowed[r] & ~np.isin(np.arange(len(ids)), cand))
        tail = others[np.lexsort((others, -pop[r, others], -ease[r, others]))]
        assert mine["item_id"].slice(len(head)).to_list() == ids.gather(tail).to_list()
        assert mine.height == len(head) + len(tail)
        assert (np.diff(score[len(head) - 1 :]) < 0).all()  # strictly below the last candidate, in order
        tails += len(tail) > 0
    assert tails == len(users)
    # at the batch depth (60) the candidates (over 100 per user here) fill the lists: the head of these
    batch = world["scores"].filter(pl.col("user_id").is_in(users.implode())).select("user_id", "rank", "item_id")
    deep = out.filter(pl.col("rank") <= BATCH.items_per_user).select("user_id", "rank", "item_id")
    assert batch.sort("user_id", "rank").equals(deep.sort("user_id", "rank"))


def test_lists_are_deterministic_and_independent_of_chunk_users_and_row_order(world):
    key, served, cutoff = "shard-01", world["served"], world["cutoff"]
    users, inter, eligible = world["ds"].users, world["inter"], world["eligible"]
    a = world["shards"][key]
    b = bs.score_shard(served, "7", inter, users, eligible.reverse(), key, replace(BATCH, chunk_users=7), cutoff, NOW)
    assert a.height > 0 and a.equals(b)
    shuffled = inter.sample(fraction=1.0, shuffle=True, seed=2)  # not sorted by user: the semi-join path
    c = bs.score_shard(served, "7", shuffled, users, eligible, key, replace(BATCH, chunk_users=1000), cutoff, NOW)
    assert a.equals(c)
