"""Great Expectations suites: one per table, in step with the schemas; failures come back with counts and
examples; big frames are sampled; the Dagster checks report them and the blocking ones stop downstream."""

import json
import subprocess
import sys
from datetime import UTC, datetime

import dagster as dg
import polars as pl
import pytest

from assets.checks import quality_check_result, raw_events_expectations, recommendations_expectations
from assets.partitions import arrival_hours
from recsys_platform import schemas
from recsys_platform.config import EXPECTATIONS_DIR
from recsys_platform.ingest.quality import load_suite, suite_names, validate_frame

HOUR = datetime(2026, 3, 2, 14, tzinfo=UTC)
PARTITION = "2026-03-02-14:00"
REQUIRED = {"raw_events", "interactions", "user_features", "item_features", "recommendations"}


def events(n: int) -> pl.DataFrame:
    """n valid stored events of one arrival hour."""
    i = pl.int_range(n, eager=True)
    return pl.DataFrame(
        {
            "event_id": i.cast(pl.String).str.pad_start(8, "0").map_elements(lambda s: f"e{s}", return_dtype=pl.String),
            "user_id": (i % 97).cast(pl.String),
            "event_type": pl.Series(["content_start", "app_open", "content_complete", "search"] * (n // 4 + 1))[:n],
            "event_time": pl.Series([HOUR] * n),
            "session_id": pl.Series(["s1"] * n),
            "item_id": pl.Series(["i1", None, "i2", None] * (n // 4 + 1))[:n],
            "seconds_listened": pl.Series([None, None, 600.0, None] * (n // 4 + 1))[:n],
            "query": pl.Series([None, None, None, "sleep"] * (n // 4 + 1))[:n],
            "steps": pl.Series([None] * n, dtype=pl.Int64),
            "heart_rate": pl.Series([None] * n, dtype=pl.Float64),
            "arrival_time": pl.Series([HOUR] * n),
            "source_file": pl.Series(["events/dt=2026-03-02/hr=14/a.parquet"] * n),
            "source_row": i + 1,
        }
    ).cast(schemas.EVENT_SCHEMA)


def recommendations(users: int = 3, k: int = 4) -> pl.DataFrame:
    rows = [(f"u{u}", r, f"i{r}", 1.0 / r, "7", HOUR) for u in range(users) for r in range(1, k + 1)]
    return pl.DataFrame(rows, schema=schemas.RECOMMENDATION_SCHEMA, orient="row")


def test_one_suite_per_validated_table_in_step_with_the_schemas():
    assert REQUIRED <= set(suite_names())
    column_sets = {
        "raw_events": schemas.EVENT_SCHEMA,
        "interactions": schemas.INTERACTION_SCHEMA,
        "recommendations": schemas.RECOMMENDATION_SCHEMA,
    }
    for name in REQUIRED:
        suite = load_suite(name)
        assert suite["name"] == name and len(suite["expectations"]) >= 6
        assert json.loads((EXPECTATIONS_DIR / f"{name}.json").read_text()) == suite
        match = [e for e in suite["expectations"] if e["type"] == "expect_table_columns_to_match_set"]
        if name in column_sets:
            assert match[0]["kwargs"]["column_set"] == list(column_sets[name])
    vocab = next(
        e
        for e in load_suite("raw_events")["expectations"]
        if e["kwargs"].get("column") == "event_type" and e["type"] == "expect_column_values_to_be_in_set"
    )
    assert vocab["kwargs"]["value_set"] == list(schemas.EVENT_TYPES)
    # the content-event lists of the suites are schemas.CONTENT_EVENT_TYPES too (a new event type fails here until
    # the suites name it)
    content = next(
        e
        for e in load_suite("interactions")["expectations"]
        if e["kwargs"].get("column") == "event_type" and e["type"] == "expect_column_values_to_be_in_set"
    )
    assert content["kwargs"]["value_set"] == list(schemas.CONTENT_EVENT_TYPES)
    conditions = [
        e["kwargs"]["row_condition"] for e in load_suite("raw_events")["expectations"] if "row_condition" in e["kwargs"]
    ]
    assert conditions and all(c == f"event_type in {json.dumps(list(schemas.CONTENT_EVENT_TYPES))}" for c in conditions)
    ids = {
        e["kwargs"]["column"]: e["kwargs"]["regex"]
        for e in load_suite("raw_events")["expectations"]
        if e["type"] == "expect_column_values_to_match_regex"
    }
    assert ids == {"user_id": schemas.ID_PATTERN, "item_id": schemas.ID_PATTERN}


def test_valid_frames_pass():
    result = validate_frame(events(400), "raw_events")
    assert result.success and result.failed == 0 and result.failures == []
    assert (result.rows, result.rows_validated, result.sampled) == (400, 400, False)
    assert result.evaluated == len(load_suite("raw_events")["expectations"])
    assert validate_frame(recommendations(), "recommendations").success


def test_failures_report_counts_and_examples():
    df = events(400).with_columns(
        event_type=pl.when(pl.col("source_row") <= 3).then(pl.lit("teleport")).otherwise("event_type"),
        seconds_listened=pl.when(pl.col("source_row") == 3).then(-5.0).otherwise("seconds_listened"),
        item_id=pl.when(pl.col("source_row") == 5).then(None).otherwise("item_id"),  # a content_start without item
        user_id=pl.when(pl.col("source_row") == 7).then(pl.lit("a b")).otherwise("user_id"),
    )
    df = pl.concat([df, df.slice(10, 2)])  # two duplicated event ids
    result = validate_frame(df, "raw_events")
    assert not result.success
    by_type = {(f.expectation, f.column): f for f in result.failures}
    assert set(by_type) == {
        ("expect_column_values_to_be_in_set", "event_type"),
        ("expect_column_values_to_be_between", "seconds_listened"),
        ("expect_column_values_to_not_be_null", "item_id"),
        ("expect_column_values_to_be_unique", "event_id"),
        ("expect_column_values_to_match_regex", "user_id"),
    }
    assert by_type[("expect_column_values_to_match_regex", "user_id")].examples == ["a b"]
    vocab = by_type[("expect_column_values_to_be_in_set", "event_type")]
    assert vocab.unexpected_count == 3 and vocab.examples == ["teleport"]
    assert vocab.unexpected_percent == pytest.approx(3 / 402 * 100)
    assert by_type[("expect_column_values_to_be_between", "seconds_listened")].examples == [-5.0]
    assert by_type[("expect_column_values_to_not_be_null", "item_id")].unexpected_count == 1
    unique = by_type[("expect_column_values_to_be_unique", "event_id")]
    assert unique.unexpected_count == 4 and sorted(unique.examples) == ["e00000010", "e00000011"]
    assert "teleport" in result.failures_markdown() and "| event_type |" in result.failures_markdown()
    json.dumps(result.to_dict())  # metadata-ready


def test_large_frames_are_validated_on_a_seeded_sample():
    df = events(2_000).with_columns(user_id=pl.when(pl.col("source_row") % 10 == 0).then(None).otherwise("user_id"))
    first = validate_frame(df, "raw_events", max_rows=500, seed=1)
    again = validate_frame(df, "raw_events", max_rows=500, seed=1)
    assert (first.rows, first.rows_validated, first.sampled) == (2_000, 500, True)
    (nulls,) = first.failures
    assert nulls.column == "user_id" and 20 <= nulls.unexpected_count <= 80  # about 10% of the sample
    assert again.failures[0].unexpected_count == nulls.unexpected_count


def test_check_result_metadata_lists_failed_expectations():
    result = validate_frame(recommendations().with_columns(rank=pl.lit(1, dtype=pl.Int64)), "recommendations")
    check = quality_check_result(result)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert check.metadata["expectations_failed"].value == 1
    assert "expect_compound_columns_to_be_unique" in check.metadata["failed_expectations"].value
    failures = check.metadata["failures"].value
    assert failures[0]["kwargs"]["column_list"] == ["user_id", "rank"] and failures[0]["unexpected_count"] == 12
    assert "1 of" in check.description and "all rows" in check.description


def test_blocking_checks_stop_downstream_assets(tmp_path):
    """A raw_events partition breaking its suite: the check fails and the downstream asset does not run."""

    @dg.asset(name="raw_events", partitions_def=arrival_hours)
    def bad_raw_events() -> pl.DataFrame:
        return events(40).with_columns(event_type=pl.lit("teleport"))

    @dg.asset(partitions_def=arrival_hours)
    def downstream(raw_events: pl.DataFrame) -> pl.DataFrame:
        return raw_events

    @dg.asset(name="recommendations")
    def good_recommendations() -> pl.DataFrame:
        return recommendations()

    from resources import LakeIOManager

    io = {"io_manager": LakeIOManager(base_url=str(tmp_path / "lake"))}
    result = dg.materialize(
        [bad_raw_events, downstream, raw_events_expectations],
        partition_key=PARTITION,
        resources=io,
        raise_on_error=False,
    )
    assert not result.success
    (check,) = result.get_asset_check_evaluations()
    assert not check.passed and check.metadata["partitions_failed"].value == [PARTITION]
    assert "teleport" in check.metadata["failed_expectations"].value
    assert [m.asset_key.to_user_string() for m in result.get_asset_materialization_events()] == ["raw_events"]

    ok = dg.materialize([good_recommendations, recommendations_expectations], resources=io)
    assert ok.success and ok.get_asset_check_evaluations()[0].passed


def test_checks_are_in_the_definitions_and_blocking_where_it_matters():
    from orchestration.definitions import defs

    specs = {
        (spec.asset_key.to_user_string(), spec.name): spec
        for checks in defs.asset_checks or []
        for spec in checks.check_specs
    }
    for table in REQUIRED:
        assert (table, f"{table}_expectations") in specs
    assert ("raw_events", "raw_events_reconciliation") in specs
    blocking = {key for key, spec in specs.items() if spec.blocking}
    assert {("raw_events", "raw_events_expectations"), ("recommendations", "recommendations_expectations")} <= blocking
    assert ("user_features", "user_features_expectations") not in blocking


def test_great_expectations_is_imported_lazily():
    code = "import sys, recsys_platform.ingest.quality, assets.checks; print('great_expectations' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _hours_run(tmp_path, frames: dict[str, pl.DataFrame]):
    """Materialize raw_events over a range of arrival hours (one run, as ranged ingestion does) with its GX check."""
    from orchestration.runner import partition_range_tags
    from resources import LakeIOManager

    @dg.asset(name="raw_events", partitions_def=arrival_hours, backfill_policy=dg.BackfillPolicy.single_run())
    def ranged_raw_events(context: dg.AssetExecutionContext) -> dict[str, pl.DataFrame]:
        return {key: frames[key] for key in context.partition_keys}

    keys = sorted(frames)
    return dg.materialize(
        [ranged_raw_events, raw_events_expectations],
        tags=partition_range_tags(keys[0], keys[-1]),
        resources={"io_manager": LakeIOManager(base_url=str(tmp_path / "lake"))},
        raise_on_error=False,
    )


def _in_hour(df: pl.DataFrame, key: str) -> pl.DataFrame:
    day, hour = key[:10], key[11:13]
    return df.with_columns(source_file=pl.lit(f"events/dt={day}/hr={hour}/a.parquet"))


def test_a_run_over_several_hours_is_validated_in_one_call_with_event_ids_unique_per_hour(tmp_path):
    # the same event ids in both hours: unique within each hour, as the suite requires
    good = {k: _in_hour(events(40), k) for k in ("2026-03-02-14:00", "2026-03-02-15:00")}
    result = _hours_run(tmp_path, good)
    assert result.success
    (check,) = result.get_asset_check_evaluations()
    assert check.passed and check.metadata["rows"].value == 80
    assert (check.metadata["partitions_in_run"].value, check.metadata["partitions_validated"].value) == (2, 2)
    assert check.metadata["validation"].value == "one call, all hours"


def test_a_failing_run_over_several_hours_names_the_partitions_that_fail(tmp_path):
    bad = events(40).with_columns(event_type=pl.lit("teleport"))
    duplicated = pl.concat([events(40), events(40).head(2)])
    frames = {
        "2026-03-02-14:00": _in_hour(events(40), "2026-03-02-14:00"),
        "2026-03-02-15:00": _in_hour(bad, "2026-03-02-15:00"),
        "2026-03-02-16:00": _in_hour(duplicated, "2026-03-02-16:00"),
    }
    result = _hours_run(tmp_path, frames)
    assert not result.success
    (check,) = result.get_asset_check_evaluations()
    assert not check.passed
    assert check.metadata["partitions_failed"].value == ["2026-03-02-15:00", "2026-03-02-16:00"]
    failed = {(f["expectation"], f["kwargs"]["partition"]) for f in check.metadata["failures"].value}
    assert ("expect_column_values_to_be_in_set", "2026-03-02-15:00") in failed
    assert ("expect_column_values_to_be_unique", "2026-03-02-16:00") in failed
