"""The end-of-run summary the CLI prints: rows per asset, model quality, deployment, where to look next."""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl
from rich.console import Console
from rich.table import Table

from recsys_platform.config import Settings
from recsys_platform.model import procedure
from recsys_platform.serve.online_store import open_online_store

SAMPLE_SQL = (
    "SELECT r.user_id, r.rank, i.title, i.content_type, round(r.score, 3) AS score\n"
    "FROM recommendations r JOIN items i USING (item_id)\n"
    "WHERE r.user_id = (SELECT min(user_id) FROM recommendations) AND r.rank <= 5 ORDER BY r.rank;"
)


def lake_row_counts(lake: Path) -> dict[str, int]:
    """Rows per table in a local lake (partitioned tables summed over their files)."""
    counts: dict[str, int] = {}
    for entry in sorted(lake.iterdir()):
        if entry.is_dir():
            files = sorted(str(p) for p in entry.glob("*.parquet"))
            if files:
                counts[entry.name] = pl.scan_parquet(files).select(pl.len()).collect().item()
        elif entry.suffix == ".parquet":
            counts[entry.stem] = pl.scan_parquet(str(entry)).select(pl.len()).collect().item()
    return counts


def print_summary(console: Console, settings: Settings, elapsed_s: float) -> None:
    """Print what the cycle produced and how to explore it."""
    lake = Path(settings.lake_url)
    rows = Table("asset", "rows", title="Rows per asset")
    for name, n in lake_row_counts(lake).items():
        rows.add_row(name, f"{n:,}")
    console.print(rows)

    evaluation = pl.read_parquet(lake / "model_evaluation.parquet")
    # The ranker, the baselines and the champion; the other personalised sources' figures are in the metadata.
    shown = ("ranker", *procedure.BASELINES, "champion")
    evaluation = evaluation.filter(pl.col("model").is_in(shown))
    for protocol in evaluation["protocol"].unique(maintain_order=True):
        # the gap's standard error is not a metric of a list: it is printed with the lift below
        of_protocol = evaluation.filter(pl.col("protocol") == protocol)
        wide = of_protocol.filter(pl.col("metric") != procedure.GAP_SE).pivot(
            on="model", index="metric", values="value"
        )
        base = protocol.removesuffix(procedure.UNSEEN_BY_CHAMPION)
        about = procedure.HOLDOUTS.get(base, base)
        if base != protocol:
            about += ": the events after the champion's training data"
        quality = Table(title=f"Holdout {protocol}: {about}", show_edge=False, pad_edge=False, collapse_padding=True)
        # metric names whole; a model's name folds instead (an 80-column console cut "catalog_coverage@10")
        quality.add_column(wide.columns[0], min_width=max(map(len, wide[wide.columns[0]])), no_wrap=True)
        for model in wide.columns[1:]:
            quality.add_column(model, overflow="fold", min_width=6)
        for row in wide.iter_rows():
            quality.add_row(row[0], *[f"{v:.4f}" if v is not None else "" for v in row[1:]])
        console.print(quality)
        ranker = procedure.metric(of_protocol, protocol, "ranker")
        best, score = procedure.strongest_baseline(of_protocol, protocol)
        lift = ranker / score - 1 if score else float("nan")
        se = procedure.metric(of_protocol, protocol, best, procedure.GAP_SE)
        console.print(
            f"NDCG@10 ({protocol}) ranker {ranker:.4f} vs the strongest baseline, {best}, {score:.4f}: "
            f"{lift:+.0%} relative" + ("" if math.isnan(se) else f" (standard error of the per-user gap {se:.4f})")
        )
    served = evaluation["served_version"][0] if "served_version" in evaluation.columns else None
    ref = json.loads((lake / "ranker_model.json").read_text())
    console.print(
        f"MLflow: registered model {ref['name']} version {ref['version']} (run {ref['run_id']}), "
        f"tracking {settings.mlflow_tracking_uri}"
        + (f"; champion (served) version {served}" if served and served != ref["version"] else "")
    )
    with open_online_store(settings.online_store_url) as store:
        pointer = store.pointer()
    if pointer is not None:
        console.print(
            f"Online store: active slot [bold]{pointer.active_slot}[/bold] serving model "
            f"{pointer.model_version} ({settings.online_store_url})"
        )
    console.print(
        f"DuckDB catalog: {settings.catalog_path}  (open read-only: duckdb -readonly {settings.catalog_path})"
    )
    console.print("Sample query:\n" + SAMPLE_SQL)
    console.print(
        "UI: `recsys ui` (dagster dev on workspace.yaml), API: `recsys serve`, MLflow: "
        f"`mlflow ui --backend-store-uri {settings.mlflow_tracking_uri}`"
    )
    console.print(f"Finished in {elapsed_s:.1f} s")
