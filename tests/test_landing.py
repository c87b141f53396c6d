"""Landing zone: the same behaviour on a local directory and on S3 (moto server on loopback, through the
dagster-aws S3Resource exactly as production builds it)."""

from datetime import UTC, datetime

import pytest
from dagster_aws.s3 import S3Resource

from recsys_platform.ingest.landing import (
    LandingZone,
    LocalLandingZone,
    S3LandingZone,
    arrival_time_of,
    event_file_key,
    landing_zone_from_url,
    new_batch_id,
    partition_key_of,
    partition_prefix,
)
from resources import LandingZoneResource

ARRIVAL = datetime(2026, 3, 2, 14, 5, 7, 123456, tzinfo=UTC)


@pytest.fixture(params=["local", "s3"])
def zone(request: pytest.FixtureRequest, tmp_path) -> LandingZone:
    if request.param == "local":
        return LandingZoneResource(url=str(tmp_path / "landing")).zone()
    endpoint, bucket = request.getfixturevalue("s3_bucket")
    return LandingZoneResource(url=f"s3://{bucket}/landing", s3=S3Resource(endpoint_url=endpoint)).zone()


def test_keys_encode_partition_and_arrival():
    batch = new_batch_id(ARRIVAL)
    key = event_file_key(ARRIVAL, ".jsonl", batch)
    assert key == f"events/dt=2026-03-02/hr=14/{batch}.jsonl"
    assert partition_key_of(key) == "2026-03-02-14:00"
    assert partition_prefix("2026-03-02-14:00") == "events/dt=2026-03-02/hr=14/"
    assert arrival_time_of(key) == ARRIVAL
    assert arrival_time_of("events/dt=2026-03-02/hr=14/producer-file.parquet") is None
    assert partition_key_of("items/x.parquet") is None
    # batch ids sort by arrival time, so key order is arrival order
    later = new_batch_id(datetime(2026, 3, 2, 14, 5, 8, tzinfo=UTC))
    assert batch < later


def test_backend_types(zone: LandingZone, tmp_path):
    assert isinstance(zone, LocalLandingZone | S3LandingZone)
    if isinstance(zone, S3LandingZone):
        assert zone.url.endswith("/landing/") and zone.prefix == "landing/"


def test_write_read_list_in_key_order(zone: LandingZone):
    keys = [
        "events/dt=2026-03-02/hr=15/b.parquet",
        "events/dt=2026-03-02/hr=14/b.jsonl",
        "events/dt=2026-03-01/hr=23/a.parquet",
        "events/dt=2026-03-02/hr=14/a.parquet",
        "items/20260301T000000000000-x.parquet",
    ]
    for n, key in enumerate(keys):
        zone.write_bytes(key, f"payload {n}".encode())
    listed = [f.key for f in zone.list_files("events/")]
    assert listed == sorted(k for k in keys if k.startswith("events/"))
    assert zone.read_bytes("events/dt=2026-03-02/hr=14/b.jsonl") == b"payload 1"
    assert {f.key: f.size for f in zone.list_files("items/")} == {keys[4]: len(b"payload 4")}
    assert [f.key for f in zone.partition_files("2026-03-02-14:00")] == [
        "events/dt=2026-03-02/hr=14/a.parquet",
        "events/dt=2026-03-02/hr=14/b.jsonl",
    ]
    assert zone.list_files("users/") == []


def test_cursor_listing_resumes_after_a_key(zone: LandingZone):
    keys = [f"events/dt=2026-03-0{d}/hr={h:02d}/{n}.parquet" for d in (1, 2) for h in (9, 10) for n in ("a", "b")]
    for key in keys:
        zone.write_bytes(key, b"x")
    for i, cursor in enumerate(keys):
        assert [f.key for f in zone.list_files("events/", start_after=cursor)] == keys[i + 1 :]
    # a cursor between folders (e.g. a file that has since been deleted) resumes at the next key
    assert [f.key for f in zone.list_files("events/", start_after="events/dt=2026-03-01/hr=10/zz")] == keys[4:]
    assert zone.list_files("events/", start_after=keys[-1]) == []


def test_files_only_visible_when_complete(zone: LandingZone, tmp_path):
    zone.write_bytes("events/dt=2026-03-02/hr=14/a.parquet", b"x" * 1000)
    zone.write_bytes("events/dt=2026-03-02/hr=14/a.parquet", b"y" * 10)  # overwrite is atomic too
    if isinstance(zone, LocalLandingZone):
        # a writer that has not finished yet: its temporary name is hidden from listings
        (zone.root / "events/dt=2026-03-02/hr=14/.b.parquet.1234.tmp").write_bytes(b"partial")
        assert not list((zone.root / "events/dt=2026-03-02/hr=14").glob(".a.parquet.*.tmp"))
    else:
        zone.client.put_object(Bucket=zone.bucket, Key=zone.prefix + "events/dt=2026-03-02/hr=14/", Body=b"")
    files = zone.list_files("events/")
    assert [(f.key, f.size) for f in files] == [("events/dt=2026-03-02/hr=14/a.parquet", 10)]
    assert zone.read_bytes(files[0].key) == b"y" * 10


def test_zone_from_url(tmp_path, s3_bucket):
    local = landing_zone_from_url(str(tmp_path / "z"))
    assert isinstance(local, LocalLandingZone) and (tmp_path / "z").is_dir()
    endpoint, bucket = s3_bucket
    client = S3Resource(endpoint_url=endpoint).get_client()
    remote = landing_zone_from_url(f"s3://{bucket}/some/prefix/", s3_client=client)
    remote.write_bytes("users/a.jsonl", b"{}")
    listed = client.list_objects_v2(Bucket=bucket)["Contents"]
    assert [o["Key"] for o in listed] == ["some/prefix/users/a.jsonl"]
    assert [f.key for f in remote.list_files("users/")] == ["users/a.jsonl"]


def test_files_by_partition_lists_by_day_never_everything(zone: LandingZone, monkeypatch):
    keys = [
        "events/dt=2026-03-01/hr=22/a.parquet",
        "events/dt=2026-03-01/hr=23/a.parquet",
        "events/dt=2026-03-02/hr=14/a.parquet",
        "events/dt=2026-03-02/hr=14/b.jsonl",
        "events/dt=2026-03-02/hr=14/notes.txt",
        "events/dt=2026-03-02/hr=15/a.parquet",
        "events/dt=2026-03-03/hr=00/a.parquet",
    ]
    for key in keys:
        zone.write_bytes(key, b"x")
    listed: list[str] = []
    original = type(zone).list_files
    monkeypatch.setattr(
        type(zone), "list_files", lambda self, prefix, **kw: listed.append(prefix) or original(self, prefix, **kw)
    )
    got = zone.files_by_partition(["2026-03-02-14:00", "2026-03-02-15:00", "2026-03-01-23:00", "2026-03-04-00:00"])
    assert {k: [f.key for f in fs] for k, fs in got.items()} == {
        "2026-03-01-23:00": ["events/dt=2026-03-01/hr=23/a.parquet"],
        "2026-03-02-14:00": [
            "events/dt=2026-03-02/hr=14/a.parquet",
            "events/dt=2026-03-02/hr=14/b.jsonl",
            "events/dt=2026-03-02/hr=14/notes.txt",  # ingestion quarantines it with the reason
        ],
        "2026-03-02-15:00": ["events/dt=2026-03-02/hr=15/a.parquet"],
    }
    # a day with several wanted hours is one listing; a lone hour lists only that hour
    assert sorted(listed) == [
        "events/dt=2026-03-01/hr=23/",
        "events/dt=2026-03-02/",
        "events/dt=2026-03-04/hr=00/",
    ]


def test_loopback_s3_serves_ranged_reads_of_only_the_range(s3_bucket):
    import boto3
    from botocore.exceptions import ClientError

    endpoint, bucket = s3_bucket
    client = boto3.client("s3", endpoint_url=endpoint)
    data = bytes(range(256)) * 40_000  # ~10 MB: above moto's in-memory size, in its temporary file
    client.put_object(Bucket=bucket, Key="lake/big.bin", Body=data)
    for spec, want in (("bytes=0-9", data[:10]), ("bytes=1000-", data[1000:]), ("bytes=-7", data[-7:])):
        got = client.get_object(Bucket=bucket, Key="lake/big.bin", Range=spec)
        assert got["Body"].read() == want and got["ResponseMetadata"]["HTTPStatusCode"] == 206
        first = len(data) - len(want) if spec.startswith("bytes=-") else int(spec[6:].split("-")[0])
        assert got["ContentRange"] == f"bytes {first}-{first + len(want) - 1}/{len(data)}"
    assert client.get_object(Bucket=bucket, Key="lake/big.bin")["Body"].read() == data
    with pytest.raises(ClientError, match="InvalidRange"):
        client.get_object(Bucket=bucket, Key="lake/big.bin", Range=f"bytes={len(data)}-")
