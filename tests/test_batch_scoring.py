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

from recsys_platform import batch_scoring as bs
from recsys_platform import experiments as ex
from recsys_platform.catalog import build_catalog
from recsys_platform.config import PROJECT_ROOT, PipelineParams, Settings
from recsys_platform.experiment_sim import simulate_arms
from recsys_platform.features import build_interactions
from recsys_platform.first_stage import exact_top_k, rerank_head
from recsys_platform.generator import GeneratorConfig, generate
from recsys_platform.ranking import (
    FEATURE_COLUMNS,
    PointInTime,
    TemporalSplit,
    _matrix,
    top_n,
    train_ranker,
    training_frame,
)
from recsys_platform.set_config import BatchConfig, Eligibility, load_sets_config

END = datetime(2026, 10, 1, 12, tzinfo=UTC)
NOW = datetime(2026, 10, 1, 13, tzinfo=UTC)
BATCH = BatchConfig(shards=4, items_per_user=60, rerank_depth=20, candidates_per_source=30, chunk_users=150)


@pytest.fixture(scope="module")
def world() -> dict:
    """A small synthetic world with the experiment simulated, a trained ranker and every shard scored."""
    config = load_sets_config(Settings.from_env().recommendation_sets_path)
    config = replace(config, batch=BATCH)
    ds = simulate_arms(generate(GeneratorConfig(n_users=600, days=21, seed=3, end=END)), config.experiments[0], seed=3)
    inter = build_interactions(ds.events, ds.items)
    params = PipelineParams(ranker_rounds=25)
    split = TemporalSplit.from_interactions(inter, params.label_days)
    model = train_ranker(training_frame(inter, ds.items, ds.users, split.eval_cutoff, split.end, params), params)
    cutoff = split.end
    eligible = bs.eligible_users(ds.users, inter, cutoff, config.eligibility)
    g = bs.build_global_inputs(inter, ds.items, ds.users, cutoff)
    shards = {k: bs.score_shard(model, "7", g, eligible, k, BATCH, params, NOW) for k in bs.shard_keys(BATCH.shards)}
    scores = pl.concat(shards.values())
    searches = bs.last_search_queries(ds.events, before=cutoff)
    ctx = bs.rule_context(ds.users, inter, searches, NOW.date(), cutoff)
    sets, counts = bs.build_sets(scores, ds.items, ctx, config)
    return dict(
        ds=ds, inter=inter, model=model, params=params, g=g, config=config, cutoff=cutoff, eligible=eligible,
        shards=shards, scores=scores, sets=sets, counts=counts, searches=searches,
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


def test_shards_score_each_eligible_user_once_with_the_shared_features(world):
    scores, eligible = world["scores"], world["eligible"]
    per_shard_users = [s["user_id"].unique() for s in world["shards"].values()]
    assert sum(u.len() for u in per_shard_users) == scores["user_id"].n_unique()
    assert set(scores["user_id"].unique()) <= set(eligible)
    assert scores["user_id"].n_unique() >= 0.95 * eligible.len()
    per_user = scores.group_by("user_id").agg(n=pl.len(), ranks=pl.col("rank").sort())
    assert per_user["n"].max() == BATCH.items_per_user
    assert all(r.to_list() == list(range(1, len(r) + 1)) for r in per_user["ranks"])
    assert scores.columns == list(bs.BATCH_SCORE_SCHEMA)
    # parity: the shard-restricted PointInTime scores exactly like PointInTime.build for these users
    users = per_shard_users[0].sort().head(40)
    pit = PointInTime.build(world["inter"], world["ds"].items, world["ds"].users, world["cutoff"], world["params"])
    full = top_n(bs.score_frame(world["model"], pit.ranker_frame(users, BATCH.candidates_per_source)), 60)
    mine = bs.score_users(world["model"], bs.point_in_time_for(world["g"], users, world["params"]), users, BATCH)
    assert (
        mine.sort("user_id", "rank")
        .select("user_id", "item_id")
        .equals(full.sort("user_id", "rank").select("user_id", "item_id"))
    )


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
    recs = top_n(world["scores"], 10).with_columns(model_version=pl.lit("7"), generated_at=pl.lit(NOW))
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
    for name, frame in (("batch_scores", world["scores"]), ("recommendation_sets", world["sets"])):
        (lake / name).mkdir()
        key_col = "shard" if name == "batch_scores" else "set_name"
        for k, part in enumerate(frame.partition_by(key_col)):
            part.write_parquet(lake / name / f"part-{k}.parquet")
    catalog = tmp_path / "catalog.duckdb"
    views = build_catalog(catalog, str(lake), [*tables, "batch_scores", "recommendation_sets"])
    assert len(views) == 8
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


# --- two-stage scorer ------------------------------------------------------------------


def _first_stage_lists(scorer: bs.BatchScorer, rows: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    known, ease = scorer.first.ease_scores(rows)
    return exact_top_k(scorer.first.scores(rows, known, ease), depth)


def test_exact_top_k_breaks_every_tie_by_column_like_a_full_sort():
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 6, size=(300, 80)).astype(np.float64)
    scores[rng.random(scores.shape) < 0.2] = -np.inf
    idx, vals = exact_top_k(scores, 25)
    full = np.lexsort((np.broadcast_to(np.arange(80), scores.shape), -scores), axis=1)[:, :25]
    assert np.array_equal(idx, full)
    assert np.array_equal(vals, np.take_along_axis(scores, full, axis=1))


def test_pair_features_equal_the_ranker_frame_for_every_candidate(world):
    """Train/serve parity: the vectorized features of a pair are the ones `PointInTime.ranker_frame` joins."""
    g, params = world["g"], world["params"]
    scorer = g.scorer(BATCH, params)
    users = world["scores"]["user_id"].unique().sort().head(60)
    frame = bs.point_in_time_for(g, users, params).ranker_frame(users, BATCH.candidates_per_source)
    rows_of_pair = scorer.catalog.user_index(frame["user_id"])
    rows = np.unique(rows_of_pair)
    known, ease = scorer.first.ease_scores(rows)
    src = scorer.pairs.chunk_sources(scorer.first, rows, known, ease)
    pairs = np.searchsorted(rows, rows_of_pair), scorer.catalog.item_index(frame["item_id"])
    mine = scorer.pairs.matrix(src, rows, *pairs)
    ref = _matrix(frame)
    assert mine.shape == ref.shape and frame.height > 60 * 50
    same = (mine == ref) | (np.isnan(mine) & np.isnan(ref))
    assert [c for k, c in enumerate(FEATURE_COLUMNS) if not same[:, k].all()] == []


def test_two_stage_lists_rerank_the_head_and_keep_the_tail_in_first_stage_order(world):
    g, params, model = world["g"], world["params"], world["model"]
    scorer = g.scorer(BATCH, params)
    users = world["eligible"].head(80)
    out = scorer.score(model, users, BATCH)
    rows = np.unique(scorer.catalog.user_index(users))
    idx, first = _first_stage_lists(scorer, rows, BATCH.items_per_user)
    known, ease = scorer.first.ease_scores(rows)
    src = scorer.pairs.chunk_sources(scorer.first, rows, known, ease)
    depth = BATCH.rerank_depth
    assert 0 < depth < BATCH.items_per_user
    for r, row in enumerate(rows[:25]):
        mine = out.filter(pl.col("user_id") == scorer.catalog.user_ids[int(row)]).sort("rank")
        items = scorer.catalog.item_index(mine["item_id"])
        assert mine["rank"].to_list() == list(range(1, mine.height + 1))
        assert len(set(items)) == len(items) == np.isfinite(first[r]).sum()
        # head: the first-stage top `depth`, ordered by the ranker's score on the ranker's features
        head = items[:depth]
        assert set(head) == set(idx[r, :depth])
        model_score = model.booster_.predict(scorer.pairs.matrix(src, rows, np.full(depth, r), head))
        assert np.allclose(mine["score"].to_numpy()[:depth], model_score)
        assert all(model_score[:-1] >= model_score[1:])
        # tail: first-stage order, below every head score
        assert np.array_equal(items[depth:], idx[r, depth : len(items)])
        assert (np.diff(mine["score"].to_numpy()) <= 0).all()


def test_first_stage_excludes_recent_completions_unreleased_and_kids_items_for_adults(world):
    g, params, model = world["g"], world["params"], world["model"]
    scorer = g.scorer(BATCH, params)
    out = scorer.score(model, world["eligible"], BATCH)
    cutoff = world["cutoff"]
    recent = world["inter"].filter(
        (pl.col("event_type") == "content_complete")
        & (pl.col("event_time") >= cutoff - timedelta(days=BATCH.exclude_completed_days))
        & (pl.col("event_time") < cutoff)
    )
    assert recent.height > 0
    assert out.join(recent, on=["user_id", "item_id"], how="semi").height == 0
    items, users = world["ds"].items, world["ds"].users
    joined = out.join(items.select("item_id", "release_date", "is_kids"), on="item_id").join(
        users.select("user_id", "household_type"), on="user_id"
    )
    assert (joined["release_date"] <= cutoff.date()).all()
    assert joined.filter(pl.col("is_kids") & (pl.col("household_type") != "family_with_kids")).height == 0
    assert out.select(pl.struct("user_id", "item_id").is_unique().all()).item()
    # as deep as the catalogue allows: every user gets items_per_user unless fewer items are left
    per_user = out.group_by("user_id").len()
    assert per_user["len"].min() == BATCH.items_per_user  # 600-user world: ~700 items, few masked per user


def test_two_stage_scores_are_deterministic_and_independent_of_chunking(world):
    g, params, model = world["g"], world["params"], world["model"]
    users = world["eligible"].head(120)
    a = g.scorer(BATCH, params).score(model, users, BATCH)
    b = g.scorer(BATCH, params).score(model, users.reverse(), replace(BATCH, chunk_users=7))
    assert a.equals(b)
    no_model = g.scorer(BATCH, params).score(None, users, BATCH)
    assert no_model.select("user_id", "item_id").head(10).height == 10
    assert a.join(no_model, on=["user_id", "item_id"], how="inner").height == a.height  # same items, re-ordered


def test_rerank_head_orders_the_head_by_model_and_keeps_the_tail():
    idx = np.array([[5, 3, 9, 1, 7], [2, 4, 6, 0, 0]])
    first = np.array([[0.9, 0.8, 0.7, 0.6, 0.5], [0.9, 0.8, 0.1, -np.inf, -np.inf]])
    model = np.array([[1.0, 3.0, 2.0], [0.5, 0.5, 0.7]])
    rows, items, rank, score = rerank_head(idx, first, model, 3)
    assert rows.tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    assert items.tolist() == [3, 9, 5, 1, 7, 6, 2, 4]  # ties on the model score by item index
    assert rank.tolist() == [1, 2, 3, 4, 5, 1, 2, 3]
    assert score[:5].tolist() == pytest.approx([3.0, 2.0, 1.0, 1.0 - 1e-6, 0.9 - 1e-6])


def test_first_stage_adds_the_users_own_replays_to_ease_and_popularity(world):
    scorer = world["g"].scorer(BATCH, world["params"])
    first = scorer.first
    assert first.replay_weight == BATCH.replay_weight > 0
    rows = np.unique(scorer.catalog.user_index(world["eligible"].head(50)))
    known, ease = first.ease_scores(rows)
    with_replays = first.scores(rows, known, ease)
    saved, first.replay_weight = first.replay_weight, 0.0
    try:
        without = first.scores(rows, known, ease)
    finally:
        first.replay_weight = saved
    own = first.replay[rows].toarray()
    finite = np.isfinite(without)
    assert np.array_equal(finite, np.isfinite(with_replays))
    assert np.allclose(with_replays[finite], without[finite] + saved * own[finite], atol=1e-6)
    assert (own.max(axis=1) == 1.0).sum() > 40  # scaled to each user's favourite
