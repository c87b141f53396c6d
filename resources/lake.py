"""The Parquet lake IO manager: polars frames as Parquet, small dicts as JSON, local or S3.

Writes are atomic (temporary name + rename locally; S3 puts are atomic), so analysts reading
the lake through DuckDB views never see a half-written file. A partitioned asset stores one
file per partition; a run covering a range of partitions returns `{partition_key: frame}`.
An unpartitioned asset that reads a partitioned one gets a lazy scan over the files that
exist, not one load per partition.
"""

import io
import json
import os
import uuid
from typing import Any

import dagster as dg
import polars as pl
from upath import UPath

from recsys_platform.analytics.reporting import frame_preview_markdown
from recsys_platform.deploy_profile import fsspec_s3_options, is_s3, polars_s3_options

PARQUET = ".parquet"
JSON = ".json"


def _is_local(path: UPath) -> bool:
    return getattr(path, "protocol", "") in ("", "file", "local")


def _storage_options(path: UPath) -> dict[str, Any]:
    """polars storage options for a lake path (object_store keys, not the fsspec ones UPath holds)."""
    if _is_local(path):
        return {}
    return polars_s3_options((getattr(path, "storage_options", {}) or {}).get("endpoint_url"))


class PolarsParquetIOManager(dg.UPathIOManager):
    """Stores polars DataFrames as Parquet and dicts as JSON under a base UPath."""

    extension = ""

    def _write(self, path: UPath, data: bytes) -> None:
        if _is_local(path):
            local = str(path.path if hasattr(path, "path") else path)
            os.makedirs(os.path.dirname(local), exist_ok=True)
            tmp = os.path.join(os.path.dirname(local), f".{os.path.basename(local)}.{uuid.uuid4().hex}.tmp")
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, local)
        else:
            path.write_bytes(data)

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path: UPath) -> None:
        if isinstance(obj, pl.LazyFrame):
            obj = obj.collect()
        if isinstance(obj, pl.DataFrame):
            buf = io.BytesIO()
            obj.write_parquet(buf, compression="zstd", statistics=True)
            self._write(path.with_suffix(PARQUET), buf.getvalue())
        elif isinstance(obj, dict | list):
            self._write(path.with_suffix(JSON), json.dumps(obj, default=str, indent=1).encode())
        elif obj is None:
            return
        else:
            raise TypeError(f"lake IO manager stores polars DataFrames or dicts, got {type(obj).__name__}")

    def load_from_path(self, context: dg.InputContext, path: UPath) -> Any:
        parquet, js = path.with_suffix(PARQUET), path.with_suffix(JSON)
        if parquet.exists():
            lazy = pl.scan_parquet(str(parquet), storage_options=_storage_options(parquet) or None)
            return lazy if context.dagster_type.typing_type == pl.LazyFrame else lazy.collect()
        if js.exists():
            return json.loads(js.read_text())
        raise FileNotFoundError(f"no data for {context.asset_key.to_user_string()} at {path}(.parquet|.json)")

    def path_exists(self, path: UPath) -> bool:
        return path.with_suffix(PARQUET).exists() or path.with_suffix(JSON).exists()

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        keys = context.asset_partition_keys if context.has_asset_partitions else []
        if isinstance(obj, dict) and keys and (len(keys) > 1 or set(obj) == set(keys)):
            if len(keys) > 1:
                self._dump_partitions(context, obj)
                return
            obj = obj[keys[0]]  # {partition: frame} of a one-partition run: stored as that partition's frame
        super().handle_output(context, obj)
        if isinstance(obj, pl.DataFrame):
            context.add_output_metadata(_frame_metadata(obj))

    def _dump_partitions(self, context: dg.OutputContext, obj: dict[str, Any]) -> None:
        """A single run over a range of partitions: one file per partition present in `obj`."""
        paths = self._get_paths_for_partitions(context)
        rows = 0
        for key, frame in obj.items():
            if key not in paths:
                raise KeyError(f"partition {key} is not in this run's range")
            self.dump_to_path(context, frame, paths[key])
            rows += frame.height
        context.add_output_metadata({"partitions_written": len(obj), "dagster/row_count": rows})

    def load_input(self, context: dg.InputContext) -> Any:
        if context.has_asset_key and context.has_asset_partitions and len(context.asset_partition_keys) > 1:
            return self._scan_partitions(context)
        return super().load_input(context)

    def _scan_partitions(self, context: dg.InputContext) -> pl.LazyFrame | pl.DataFrame:
        base = self._get_path_without_extension(context)
        wanted = set(context.asset_partition_keys)
        files = (
            []
            if not base.exists()
            else sorted(p for p in base.iterdir() if p.name.endswith(PARQUET) and p.name[: -len(PARQUET)] in wanted)
        )
        opts = _storage_options(base) or None
        if files:
            lazy = pl.scan_parquet([str(p) for p in files], storage_options=opts)
        else:
            lazy = pl.LazyFrame()
        return lazy if context.dagster_type.typing_type == pl.LazyFrame else lazy.collect()


def _frame_metadata(df: pl.DataFrame) -> dict[str, Any]:
    return {
        "dagster/row_count": df.height,
        "preview": dg.MetadataValue.md(frame_preview_markdown(df)),
        "dagster/column_schema": dg.TableSchema(
            columns=[dg.TableColumn(name=n, type=str(t)) for n, t in df.schema.items()]
        ),
    }


class LakeIOManager(dg.ConfigurableIOManagerFactory):
    """Parquet lake at `base_url` (a local path or s3://bucket/prefix)."""

    base_url: str
    s3_endpoint_url: str | None = None

    def create_io_manager(self, context: dg.InitResourceContext) -> PolarsParquetIOManager:
        if is_s3(self.base_url):
            return PolarsParquetIOManager(base_path=UPath(self.base_url, **fsspec_s3_options(self.s3_endpoint_url)))
        os.makedirs(self.base_url, exist_ok=True)
        return PolarsParquetIOManager(base_path=UPath(self.base_url))
