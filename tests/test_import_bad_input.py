"""Importing historical and messy data: the earliest event time an import recorded in the landing zone is
honoured by later, separate ingestions (local and S3) while the app's own old events stay quarantined; every
interaction row is kept, merged (an exact duplicate) or refused with a reason, counted and stored durably."""

import io
import json
from datetime import UTC, datetime

import dagster as dg
import polars as pl
import pytest
from dagster_aws.s3 import S3Resource
from typer.testing import CliRunner

from assets.ingestion import items, raw_events
from recsys_platform import schemas
from recsys_platform.ingest.import_rows import REFUSAL_REASONS
from recsys_platform.ingest.importer import (
    ColumnMapping,
    DatasetImportError,
    import_files,
    import_frames,
    import_movielens,
)
from recsys_platform.ingest.ingestion import imported_event_floors, ingest_files, read_table_updates
from recsys_platform.ingest.landing import (
    IMPORTS_PREFIX,
    ITEMS_PREFIX,
    LocalLandingZone,
    event_file_key,
    new_batch_id,
    read_import_manifests,
)
from resources import LakeIOManager, LandingZoneResource

NOW = datetime(2026, 3, 2, 14, 20, tzinfo=UTC)
PARTITION = "2026-03-02-14:00"
T = 1_600_000_000  # 2020-09-13 12:26:40 UTC
OLD = 820_454_400  # 1996-01-01 00:00:00 UTC
MAPPING = ColumnMapping("u", "i", "ts")


@pytest.fixture(autouse=True)
def _no_launch_override(monkeypatch):
    monkeypatch.delenv("RECSYS_APP_LAUNCH", raising=False)


def _zone_url(request: pytest.FixtureRequest, tmp_path, backend: str) -> LandingZoneResource:
    if backend == "local":
        return LandingZoneResource(url=str(tmp_path / "landing"))
    endpoint, bucket = request.getfixturevalue("s3_bucket")
    return LandingZoneResource(url=f"s3://{bucket}/landing", s3=S3Resource(endpoint_url=endpoint))


def _old_ratings() -> pl.DataFrame:
    """Ratings from 1996: 3 users, 3 items, ratings 5/3/1 (a completion, a start and a bounce)."""
    return pl.DataFrame(
        {"u": ["a", "a", "b", "c"], "i": ["x", "y", "x", "z"], "r": [5, 3, 1, 4], "ts": [OLD, OLD + 60, OLD + 120, OLD]}
    )


def _app_event(n: int, when: str) -> dict:
    return {"event_id": f"app{n}", "user_id": "a", "event_type": "content_start", "event_time": when, "item_id": "x"}


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_floor_recorded_by_the_import_is_honoured_by_a_separate_ingestion(request, tmp_path, backend):
    importing = _zone_url(request, tmp_path, backend).zone()
    _old_ratings().write_csv(tmp_path / "old.csv")
    mapping = ColumnMapping("u", "i", "ts", weight="r")
    result = import_files(importing, tmp_path / "old.csv", mapping, arrival=NOW, keep_history=True)
    assert result.earliest_event_time == datetime(1996, 1, 1, tzinfo=UTC)
    # the app's own events in the same hour: before the app launch (2019-01-01) they stay quarantined,
    # even when they are after the import's floor
    app_key = event_file_key(NOW, ".jsonl", new_batch_id(NOW))
    app_rows = [_app_event(1, "1996-06-01T00:00:00Z"), _app_event(2, "1990-01-01T00:00:00Z")]
    app_rows.append(_app_event(3, "2026-03-02T14:00:00Z"))
    importing.write_bytes(app_key, b"".join(json.dumps(r).encode() + b"\n" for r in app_rows))

    # a later process: a new zone object that knows nothing but the landing zone's URL
    zone = _zone_url(request, tmp_path, backend).zone()
    (manifest,) = read_import_manifests(zone)
    assert (manifest.status, manifest.earliest_event_time) == ("landed", "1996-01-01T00:00:00+00:00")
    assert manifest.rows == {"in": 4, "kept": 4, "merged": 0, "refused": 0}
    assert imported_event_floors(zone) == dict.fromkeys(manifest.event_files, datetime(1996, 1, 1, tzinfo=UTC))
    ingested = ingest_files(zone, zone.partition_files(PARTITION), PARTITION, NOW, {"x", "y", "z"})
    # 4 ratings: 5 and 4 -> completion + start, 3 -> start, 1 -> bounce + start = 7 events, all from 1996
    assert ingested.stats["valid"] == 7 + 1 and ingested.stats["duplicates"] == 0
    assert ingested.events.filter(pl.col("source_file") != app_key).height == result.events == 7
    assert ingested.quarantined.select("reason", "detail", "source_row").sort("source_row").rows() == [
        ("timestamp_before_app_launch", "event_time 1996-06-01 00:00:00.000000+00:00 before 2019-01-01", 1),
        ("timestamp_before_app_launch", "event_time 1990-01-01 00:00:00.000000+00:00 before 2019-01-01", 2),
    ]


def test_the_raw_events_asset_accepts_imported_history(tmp_path):
    zone = LocalLandingZone(tmp_path / "landing")
    import_frames(
        zone, _old_ratings(), ColumnMapping("u", "i", "ts", weight="r"), "old", arrival=NOW, keep_history=True
    )
    app_key = event_file_key(NOW, ".jsonl", new_batch_id(NOW))
    zone.write_bytes(app_key, json.dumps(_app_event(1, "2010-01-01T00:00:00Z")).encode() + b"\n")
    resources = {
        "landing": LandingZoneResource(url=str(tmp_path / "landing")),
        "io_manager": LakeIOManager(base_url=str(tmp_path / "lake")),
    }
    run = dg.materialize([items, raw_events], partition_key=PARTITION, resources=resources)
    meta = run.asset_materializations_for_node("raw_events")[0].metadata
    assert (meta["rows_in"].value, meta["valid"].value, meta["quarantined"].value) == (8, 7, 1)
    assert meta["quarantine_reasons"].value == {"timestamp_before_app_launch": 1}
    assert run.output_for_node("raw_events", "raw_events")["event_time"].min() == datetime(1996, 1, 1, tzinfo=UTC)


def test_movielens_keeps_its_1997_times_without_an_environment_variable(tmp_path, ml100k_dir):
    result = import_movielens(LocalLandingZone(tmp_path / "landing"), ml100k_dir, arrival=NOW, keep_history=True)
    assert (result.rows_in, result.kept, result.merged, result.refused) == (100_000, 100_000, 0, {})
    assert result.earliest_event_time == datetime(1997, 9, 20, 3, 5, 10, tzinfo=UTC)
    zone = LocalLandingZone(tmp_path / "landing")  # as a later process sees it
    known = set(read_table_updates(zone, ITEMS_PREFIX, schemas.ITEM_SCHEMA, "item_id")["item_id"])
    ingested = ingest_files(zone, zone.partition_files(PARTITION), PARTITION, NOW, known)
    assert (ingested.stats["valid"], ingested.stats["quarantined"]) == (result.events, 0)
    assert result.events == 100_000 + 55_375 + 17_480  # each completion and bounce with its start


def test_the_app_launch_override_stays_optional(tmp_path, monkeypatch):
    zone = LocalLandingZone(tmp_path / "landing")
    key = event_file_key(NOW, ".jsonl", new_batch_id(NOW))
    zone.write_bytes(key, json.dumps(_app_event(1, "2010-01-01T00:00:00Z")).encode() + b"\n")
    assert ingest_files(zone, zone.partition_files(PARTITION), PARTITION, NOW, {"x"}).stats["quarantined"] == 1
    monkeypatch.setenv("RECSYS_APP_LAUNCH", "2009-01-01")
    assert ingest_files(zone, zone.partition_files(PARTITION), PARTITION, NOW, {"x"}).stats["valid"] == 1


class RecordingZone(LocalLandingZone):
    """A local zone that records its writes, its listings of imports/ and the manifests it reads."""

    def __init__(self, root) -> None:
        super().__init__(root)
        self.writes: list[tuple[str, bytes]] = []
        self.import_listings = 0
        self.manifest_reads: list[str] = []

    def write_bytes(self, key: str, data: bytes) -> None:
        self.writes.append((key, data))
        super().write_bytes(key, data)

    def list_files(self, prefix: str, start_after: str | None = None):
        self.import_listings += prefix == IMPORTS_PREFIX
        return super().list_files(prefix, start_after)

    def read_bytes(self, key: str) -> bytes:
        if key.startswith(IMPORTS_PREFIX):
            self.manifest_reads.append(key)
        return super().read_bytes(key)


def test_the_manifest_lands_before_the_events(tmp_path):
    zone = RecordingZone(tmp_path / "landing")
    result = import_frames(zone, _old_ratings(), ColumnMapping("u", "i", "ts", weight="r"), "old", arrival=NOW,
                           keep_history=True)  # fmt: skip
    keys = [k for k, _ in zone.writes]
    first_event = min(n for n, k in enumerate(keys) if k.startswith("events/"))
    assert keys.index(result.manifest_key) < first_event  # a sensor that sees an event file finds the floor
    assert json.loads(zone.writes[keys.index(result.manifest_key)][1])["status"] == "landing"
    assert keys[-1] == result.manifest_key and json.loads(zone.writes[-1][1])["status"] == "landed"


def test_ingestion_reads_only_the_manifests_of_its_hours_once(tmp_path):
    zone = RecordingZone(tmp_path / "landing")
    mapping = ColumnMapping("u", "i", "ts", weight="r")
    here = import_frames(zone, _old_ratings(), mapping, "old", arrival=NOW, keep_history=True)
    import_frames(zone, _old_ratings(), mapping, "old", arrival=datetime(2026, 3, 1, 9, tzinfo=UTC), keep_history=True)
    files = zone.partition_files(PARTITION)
    assert ingest_files(zone, files, PARTITION, NOW, {"x", "y", "z"}).stats["valid"] == 7
    assert (zone.import_listings, zone.manifest_reads) == (1, [here.manifest_key])
    floors = imported_event_floors(zone, [PARTITION, "2026-03-01-09:00"])  # what the asset does, once per run
    assert len(floors) == 2 and (zone.import_listings, len(zone.manifest_reads)) == (2, 3)
    assert ingest_files(zone, files, PARTITION, NOW, {"x", "y", "z"}, floors=floors).stats["valid"] == 7
    assert (zone.import_listings, len(zone.manifest_reads)) == (2, 3)


def test_an_unreadable_manifest_is_skipped_and_its_history_quarantined(tmp_path):
    zone = LocalLandingZone(tmp_path / "landing")
    result = import_frames(zone, _old_ratings(), ColumnMapping("u", "i", "ts", weight="r"), "old", arrival=NOW,
                           keep_history=True)  # fmt: skip
    zone.write_bytes(result.manifest_key, b"{not json")
    ingested = ingest_files(zone, zone.partition_files(PARTITION), PARTITION, NOW, {"x", "y", "z"})
    assert ingested.stats["valid"] == 0
    assert ingested.quarantined["reason"].unique().to_list() == ["timestamp_before_app_launch"]


# -- bad input: what each kind of interactions file becomes ----------------------------------------------


def _import(tmp_path, frame: pl.DataFrame, mapping: ColumnMapping = MAPPING, **options):
    frame.write_csv(tmp_path / "in.csv")
    zone = LocalLandingZone(tmp_path / "landing")
    result = import_files(zone, tmp_path / "in.csv", mapping, arrival=NOW, **options)
    ingested = ingest_files(zone, zone.partition_files(PARTITION), PARTITION, NOW, {"x", "y", "z"})
    return zone, result, ingested


def _kinds(events: pl.DataFrame) -> list[tuple[str, int]]:
    return events.group_by("event_type").len().sort("event_type").rows()


def test_ratings_only(tmp_path):
    frame = pl.DataFrame({"u": ["a", "a", "b"], "i": ["x", "y", "x"], "r": [5.0, 3.0, 1.0], "ts": [T, T + 1, T + 2]})
    _, result, ingested = _import(tmp_path, frame, ColumnMapping("u", "i", "ts", weight="r"))
    assert (result.rows_in, result.kept, result.merged, result.refused) == (3, 3, 0, {})
    # 5 -> completion + its start, 3 -> start, 1 -> bounce + its start
    assert _kinds(ingested.events) == [("content_complete", 1), ("content_exit", 1), ("content_start", 3)]
    assert ingested.stats["quarantined"] == 0


def test_implicit_events_only_are_plays(tmp_path):
    frame = pl.DataFrame({"u": ["a", "a", "b"], "i": ["x", "y", "x"], "ts": [T, T + 1, T + 2]})
    _, result, ingested = _import(tmp_path, frame)
    assert (result.kept, result.events) == (3, 3)
    assert _kinds(ingested.events) == [("content_start", 3)]


def test_event_type_and_weight_the_event_type_decides(tmp_path):
    frame = pl.DataFrame(
        {
            "u": ["a", "a", "b", "b", "c"],
            "i": ["x", "y", "x", "z", "z"],
            "e": ["view", "finish", None, "", "view"],
            "r": [1.0, None, 5.0, 2.0, None],
            "ts": [T, T + 1, T + 2, T + 3, T + 4],
        }
    )
    mapping = ColumnMapping("u", "i", "ts", event_type="e", weight="r")
    types = {"view": "content_start", "finish": "content_complete"}
    _, result, ingested = _import(tmp_path, frame, mapping, event_types=types)
    # rows 1, 2, 5 by their event type (row 1's weight 1.0 is not used); rows 3 and 4 have no event type, so
    # their weights decide as in a ratings file: 5 -> completion + start, 2 -> bounce (0 s) + start
    assert (result.kept, result.events, result.refused) == (5, 7, {})
    got = ingested.events.sort("event_time", "event_type").select("user_id", "event_type", "seconds_listened").rows()
    assert got == [
        ("a", "content_start", None),
        ("a", "content_complete", None),
        ("b", "content_complete", None),
        ("b", "content_start", None),
        ("b", "content_exit", 0.0),
        ("b", "content_start", None),
        ("c", "content_start", None),
    ]
    assert result.warnings == [
        "1 rows have both an event type (e) and a weight (r): the event type decides, their weights are not used"
    ]


def test_users_and_items_with_a_single_interaction_are_kept(tmp_path):
    frame = pl.DataFrame({"u": ["a", "b", "c"], "i": ["x", "y", "z"], "ts": [T, T + 1, T + 2]})
    _, result, ingested = _import(tmp_path, frame)
    assert (result.kept, result.users, result.items, ingested.stats["valid"]) == (3, 3, 3, 3)


def test_exact_duplicate_rows_are_merged_and_counted(tmp_path):
    frame = pl.DataFrame(
        {
            "u": ["a", "a", "a", "a", "b"],
            "i": ["x", "x", "x", "x", "x"],
            "r": [5.0, 5.0, 3.0, 5.0, 5.0],
            "ts": [T, T, T, T, T],
        }
    )
    zone, result, ingested = _import(tmp_path, frame, ColumnMapping("u", "i", "ts", weight="r"))
    # rows 2 and 4 repeat row 1 exactly; row 3 differs in its rating, so it is another event at the same time
    assert (result.rows_in, result.kept, result.merged, result.refused) == (5, 3, 2, {})
    assert (ingested.stats["valid"], ingested.stats["duplicates"]) == (result.events, 0)
    assert json.loads(zone.read_bytes(result.manifest_key))["rows"] == {"in": 5, "kept": 3, "merged": 2, "refused": 0}


@pytest.mark.parametrize(
    "stamps",
    [
        [T, T + 60],  # epoch seconds
        [T * 1000, (T + 60) * 1000],  # epoch milliseconds
        ["2020-09-13T12:26:40Z", "2020-09-13T12:27:40.000Z"],  # ISO, UTC
        ["2020-09-13T14:26:40+02:00", "2020-09-13 08:27:40-04:00"],  # ISO with offsets
        ["2020-09-13 12:26:40", "2020-09-13T12:27:40"],  # ISO without an offset: UTC
        ["1600000000", "1600000060000"],  # epochs as text, one in seconds and one in milliseconds
    ],
)
def test_timestamp_formats(tmp_path, stamps):
    frame = pl.DataFrame({"u": ["a", "b"], "i": ["x", "y"], "ts": stamps})
    _, result, ingested = _import(tmp_path, frame)
    assert result.refused == {}
    assert ingested.events.sort("user_id")["event_time"].to_list() == [
        datetime(2020, 9, 13, 12, 26, 40, tzinfo=UTC),
        datetime(2020, 9, 13, 12, 27, 40, tzinfo=UTC),
    ]


def test_rows_that_cannot_become_events_are_refused_with_their_reason_and_kept(tmp_path):
    frame = pl.DataFrame(
        {
            "u": ["a", None, "b", " ", "c", "c", "d", "a"],
            "i": ["x", "y", None, "z", "x", "y", "z", "x"],
            "r": ["5", "4", "4", "4", "five", None, "3", "5"],
            "ts": [str(T), str(T), str(T), str(T), str(T), str(T), "yesterday", str(T)],
        }
    )
    zone, result, ingested = _import(tmp_path, frame, ColumnMapping("u", "i", "ts", weight="r"))
    assert result.refused == {
        "missing_user_id": 2,
        "missing_item_id": 1,
        "unparsable_timestamp": 1,
        "missing_weight": 1,
        "unparsable_weight": 1,
    }
    assert list(result.refused) == [r for r in REFUSAL_REASONS if r in result.refused]
    assert (result.rows_in, result.kept, result.merged) == (8, 1, 1)  # row 8 repeats row 1
    assert ingested.stats["valid"] == result.events == 2 and ingested.stats["quarantined"] == 0
    refused = pl.read_parquet(io.BytesIO(zone.read_bytes(result.refused_file)))
    assert refused.schema == schemas.QUARANTINE_SCHEMA
    assert refused.select("reason", "source_row", "detail").rows() == [
        ("missing_user_id", 2, "u is empty"),
        ("missing_item_id", 3, "i is empty"),
        ("missing_user_id", 4, "u is empty"),
        ("unparsable_weight", 5, "r=five is not a number"),
        ("missing_weight", 6, "r is empty"),
        ("unparsable_timestamp", 7, "ts=yesterday is not epoch seconds/milliseconds or ISO 8601"),
    ]
    assert json.loads(refused["raw"][5]) == {"u": "d", "i": "z", "r": "3", "ts": "yesterday"}
    assert set(refused["source_file"]) == {str(tmp_path / "in.csv")} and set(refused["partition_key"]) == {PARTITION}
    (manifest,) = read_import_manifests(LocalLandingZone(tmp_path / "landing"))
    assert manifest.rows == {"in": 8, "kept": 1, "merged": 1, "refused": 6}
    assert manifest.refused_by_reason == result.refused and manifest.refused_file == result.refused_file


def test_ids_the_serving_api_would_refuse_are_refused_at_import(tmp_path):
    frame = pl.DataFrame({"u": ["a", "a b", "c", "d"], "i": ["x", "y", "../z", "z"], "ts": [T, T, T, T]})
    _, result, ingested = _import(tmp_path, frame)
    assert result.refused == {"invalid_user_id": 1, "invalid_item_id": 1}
    assert sorted(ingested.events["user_id"].to_list()) == ["a", "d"]


def test_missing_event_types_are_refused(tmp_path):
    frame = pl.DataFrame({"u": ["a", "b"], "i": ["x", "y"], "e": ["content_start", None], "ts": [T, None]})
    _, result, _ = _import(tmp_path, frame, ColumnMapping("u", "i", "ts", event_type="e"))
    assert result.refused == {"missing_timestamp": 1}  # the first check a row fails names it
    frame = pl.DataFrame({"u": ["a", "b"], "i": ["x", "y"], "e": ["content_start", " "], "ts": [T, T]})
    (tmp_path / "blank").mkdir()
    _, result, _ = _import(tmp_path / "blank", frame, ColumnMapping("u", "i", "ts", event_type="e"))
    assert (result.kept, result.refused) == (1, {"missing_event_type": 1})


def test_a_bad_value_past_the_rows_polars_infers_types_from(tmp_path):
    stamps = [str(T + k) for k in range(12_000)]
    stamps[11_000] = "n/a"
    frame = pl.DataFrame({"u": ["a"] * 12_000, "i": ["x"] * 12_000, "ts": stamps})
    _, result, ingested = _import(tmp_path, frame)
    assert (result.kept, result.refused, ingested.stats["valid"]) == (11_999, {"unparsable_timestamp": 1}, 11_999)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("u,i,ts\n", "has no rows"),
        ("u,i,ts\na,x,monday\nb,y,tuesday\n", "no value of the timestamp column 'ts' is a time, e.g. ['monday'"),
        ("u,i,ts\na,x,\nb,y,\n", "the timestamp column 'ts' is empty"),
        (
            "u,i,ts\n,x,1600000000\n,y,1600000000\n",
            "none of the 2 interaction rows can be imported (2 missing_user_id)",
        ),
        ("user,i,ts\na,x,1600000000\n", "no column u "),
    ],
)
def test_files_that_cannot_import_get_one_clear_message(tmp_path, content, message):
    (tmp_path / "in.csv").write_text(content)
    zone = LocalLandingZone(tmp_path / "landing")
    with pytest.raises(DatasetImportError) as err:
        import_files(zone, tmp_path / "in.csv", MAPPING, arrival=NOW)
    assert message in str(err.value)
    assert zone.list_files("") == []  # nothing landed


def test_import_command_prints_and_stores_the_counts(tmp_path, monkeypatch):
    from recsys_platform.cli import app

    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    pl.DataFrame(
        {
            "u": ["a", "a", None, "b"],
            "i": ["x", "x", "y", "y"],
            "ts": [str(OLD), str(OLD), str(OLD), "1996-01-02T00:00:00+01:00"],
        }
    ).write_csv(tmp_path / "old.csv")
    args = ["import", "--interactions", str(tmp_path / "old.csv"), "--user-col", "u", "--item-col", "i"]
    out = CliRunner().invoke(app, [*args, "--time-col", "ts"])
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert "2 events, 2 items, 2 users" in text
    assert "rows: 4 read, 2 kept, 1 merged (exact duplicates), 1 refused; earliest event 1996-01-01 00:00:00" in text
    assert "refused: 1 missing_user_id; each row with its reason in imports/" in text
    (manifest,) = read_import_manifests(LocalLandingZone(tmp_path / "home" / "landing"))
    assert (manifest.rows["refused"], manifest.earliest_event_time) == (1, "1996-01-01T00:00:00+00:00")
    refused = CliRunner().invoke(app, [*args, "--time-col", "ts", "--no-keep-history"])
    message = " ".join(refused.output.split())
    assert refused.exit_code == 1 and "2 of 2 events are before 2019-01-01" in message
    assert "import failed:" in message and "Traceback" not in message
