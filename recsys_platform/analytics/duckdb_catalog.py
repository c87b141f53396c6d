"""The analyst catalog: a small DuckDB file holding only views over the Parquet lake.

Pipelines never write through DuckDB. The catalog is rebuilt into a new file and renamed
over the old one, so an analyst's open read-only session never blocks a run (it keeps the
old file's views, which glob the lake and so still see new data) and a run never breaks it.
With the lake on S3 the views read s3:// through s3fs; open such a catalog with `connect_catalog`.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any

from recsys_platform.deploy_profile import is_s3, s3_filesystem

logger = logging.getLogger(__name__)


def _source(lake_url: str, table: str) -> str | None:
    base = Path(lake_url)
    if (base / table).is_dir() and any(base.joinpath(table).glob("*.parquet")):
        return f"read_parquet('{base / table}/*.parquet', union_by_name = true)"
    if (base / f"{table}.parquet").exists():
        return f"read_parquet('{base / table}.parquet')"
    return None


def _s3_source(fs: Any, lake_url: str, table: str) -> str | None:
    base = lake_url.rstrip("/")
    if fs.exists(f"{base}/{table}") and fs.glob(f"{base}/{table}/*.parquet"):
        return f"read_parquet('{base}/{table}/*.parquet', union_by_name = true)"
    if fs.exists(f"{base}/{table}.parquet"):
        return f"read_parquet('{base}/{table}.parquet')"
    return None


def connect_catalog(catalog_path: Path, s3_endpoint_url: str | None = None, read_only: bool = True) -> Any:
    """Open the catalog; with a lake on S3, DuckDB reads it through s3fs (no httpfs download needed)."""
    import duckdb

    con = duckdb.connect(str(catalog_path), read_only=read_only)
    con.register_filesystem(s3_filesystem(s3_endpoint_url))
    return con


def build_catalog(
    catalog_path: Path, lake_url: str, tables: list[str], s3_endpoint_url: str | None = None
) -> list[str]:
    """Write a fresh catalog with one view per lake table that has data; return the view names."""
    import duckdb

    remote = is_s3(lake_url)
    if "://" in lake_url and not remote:
        raise NotImplementedError(f"catalog views over {lake_url!r}: only local and s3:// lakes are supported")
    catalog_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = catalog_path.with_name(f".{catalog_path.name}.{uuid.uuid4().hex}.tmp")
    created = []
    con = duckdb.connect(str(tmp))
    fs = None
    if remote:
        # DuckDB's httpfs extension cannot be downloaded offline; s3fs registered as a filesystem serves s3://.
        fs = s3_filesystem(s3_endpoint_url)
        con.register_filesystem(fs)
    try:
        for table in tables:
            source = _s3_source(fs, lake_url, table) if remote else _source(lake_url, table)
            if source is None:
                continue
            con.execute(f'CREATE OR REPLACE VIEW "{table}" AS SELECT * FROM {source}')
            created.append(table)
        con.execute("CHECKPOINT")
    finally:
        con.close()
    os.replace(tmp, catalog_path)
    logger.info("catalog %s: %d views", catalog_path, len(created))
    return created
