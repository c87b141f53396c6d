"""Batch scoring by user shard, recommendation sets on real scores, the JSON-lines export, the analyst guide."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from recsys_platform import batch_scoring as bs
from recsys_platform import experiments as ex
from recsys_platform.catalog import build_catalog
from recsys_platform.config import PROJECT_ROOT, PipelineParams, Settings
from recsys_platform.experiment_sim import simulate_arms
from recsys_platform.features import build_interactions
from recsys_platform.generator import GeneratorConfig, generate
from recsys_platform.ranking import PointInTime, TemporalSplit, top_n, train_ranker, training_frame
from recsys_platform.set_config import BatchConfig, Eligibility, load_sets_config

END = datetime(2026, 10, 1, 12, tzinfo=UTC)
NOW = datetime(2026, 10, 1, 13, tzinfo=UTC)
BATCH = BatchConfig(shards=4, items_per_user=60, candidates_per_source=30, chunk_users=150)


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


def test_every_query_in_the_analyst_guide_runs_against_a_catalog(world, tmp_path: Path):
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
    blocks = _sql_blocks((PROJECT_ROOT / "docs" / "analyst.md").read_text())
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
