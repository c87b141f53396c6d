"""The bad-input corpus: every kind of broken event or file is quarantined with its specific reason code
(row-level with file and line/row, or one quarantined-file record), the good rows next to it proceed,
nothing crashes and nothing is dropped: rows_in = valid + quarantined + duplicates, file by file."""

import io
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import dagster as dg
import polars as pl
import pytest

from assets.checks import raw_events_reconciliation
from assets.ingestion import items, raw_events
from recsys_platform import schemas
from recsys_platform.ingest.ingestion import FILE_NOTICES, ingest_files
from recsys_platform.ingest.landing import LocalLandingZone, event_file_key, new_batch_id
from recsys_platform.ingest.reconciliation import reconcile_files
from resources import LakeIOManager, LandingZoneResource

HOUR = datetime(2026, 3, 2, 14, tzinfo=UTC)
PARTITION = "2026-03-02-14:00"
KNOWN_ITEMS = {"i1", "i2"}


def event(n: int, **overrides: object) -> dict:
    base = {
        "event_id": f"e{n}",
        "user_id": "u1",
        "event_type": "content_start",
        "event_time": "2026-03-02T13:50:00+00:00",
        "session_id": "s1",
        "item_id": "i1",
        "seconds_listened": None,
        "query": None,
        "steps": None,
        "heart_rate": None,
    }
    return {**base, **overrides}


def jsonl(*rows: dict) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def parquet(rows: list[dict], schema: dict | None = None) -> bytes:
    buf = io.BytesIO()
    pl.DataFrame(rows, schema=schema).write_parquet(buf)
    return buf.getvalue()


@dataclass
class Case:
    """Files to land (extension, bytes) and the quarantine records expected: (reason, file index, row)."""

    files: list[tuple[str, bytes]]
    expected: list[tuple[str, int, int | None]]
    valid: int
    detail: str = ""  # a fragment the first record's detail must contain
    extra: dict = field(default_factory=dict)


def _corpus() -> dict[str, Case]:
    good = [event(1), event(2)]
    typed_parquet = parquet(
        [event(1), event(2, seconds_listened=float("nan"), event_type="content_exit")],
        schema={**{k: pl.String for k in schemas.RAW_EVENT_SCHEMA}, "seconds_listened": pl.Float64, "steps": pl.Int64,
                "heart_rate": pl.Float64},
    )  # fmt: skip
    full = pl.read_parquet(io.BytesIO(parquet(good)))
    truncated = parquet(good)[:-40]
    return {
        "missing_required_field": Case(
            [(".jsonl", jsonl(event(1), event(2, user_id=None)))], [("missing_required_field", 0, 2)], 1, "user_id"
        ),
        "blank_required_field": Case(
            [(".jsonl", jsonl(event(1, event_id="  "), event(2)))], [("missing_required_field", 0, 1)], 1, "event_id"
        ),
        "wrong_type_number": Case(
            [(".jsonl", jsonl(event(1), event(2, seconds_listened="twelve")))], [("wrong_type", 0, 2)], 1, "twelve"
        ),
        "wrong_type_timestamp": Case(
            [(".jsonl", jsonl(event(1, event_time="yesterday"), event(2)))], [("wrong_type", 0, 1)], 1, "event_time"
        ),
        "wrong_type_nested_object": Case(
            [(".jsonl", jsonl(event(1, steps={"n": 3}), event(2)))], [("wrong_type", 0, 1)], 1, "steps"
        ),
        "wrong_type_parquet_column": Case(
            [(".parquet", parquet([{**event(1), "event_time": 1_700_000_000}]))], [("wrong_type", 0, 1)], 0
        ),
        "invalid_user_id": Case(
            [(".jsonl", jsonl(event(1, user_id="../../etc/passwd"), event(2, user_id="a b\x00"), event(3)))],
            [("invalid_identifier", 0, 1), ("invalid_identifier", 0, 2)],
            1,
            'user_id "../../etc/passwd" is not 1-64 characters',
        ),
        "invalid_item_id": Case(
            [(".jsonl", jsonl(event(1, item_id="x" * 65), event(2)))], [("invalid_identifier", 0, 1)], 1, "item_id"
        ),
        "unknown_event_type": Case(
            [(".jsonl", jsonl(event(1, event_type="teleport"), event(2)))],
            [("unknown_event_type", 0, 1)],
            1,
            "teleport",
        ),
        "unknown_content_id": Case(
            [(".jsonl", jsonl(event(1), event(2, item_id="i999")))], [("unknown_item_id", 0, 2)], 1, "i999"
        ),
        "content_event_without_item": Case(
            [(".jsonl", jsonl(event(1, item_id=None), event(2)))], [("missing_item_id", 0, 1)], 1
        ),
        "negative_duration": Case(
            [(".jsonl", jsonl(event(1, event_type="content_exit", seconds_listened=-5), event(2)))],
            [("invalid_duration", 0, 1)],
            1,
            "-5",
        ),
        "absurd_duration": Case(
            [(".jsonl", jsonl(event(1), event(2, event_type="content_exit", seconds_listened=1e9)))],
            [("invalid_duration", 0, 2)],
            1,
        ),
        "nan_duration_in_parquet": Case([(".parquet", typed_parquet)], [("invalid_duration", 0, 2)], 1),
        "absurd_biometric": Case(
            [(".jsonl", jsonl(event(1, event_type="biometric", item_id=None, heart_rate=900), event(2)))],
            [("invalid_biometric", 0, 1)],
            1,
        ),
        "timestamp_far_in_future": Case(
            [(".jsonl", jsonl(event(1), event(2, event_time="2031-01-01T00:00:00Z")))],
            [("timestamp_in_future", 0, 2)],
            1,
        ),
        "timestamp_before_app_existed": Case(
            [(".jsonl", jsonl(event(1, event_time="1970-01-01T00:00:00Z"), event(2)))],
            [("timestamp_before_app_launch", 0, 1)],
            1,
        ),
        "malformed_json_line": Case(
            [(".jsonl", jsonl(event(1)) + b'{"event_id": "e2", "user_id": \n' + jsonl(event(3)))],
            [("malformed_json", 0, 2)],
            2,
        ),
        "json_line_not_an_object": Case(
            [(".jsonl", jsonl(event(1)) + b'["e2", "u1"]\n' + b"NaN\n")],
            [("malformed_json", 0, 2), ("malformed_json", 0, 3)],
            1,
            "list",
        ),
        "nan_literal_in_json": Case(
            [(".jsonl", jsonl(event(1)) + b'{"event_id": "e2", "seconds_listened": NaN}\n')],
            [("malformed_json", 0, 2)],
            1,
            "NaN",
        ),
        "invalid_utf8": Case(
            [(".jsonl", jsonl(event(1)) + b'{"event_id": "e2", "user_id": "u\xff\xfe"}\n' + jsonl(event(3)))],
            [("invalid_utf8", 0, 2)],
            2,
        ),
        "blank_lines_keep_line_numbers": Case(
            [(".jsonl", b"\n" + jsonl(event(1)) + b"   \n\n" + jsonl(event(2, event_type="teleport")))],
            [("unknown_event_type", 0, 5)],
            1,
        ),
        "empty_file": Case(
            [(".jsonl", b""), (".parquet", b"  \n"), (".jsonl", jsonl(*good))],
            [("empty_file", 0, None), ("empty_file", 1, None)],
            2,
        ),  # fmt: skip
        "truncated_parquet": Case(
            [(".parquet", truncated), (".jsonl", jsonl(event(3)))], [("corrupt_file", 0, None)], 1, "Parquet"
        ),
        "not_parquet_at_all": Case([(".parquet", jsonl(*good))], [("corrupt_file", 0, None)], 0),
        "unsupported_format": Case([(".csv", b"event_id,user_id\ne1,u1\n")], [("unsupported_format", 0, None)], 0),
        "extra_columns": Case(
            [(".parquet", parquet([{**e, "device": "ios", "ab_bucket": 3} for e in good]))],
            [("unexpected_columns", 0, None)],
            2,
            "ab_bucket, device",
        ),
        "missing_column": Case(
            [(".parquet", parquet_without(full, "event_time"))],
            [("missing_column", 0, 1), ("missing_column", 0, 2)],
            0,
            "event_time",
        ),
        "missing_optional_columns_are_fine": Case(
            [(".parquet", parquet_without(full, "query", "steps", "heart_rate", "session_id"))], [], 2
        ),
        "oversized_field": Case(
            [(".jsonl", jsonl(event(1, query="x" * 5000), event(2)))], [("oversized_field", 0, 1)], 1, "query has 5000"
        ),
        "duplicate_ids_within_a_file": Case(
            [(".jsonl", jsonl(event(1), event(2), event(1)))], [("duplicate_event_id", 0, 3)], 2, "same payload"
        ),
        "duplicate_ids_across_files": Case(
            [(".jsonl", jsonl(event(1), event(2))), (".parquet", parquet([event(2, user_id="u2"), event(3)]))],
            [("duplicate_event_id", 1, 1)],
            3,
            "different payload",
        ),
        "same_file_landed_twice": Case(
            [(".jsonl", jsonl(*good)), (".jsonl", jsonl(*good))],
            [("duplicate_event_id", 1, 1), ("duplicate_event_id", 1, 2)],
            2,
        ),
    }


def parquet_without(df: pl.DataFrame, *columns: str) -> bytes:
    buf = io.BytesIO()
    df.drop(columns).write_parquet(buf)
    return buf.getvalue()


CORPUS = _corpus()


def land(zone: LocalLandingZone, files: list[tuple[str, bytes]]) -> list[str]:
    keys = []
    for n, (ext, data) in enumerate(files):
        key = event_file_key(HOUR, ext, new_batch_id(HOUR + timedelta(minutes=5, seconds=n)))
        zone.write_bytes(key, data)
        keys.append(key)
    return keys


def test_corpus_has_at_least_15_distinct_reasons():
    reasons = {r for case in CORPUS.values() for r, _, _ in case.expected}
    assert len(CORPUS) >= 25 and len(reasons) >= 18, sorted(reasons)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_bad_input_is_quarantined_with_its_reason(name: str, tmp_path):
    case = CORPUS[name]
    zone = LocalLandingZone(tmp_path)
    keys = land(zone, case.files)
    files = zone.partition_files(PARTITION) + [f for f in zone.list_files("events/") if f.key.endswith(".csv")]
    result = ingest_files(zone, files, PARTITION, HOUR, KNOWN_ITEMS)

    got = sorted(
        (r["reason"], keys.index(r["source_file"]), r["source_row"]) for r in result.quarantined.iter_rows(named=True)
    )
    assert got == sorted(case.expected), result.quarantined.select("reason", "detail", "source_row")
    assert result.events.height == case.valid
    if case.detail:
        assert case.detail in result.quarantined["detail"][0]
    q = result.quarantined
    assert (q["partition_key"] == PARTITION).all() and q["quarantined_at"].null_count() == 0
    assert q.filter(pl.col("source_row").is_not_null())["raw"].null_count() == 0  # the rejected payload is kept

    # reconciliation: every landed row is valid, quarantined or a duplicate; checked again from the files
    s = result.stats
    assert result.reconciled and s["rows_in"] == s["valid"] + s["quarantined"] + s["duplicates"]
    rec = reconcile_files(zone, files, result.events, result.quarantined)
    assert rec.ok, rec.files
    assert rec.totals["rows_in"] == s["rows_in"]
    file_records = q.filter(pl.col("source_row").is_null() & ~pl.col("reason").is_in(list(FILE_NOTICES)))
    assert s["files_quarantined"] == file_records.height


def test_the_whole_corpus_in_one_partition_through_dagster(tmp_path):
    """All bad inputs land in the same hour: the run succeeds, the quarantine has every reason, and the
    reconciliation check (re-counting the landed files) passes."""
    zone = LocalLandingZone(tmp_path / "landing")
    zone.write_bytes("items/20260301T000000000000-a.jsonl", jsonl({"item_id": "i1"}, {"item_id": "i2"}))
    for n, case in enumerate(CORPUS.values()):
        for m, (ext, data) in enumerate(case.files):
            zone.write_bytes(event_file_key(HOUR, ext, new_batch_id(HOUR + timedelta(minutes=1 + n, seconds=m))), data)
    resources = {
        "landing": LandingZoneResource(url=str(tmp_path / "landing")),
        "io_manager": LakeIOManager(base_url=str(tmp_path / "lake")),
    }
    assert dg.materialize([items], resources=resources).success
    result = dg.materialize(
        [items, raw_events, raw_events_reconciliation],
        selection=dg.AssetSelection.assets("raw_events", "quarantined_events"),
        partition_key=PARTITION,
        resources=resources,
    )
    assert result.success
    meta = result.asset_materializations_for_node("raw_events")[0].metadata
    assert meta["reconciled"].value is True
    assert meta["rows_in"].value == meta["valid"].value + meta["quarantined"].value + meta["duplicates"].value
    quarantine = result.output_for_node("raw_events", "quarantined_events")
    assert set(quarantine["reason"]) == {r for case in CORPUS.values() for r, _, _ in case.expected}
    events = result.output_for_node("raw_events", "raw_events")
    assert events.height == meta["valid"].value and events["event_id"].is_unique().all()
    (check,) = result.get_asset_check_evaluations()
    assert check.passed, check.metadata
    assert check.metadata["rows_in"].value == meta["rows_in"].value
