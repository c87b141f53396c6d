"""Human-readable summaries of frames and metrics for asset metadata and the CLI."""

from __future__ import annotations

import polars as pl


def frame_preview_markdown(df: pl.DataFrame, rows: int = 5, max_cols: int = 12) -> str:
    """A small Markdown table of the first rows (long text cut)."""
    head = df.head(rows).select(df.columns[:max_cols])
    cols = head.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in head.iter_rows():
        cells = [("" if v is None else str(v))[:40].replace("|", "/") for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    if len(df.columns) > max_cols:
        lines.append(f"\n({len(df.columns) - max_cols} more columns)")
    return "\n".join(lines)
