"""The analyst catalog: a small DuckDB file holding only views over the Parquet lake.

Pipelines never write through DuckDB. The catalog is rebuilt into a new file and renamed
over the old one, so an analyst's open read-only session never blocks a run (it keeps the
old file's views, which glob the lake and so still see new data) and a run never breaks it.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

logger = logging.getLogger(__name__)


def _source(lake_url: str, table: str) -> str | None:
    base = Path(lake_url)
    if (base / table).is_dir() and any(base.joinpath(table).glob("*.parquet")):
        return f"read_parquet('{base / table}/*.parquet', union_by_name = true)"
    if (base / f"{table}.parquet").exists():
        return f"read_parquet('{base / table}.parquet')"
    return None


def build_catalog(catalog_path: Path, lake_url: str, tables: list[str]) -> list[str]:
    """Write a fresh catalog with one view per lake table that has data; return the view names."""
    import duckdb

    if "://" in lake_url:
        raise NotImplementedError("catalog views over a remote lake need DuckDB's httpfs extension; see deploy/")
    catalog_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = catalog_path.with_name(f".{catalog_path.name}.{uuid.uuid4().hex}.tmp")
    created = []
    con = duckdb.connect(str(tmp))
    try:
        for table in tables:
            source = _source(lake_url, table)
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
