"""Reconciliation: re-count the rows of landed files and check them against a stored partition.

For every landed file: rows in the file = valid events stored from it + quarantined rows from it +
duplicates (kept in quarantine as `duplicate_event_id`). A file that could not be read must have a
quarantined-file record instead. Independent of the counts ingestion recorded, so it catches lost rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from recsys_platform.ingest.event_files import count_jsonl_rows, count_parquet_rows
from recsys_platform.ingest.ingestion import FILE_NOTICES
from recsys_platform.ingest.landing import FILE_FORMATS, LandedFile, LandingZone


@dataclass
class Reconciliation:
    """Landed rows per file against what a stored partition accounts for."""

    ok: bool
    totals: dict[str, int]
    files: pl.DataFrame  # source_file, landed_rows, valid, quarantined, duplicates, file_reason, status


def count_landed_rows(zone: LandingZone, key: str) -> int | None:
    """Rows a landed file holds as ingestion counts them; None when it cannot be read."""
    try:
        data = zone.read_bytes(key)
        if not data or data.isspace() or not key.endswith(FILE_FORMATS):
            return None
        return count_parquet_rows(data) if key.endswith(".parquet") else count_jsonl_rows(data)
    except Exception:
        return None


def reconcile_files(
    zone: LandingZone, files: list[LandedFile], events: pl.DataFrame, quarantined: pl.DataFrame
) -> Reconciliation:
    """Check, file by file, that landed rows = valid + quarantined + duplicates in the stored partition."""
    landed = pl.DataFrame(
        {"source_file": [f.key for f in files], "landed_rows": [count_landed_rows(zone, f.key) for f in files]},
        schema={"source_file": pl.String, "landed_rows": pl.Int64},
    )
    valid = events.group_by("source_file").agg(valid=pl.len().cast(pl.Int64))
    rows = quarantined.filter(pl.col("source_row").is_not_null())
    quar = rows.group_by("source_file").agg(
        quarantined=(pl.col("reason") != "duplicate_event_id").sum().cast(pl.Int64),
        duplicates=(pl.col("reason") == "duplicate_event_id").sum().cast(pl.Int64),
    )
    file_recs = (
        quarantined.filter(pl.col("source_row").is_null() & ~pl.col("reason").is_in(list(FILE_NOTICES)))
        .group_by("source_file")
        .agg(file_reason=pl.col("reason").first())
    )
    seen = pl.concat([valid.select("source_file"), quar.select("source_file"), file_recs.select("source_file")])
    table = (
        landed.join(seen.unique(), on="source_file", how="full", coalesce=True)
        .join(valid, on="source_file", how="left")
        .join(quar, on="source_file", how="left")
        .join(file_recs, on="source_file", how="left")
        .with_columns(pl.col("valid", "quarantined", "duplicates").fill_null(0))
        .with_columns(accounted=pl.col("valid") + pl.col("quarantined") + pl.col("duplicates"))
        .with_columns(
            status=pl.when(pl.col("file_reason").is_not_null() & pl.col("landed_rows").is_null())
            .then(pl.lit("file_quarantined"))
            .when(pl.col("landed_rows") == pl.col("accounted"))
            .then(pl.lit("ok"))
            .when(pl.col("landed_rows").is_not_null() & (pl.col("accounted") == 0))
            .then(pl.lit("not_ingested"))
            .otherwise(pl.lit("mismatch"))
        )
        .sort("source_file")
    )
    totals = {
        "files": table.height,
        "rows_in": int(table["landed_rows"].fill_null(0).sum()),
        "valid": int(table["valid"].sum()),
        "quarantined": int(table["quarantined"].sum()),
        "duplicates": int(table["duplicates"].sum()),
        "files_quarantined": int((table["status"] == "file_quarantined").sum()),
        "files_not_ingested": int((table["status"] == "not_ingested").sum()),
        "files_mismatched": int((table["status"] == "mismatch").sum()),
    }
    return Reconciliation(
        ok=bool((table["status"].is_in(["ok", "file_quarantined"])).all()), totals=totals, files=table
    )
