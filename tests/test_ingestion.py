"""Ingestion: both file formats, both landing backends, late events, idempotency and refreshes through
Dagster with the real lake IO manager, catalog updates, and reconciliation against the landed files."""

import io
import json
from datetime import UTC, datetime, timedelta

import dagster as dg
import polars as pl
import pytest
from dagster_aws.s3 import S3Resource

from assets.checks import raw_events_reconciliation
from assets.ingestion import items, raw_events, users
from recsys_platform import schemas
from recsys_platform.dev.generator import GeneratorConfig, generate, write_to_landing
from recsys_platform.ingest.event_files import encode_frame, read_jsonl
from recsys_platform.ingest.ingestion import ingest_files
from recsys_platform.ingest.landing import LandingZone, LocalLandingZone, event_file_key, new_batch_id, partition_key_of
from recsys_platform.ingest.reconciliation import reconcile_files
from resources import LakeIOManager, LandingZoneResource
from tests.conftest import FIXED_END

HOUR = datetime(2026, 3, 2, 14, tzinfo=UTC)
PARTITION = "2026-03-02-14:00"


def _event(n: int, when: str = "2026-03-02T14:10:00+00:00", **kw: object) -> dict:
    return {
        "event_id": f"e{n}",
        "user_id": "u1",
        "event_type": "content_start",
        "event_time": when,
        "item_id": "i1",
        **kw,
    }


def _jsonl(*rows: dict) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def _land(zone: LandingZone, data: bytes, ext: str = ".jsonl", minute: int = 5, hour: datetime = HOUR) -> str:
    key = event_file_key(hour, ext, new_batch_id(hour + timedelta(minutes=minute)))
    zone.write_bytes(key, data)
    return key


def _catalog(zone: LandingZone, *item_ids: str, stamp: str = "20260301T000000000000") -> None:
    zone.write_bytes(f"items/{stamp}-c.jsonl", _jsonl(*({"item_id": i, "title": f"T {i}"} for i in item_ids)))


@pytest.fixture(scope="module")
def dataset():
    return generate(GeneratorConfig(n_users=300, days=2, seed=3, end=FIXED_END))


def _ingest_all(zone: LandingZone, known: set[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    by_hour: dict[str, list] = {}
    for f in zone.list_files("events/"):
        by_hour.setdefault(partition_key_of(f.key), []).append(f)
    events, quarantine = [], []
    for key, files in sorted(by_hour.items()):
        hour = datetime.strptime(key, "%Y-%m-%d-%H:00").replace(tzinfo=UTC)
        result = ingest_files(zone, files, key, hour, known)
        assert result.reconciled, result.stats
        events.append(result.events)
        quarantine.append(result.quarantined)
    return pl.concat(events), pl.concat(quarantine)


def test_parquet_and_jsonl_give_the_same_events(dataset, tmp_path):
    known = set(dataset.items["item_id"])
    out = {}
    for fmt in (".parquet", ".jsonl"):
        zone = LocalLandingZone(tmp_path / fmt[1:])
        write_to_landing(dataset, zone, fmt=fmt, batches_per_hour=2)
        events, quarantine = _ingest_all(zone, known)
        assert quarantine.height == 0
        out[fmt] = events.drop("source_file").sort("event_id")
    assert out[".parquet"].equals(out[".jsonl"])
    expected = dataset.events.sort("event_id")
    got = out[".parquet"]
    assert got.height == expected.height
    assert got.select(list(schemas.RAW_EVENT_SCHEMA)).equals(expected.select(list(schemas.RAW_EVENT_SCHEMA)))
    assert got.schema == pl.Schema({k: v for k, v in schemas.EVENT_SCHEMA.items() if k != "source_file"})
    # arrival time comes from the batch id: never before the events the batch holds (late ones are older)
    assert (got["arrival_time"] >= got["event_time"]).all()


def test_timestamp_formats_and_numbers_are_typed_alike(tmp_path):
    rows = [
        _event(1, "2026-03-02T14:10:00Z", seconds_listened=5, steps="7"),
        _event(2, "2026-03-02T16:10:00+02:00", seconds_listened="5.0", steps=7.0),
        _event(3, "2026-03-02 14:10:00", seconds_listened=5.0, steps=7),
        _event(4, "2026-03-02T14:10:00.000000", seconds_listened="5", steps="7.0"),
    ]
    fast = read_jsonl(_jsonl(*rows))
    slow = read_jsonl(_jsonl(*rows) + b"{broken\n")  # one bad line: the line-by-line path
    assert len(slow.bad_lines) == 1 and slow.bad_lines[0].line == 5
    assert fast.frame.equals(slow.frame.select(fast.frame.columns))
    zone = LocalLandingZone(tmp_path)
    _land(zone, _jsonl(*rows))
    result = ingest_files(zone, zone.partition_files(PARTITION), PARTITION, HOUR, {"i1"})
    assert result.quarantined.height == 0
    assert result.events["event_time"].unique().to_list() == [datetime(2026, 3, 2, 14, 10, tzinfo=UTC)]
    assert result.events["seconds_listened"].to_list() == [5.0] * 4 and result.events["steps"].to_list() == [7] * 4


def test_late_event_lands_in_its_arrival_hour_with_both_times(tmp_path):
    zone = LocalLandingZone(tmp_path)
    # the phone was offline: events from 09:30 arrive at 14:05, and an on-time one at 14:10
    late = _event(1, "2026-03-02T09:30:00+00:00")
    key = _land(zone, _jsonl(late, _event(2)))
    result = ingest_files(zone, zone.partition_files(PARTITION), PARTITION, HOUR, {"i1"})
    assert result.quarantined.height == 0 and result.events.height == 2
    row = result.events.filter(pl.col("event_id") == "e1").row(0, named=True)
    assert row["event_time"] == datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
    assert row["arrival_time"] == datetime(2026, 3, 2, 14, 5, tzinfo=UTC)
    assert row["source_file"] == key and row["source_row"] == 1
    assert result.stats["late_events"] == 1
    # the 09:00 hour is untouched: late events never rewrite an older partition
    assert zone.partition_files("2026-03-02-09:00") == []


def _resources(landing_url: str, lake: str, s3: S3Resource | None = None) -> dict:
    return {"landing": LandingZoneResource(url=landing_url, s3=s3), "io_manager": LakeIOManager(base_url=lake)}


def _materialize_hour(resources: dict, partition: str = PARTITION) -> dg.ExecuteInProcessResult:
    assert dg.materialize([items], resources=resources).success
    result = dg.materialize(
        [items, raw_events, raw_events_reconciliation],
        selection=dg.AssetSelection.assets("raw_events", "quarantined_events"),
        partition_key=partition,
        resources=resources,
    )
    assert result.success
    (check,) = result.get_asset_check_evaluations()
    assert check.passed, check.metadata
    return result


def _stored(lake, asset: str = "raw_events", partition: str = PARTITION) -> pl.DataFrame:
    return pl.read_parquet(lake / asset / f"{partition}.parquet")


def test_materializing_twice_and_landing_a_file_twice_give_the_same_rows(tmp_path):
    zone = LocalLandingZone(tmp_path / "landing")
    _catalog(zone, "i1")
    data = _jsonl(*(_event(n) for n in range(50)))
    _land(zone, data, minute=5)
    resources = _resources(str(tmp_path / "landing"), str(tmp_path / "lake"))

    _materialize_hour(resources)
    first = _stored(tmp_path / "lake")
    _materialize_hour(resources)
    assert _stored(tmp_path / "lake").equals(first)

    _land(zone, data, minute=20)  # the producer retried: the same file lands again
    result = _materialize_hour(resources)
    assert _stored(tmp_path / "lake").equals(first)
    quarantine = _stored(tmp_path / "lake", "quarantined_events")
    assert quarantine.height == 50 and set(quarantine["reason"]) == {"duplicate_event_id"}
    meta = result.asset_materializations_for_node("raw_events")[0].metadata
    assert (meta["rows_in"].value, meta["valid"].value, meta["duplicates"].value) == (100, 50, 50)


def test_new_file_and_new_catalog_item_refresh_a_materialized_hour(tmp_path):
    zone = LocalLandingZone(tmp_path / "landing")
    _catalog(zone, "i1")
    _land(zone, _jsonl(_event(1), _event(2, item_id="i2")), minute=5)
    resources = _resources(str(tmp_path / "landing"), str(tmp_path / "lake"))
    _materialize_hour(resources)
    assert _stored(tmp_path / "lake")["event_id"].to_list() == ["e1"]
    assert _stored(tmp_path / "lake", "quarantined_events")["reason"].to_list() == ["unknown_item_id"]

    # the catalog update with the new item arrives, and another batch lands in the same hour
    _catalog(zone, "i1", "i2", stamp="20260302T140000000000")
    _land(zone, _jsonl(_event(3)), minute=30)
    _materialize_hour(resources)
    assert sorted(_stored(tmp_path / "lake")["event_id"]) == ["e1", "e2", "e3"]
    assert _stored(tmp_path / "lake", "quarantined_events").height == 0
    assert sorted(pl.read_parquet(tmp_path / "lake" / "items.parquet")["item_id"]) == ["i1", "i2"]


def test_s3_landing_zone_through_dagster(s3_bucket, tmp_path, dataset):
    endpoint, bucket = s3_bucket
    s3 = S3Resource(endpoint_url=endpoint)
    resources = _resources(f"s3://{bucket}/landing", str(tmp_path / "lake"), s3)
    zone = resources["landing"].zone()  # the production code path: dagster-aws S3Resource with endpoint_url
    start = dataset.events["arrival_time"].max().replace(minute=0, second=0, microsecond=0)
    hour = f"{start:%Y-%m-%d-%H}:00"
    in_hour = dataset.events.filter(pl.col("arrival_time") >= start).select(list(schemas.RAW_EVENT_SCHEMA))
    zone.write_bytes("items/20260101T000000000000-c.parquet", encode_frame(dataset.items, ".parquet"))
    zone.write_bytes("users/20260101T000000000000-p.jsonl", encode_frame(dataset.users, ".jsonl"))
    half = in_hour.height // 2
    _land(zone, encode_frame(in_hour.head(half), ".jsonl"), minute=10, hour=start)
    _land(zone, encode_frame(in_hour.tail(in_hour.height - half), ".parquet"), ".parquet", minute=50, hour=start)

    result = _materialize_hour(resources, hour)
    stored = _stored(tmp_path / "lake", partition=hour)
    assert stored.height == in_hour.height > 0
    assert stored.select(in_hour.columns).equals(in_hour)  # file order, then row order
    assert stored["source_file"].str.starts_with(f"events/dt={start:%Y-%m-%d}/hr={start:%H}/").all()
    assert result.asset_materializations_for_node("raw_events")[0].metadata["files"].value == 2
    users_out = dg.materialize([users], resources=resources).output_for_node("users")
    assert users_out.sort("user_id").equals(dataset.users.sort("user_id"))  # typed from JSON lines, dates included


def test_single_run_over_a_range_of_hours(dataset, tmp_path):
    zone = LocalLandingZone(tmp_path / "landing")
    write_to_landing(dataset, zone)
    hours = sorted({partition_key_of(f.key) for f in zone.list_files("events/")})
    resources = _resources(str(tmp_path / "landing"), str(tmp_path / "lake"))
    assert dg.materialize([items], resources=resources).success
    result = dg.materialize(
        [items, raw_events, raw_events_reconciliation],
        selection=dg.AssetSelection.assets("raw_events", "quarantined_events"),
        tags={"dagster/asset_partition_range_start": hours[0], "dagster/asset_partition_range_end": hours[5]},
        resources=resources,
    )
    assert result.success
    (check,) = result.get_asset_check_evaluations()
    assert check.passed and check.metadata["files"].value == 6
    stored = pl.concat([_stored(tmp_path / "lake", partition=h) for h in hours[:6]])
    start = datetime.strptime(hours[0], "%Y-%m-%d-%H:00").replace(tzinfo=UTC)
    assert stored.height == dataset.events.filter(pl.col("arrival_time") < start + timedelta(hours=6)).height


def test_reconciliation_flags_lost_rows_and_files_not_yet_ingested(tmp_path):
    zone = LocalLandingZone(tmp_path)
    _land(zone, _jsonl(*(_event(n) for n in range(10))), minute=1)
    _land(zone, encode_frame(pl.DataFrame([_event(n) for n in range(10, 15)]), ".parquet"), ".parquet", minute=2)
    files = zone.partition_files(PARTITION)
    result = ingest_files(zone, files, PARTITION, HOUR, {"i1"})
    assert reconcile_files(zone, files, result.events, result.quarantined).ok

    lost = reconcile_files(zone, files, result.events.filter(pl.col("event_id") != "e3"), result.quarantined)
    assert not lost.ok and lost.totals["files_mismatched"] == 1
    assert lost.files.filter(pl.col("status") == "mismatch")["landed_rows"].to_list() == [10]

    _land(zone, _jsonl(_event(99)), minute=40)  # landed after the partition was materialized
    late = reconcile_files(zone, zone.partition_files(PARTITION), result.events, result.quarantined)
    assert not late.ok and late.totals["files_not_ingested"] == 1 and late.totals["files_mismatched"] == 0


def test_unreadable_catalog_file_is_skipped_not_fatal(tmp_path, caplog):
    zone = LocalLandingZone(tmp_path)
    _catalog(zone, "i1", "i2")
    zone.write_bytes("items/20260302T000000000000-bad.parquet", b"PAR1 truncated")
    buf = io.BytesIO()
    pl.DataFrame({"item_id": ["i2"], "title": ["Renamed"]}).write_parquet(buf)
    zone.write_bytes("items/20260303T000000000000-new.parquet", buf.getvalue())
    from recsys_platform.ingest.ingestion import read_table_updates

    df = read_table_updates(zone, "items/", schemas.ITEM_SCHEMA, "item_id")
    assert df.select("item_id", "title").rows() == [("i1", "T i1"), ("i2", "Renamed")]
    assert "bad.parquet" in caplog.text
