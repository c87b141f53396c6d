"""Bring your own data: CSV/Parquet with a column mapping and the MovieLens readers land native files
that the same assets and checks ingest; the `recsys import` command drives it."""

from datetime import UTC, datetime

import dagster as dg
import polars as pl
import pytest
from typer.testing import CliRunner

from assets.checks import (
    interactions_expectations,
    item_features_expectations,
    raw_events_expectations,
    raw_events_reconciliation,
    user_features_expectations,
)
from assets.features import interactions, item_features, user_features
from assets.ingestion import items, raw_events, users
from recsys_platform import schemas
from recsys_platform.ingest.importer import (
    ColumnMapping,
    DatasetImportError,
    WeightThresholds,
    import_files,
    import_movielens,
    parse_pairs,
    to_events,
)
from recsys_platform.ingest.ingestion import ingest_files
from recsys_platform.ingest.landing import ITEMS_PREFIX, USERS_PREFIX, LocalLandingZone
from resources import LakeIOManager, LandingZoneResource

NOW = datetime(2026, 3, 2, 14, 20, tzinfo=UTC)
PARTITION = "2026-03-02-14:00"

RATINGS = pl.DataFrame(
    {
        "userId": [1, 1, 2, 2, 3, 3],
        "movieId": [10, 20, 10, 30, 20, 30],
        "rating": [5.0, 3.0, 1.0, 4.5, 3.5, 2.0],
        "timestamp": [1_600_000_000, 1_600_000_100, 1_600_000_200, 1_600_000_300, 1_600_000_400, 1_600_000_500],
    }
)


def _ingest(zone: LocalLandingZone, known: set[str]):
    return ingest_files(zone, zone.partition_files(PARTITION), PARTITION, NOW, known)


def _read(zone: LocalLandingZone, prefix: str) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(zone.root / f.key) for f in zone.list_files(prefix)])


def test_ratings_become_native_events_with_implied_starts():
    events = to_events(RATINGS, ColumnMapping(user_id="userId", item_id="movieId", weight="rating"), "ml")
    kinds = events.group_by("event_type").len().sort("event_type").rows()
    # 5, 4.5 -> completion; 3, 3.5 -> start; 1, 2 -> bounce; completions and bounces imply a start
    assert kinds == [("content_complete", 2), ("content_exit", 2), ("content_start", 6)]
    bounce = events.filter(pl.col("event_type") == "content_exit")
    assert bounce["seconds_listened"].to_list() == [0.0, 0.0]
    assert events["event_id"].is_unique().all()
    assert (
        events.filter(pl.col("event_type") == "content_complete")["event_id"][0]
        == "ml:1:10:1600000000000000:content_complete:0"
    )
    assert events["event_time"].min() == datetime(2020, 9, 13, 12, 26, 40, tzinfo=UTC)
    assert events.columns == list(schemas.RAW_EVENT_SCHEMA)
    strict = to_events(
        RATINGS, ColumnMapping("userId", "movieId", weight="rating"), "ml", thresholds=WeightThresholds(5, 5)
    )
    assert strict.filter(pl.col("event_type") == "content_complete").height == 1


def test_csv_with_mapping_lands_native_files_that_ingest_cleanly(tmp_path):
    clicks = pl.DataFrame(
        {
            "uid": ["a", "a", "b", "b"],
            "sku": ["x", "y", "x", "z"],
            "ts": ["2026-03-01T10:00:00Z", "2026-03-01T10:05:00Z", "2026-03-01 11:00:00", "2026-03-02T09:00:00+01:00"],
            "what": ["view", "finish", "view", "hover"],
            "session": ["s1", "s1", "s2", "s3"],
        }
    )
    clicks.write_csv(tmp_path / "clicks.csv")
    pl.DataFrame(
        {"sku": ["x", "y", "z"], "name": ["X", "Y", "Z"], "kind": ["music", "sleep_story", "podcast"]}
    ).write_parquet(tmp_path / "catalog.parquet")
    zone = LocalLandingZone(tmp_path / "landing")
    mapping = ColumnMapping(
        user_id="uid",
        item_id="sku",
        timestamp="ts",
        event_type="what",
        event_columns={"session_id": "session"},
        item_columns={"title": "name", "content_type": "kind"},
    )
    result = import_files(
        zone,
        tmp_path / "clicks.csv",
        mapping,
        items=tmp_path / "catalog.parquet",
        event_types={"view": "content_start", "finish": "content_complete"},
        arrival=NOW,
    )
    assert (result.events, result.items, result.users, result.partition_key) == (4, 3, 2, PARTITION)
    assert result.derived_users and not result.derived_items
    assert result.warnings == ["1 content_type values are not in " + str(schemas.CONTENT_TYPES) + ": set to null"]
    catalog = _read(zone, ITEMS_PREFIX).sort("item_id")
    assert catalog.select("item_id", "title", "content_type").rows() == [
        ("x", "X", "music"),
        ("y", "Y", "sleep_story"),
        ("z", "Z", None),
    ]
    assert catalog["release_date"].null_count() == 0  # defaults to the first interaction, so items are candidates
    profiles = _read(zone, USERS_PREFIX).sort("user_id")
    assert profiles.select("user_id", "signup_date").rows() == [
        ("a", datetime(2026, 3, 1).date()),
        ("b", datetime(2026, 3, 1).date()),
    ]

    ingested = _ingest(zone, set(catalog["item_id"]))
    assert ingested.events.height == 3 and ingested.events["session_id"].to_list() == ["s1", "s1", "s2"]
    # an event type without a mapping is not guessed: ingestion quarantines it with its reason
    assert ingested.quarantined.select("reason", "detail").rows() == [("unknown_event_type", "hover")]


def test_reimport_lands_the_same_event_ids(tmp_path):
    RATINGS.write_parquet(tmp_path / "r.parquet")
    zone = LocalLandingZone(tmp_path / "landing")
    mapping = ColumnMapping("userId", "movieId", weight="rating")
    for _ in range(2):
        import_files(zone, tmp_path / "r.parquet", mapping, arrival=NOW)
    result = _ingest(zone, {"10", "20", "30"})
    assert result.stats["valid"] == 10 and result.stats["duplicates"] == 10 and result.stats["quarantined"] == 0


def test_grouplens_formats(tmp_path):
    udata = tmp_path / "ml-tiny" / "u.data"
    udata.parent.mkdir()
    udata.write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS.rows()))
    RATINGS.write_csv(tmp_path / "ratings.csv")
    for path, name in ((udata, "ml-tiny"), (tmp_path / "ratings.csv", tmp_path.name)):
        zone = LocalLandingZone(tmp_path / f"landing-{path.name}")
        result = import_movielens(zone, path, arrival=NOW)
        assert (result.events, result.items, result.users, result.dataset) == (10, 3, 3, name)
        assert _ingest(zone, {"10", "20", "30"}).stats["valid"] == 10


def test_timestamps_before_the_app_launch_need_a_decision(tmp_path):
    zone = LocalLandingZone(tmp_path / "landing")
    RATINGS.with_columns(pl.col("timestamp") - 800_000_000).write_csv(tmp_path / "old.csv")  # 1995
    with pytest.raises(DatasetImportError, match="RECSYS_APP_LAUNCH"):
        import_files(zone, tmp_path / "old.csv", ColumnMapping("userId", "movieId", weight="rating"), arrival=NOW)
    assert zone.list_files("") == []  # nothing landed
    result = import_files(
        zone, tmp_path / "old.csv", ColumnMapping("userId", "movieId", weight="rating"), arrival=NOW, rebase_time=True
    )
    ingested = _ingest(zone, {"10", "20", "30"})
    assert ingested.stats["valid"] == 10
    assert ingested.events["event_time"].max() == datetime(2026, 3, 2, 14, 19, tzinfo=UTC)
    gaps = ingested.events.sort("event_time")["event_time"].diff().drop_nulls().dt.total_seconds().unique().sort()
    assert gaps.to_list() == [0, 100]  # the timeline keeps its gaps
    assert result.time_shift is not None


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        (ColumnMapping("user", "movieId", weight="rating"), "no column user"),
        (ColumnMapping("userId", "movieId", weight="rating", item_columns={"genre": "x"}), "unknown platform columns"),
        (ColumnMapping("userId", "movieId", weight="rating", event_columns={"item_id": "movieId"}), "event metadata"),
    ],
)
def test_bad_mappings_are_clear_errors(tmp_path, mapping, message):
    RATINGS.write_parquet(tmp_path / "r.parquet")
    RATINGS.select(pl.col("movieId").unique(), x=pl.lit("a")).write_parquet(tmp_path / "i.parquet")
    with pytest.raises(DatasetImportError, match=message):
        import_files(LocalLandingZone(tmp_path / "z"), tmp_path / "r.parquet", mapping, items=tmp_path / "i.parquet")
    with pytest.raises(DatasetImportError, match="name=value"):
        parse_pairs(["title"])


@pytest.mark.slow
def test_movielens_flows_through_the_same_assets_and_checks(tmp_path, ml100k_dir):
    zone = LocalLandingZone(tmp_path / "landing")
    result = import_movielens(zone, ml100k_dir, arrival=NOW, rebase_time=True)
    assert (result.items, result.users) == (1682, 943)
    # ratings 4-5 (55,375) are completions and 1-2 (17,480) bounces, each with its start; 3s (27,145) are starts
    assert result.events == 100_000 + 55_375 + 17_480
    resources = {
        "landing": LandingZoneResource(url=str(tmp_path / "landing")),
        "io_manager": LakeIOManager(base_url=str(tmp_path / "lake")),
    }
    assert dg.materialize([items, users], resources=resources).success
    every = [items, users, raw_events, interactions, user_features, item_features]
    checks = [raw_events_expectations, raw_events_reconciliation, interactions_expectations]
    checks += [user_features_expectations, item_features_expectations]
    ingest = dg.materialize([*every, *checks], selection=["raw_events", "quarantined_events"], partition_key=PARTITION,
                            resources=resources)  # fmt: skip
    assert ingest.success
    meta = ingest.asset_materializations_for_node("raw_events")[0].metadata
    assert (meta["rows_in"].value, meta["valid"].value, meta["quarantined"].value) == (result.events, result.events, 0)
    features = dg.materialize([*every, *checks], selection=["interactions", "user_features", "item_features"],
                              resources=resources)  # fmt: skip
    assert features.success
    evaluations = {
        e.check_name: e for e in [*ingest.get_asset_check_evaluations(), *features.get_asset_check_evaluations()]
    }
    assert set(evaluations) == {c.check_key.name for c in checks}
    assert all(e.passed for e in evaluations.values()), {k: e.description for k, e in evaluations.items()}
    item_table = features.output_for_node("item_features")
    assert item_table.filter(pl.col("item_id") == "50")["title"].to_list() == ["Star Wars"]
    assert item_table.filter(pl.col("item_id") == "50")["topic"].to_list() == ["Action"]


def test_import_command(tmp_path, monkeypatch):
    from recsys_platform.cli import app

    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    RATINGS.write_csv(tmp_path / "r.csv")
    args = ["import", "--interactions", str(tmp_path / "r.csv"), "--user-col", "userId", "--item-col", "movieId"]
    out = CliRunner().invoke(app, [*args, "--weight-col", "rating", "--format", "jsonl"])
    assert out.exit_code == 0, out.output
    assert "10 events, 3 items, 3 users" in out.output
    landed = LocalLandingZone(tmp_path / "home" / "landing").list_files("events/")
    assert len(landed) == 1 and landed[0].key.endswith(".jsonl")
    bad = CliRunner().invoke(app, ["import", "--interactions", str(tmp_path / "r.csv")])
    assert bad.exit_code == 1 and "no column user_id" in bad.output
