"""Ingestion throughput and peak memory for one arrival-hour partition (default 5M events).

Lands the partition as Parquet and as JSON-lines micro-batch files in a temporary local landing
zone, then ingests each format in a fresh subprocess (so peak RSS is that run's alone) with polars
limited to --threads threads. Reports events/s of wall time, events per CPU-second (the per-core
figure), and the peak resident memory of the ingesting process.

    /work/venv/bin/python benchmarks/ingest.py                   # 5M events, 12 files, 1 thread
    /work/venv/bin/python benchmarks/ingest.py --events 1000000 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

HOUR = datetime(2026, 3, 2, 14, tzinfo=UTC)
PARTITION = f"{HOUR:%Y-%m-%d-%H}:00"
TARGETS = {"parquet": 500_000, "jsonl": 100_000}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def land(root: Path, n_events: int, n_files: int, seed: int) -> dict[str, int]:
    """Land `n_events` realistic events of one arrival hour as Parquet and JSON lines; return bytes per format."""
    import polars as pl

    from recsys_platform import schemas
    from recsys_platform.dev.generator import GeneratorConfig, generate
    from recsys_platform.ingest.event_files import encode_frame
    from recsys_platform.ingest.landing import LocalLandingZone, event_file_key, new_batch_id

    # A pool of realistic rows from the generator, re-keyed and spread over the hour up to n_events.
    ds = generate(GeneratorConfig(n_users=20_000, days=2, seed=seed, end=HOUR))
    (root / "items.json").write_text(json.dumps(ds.items["item_id"].to_list()))
    pool = ds.events
    reps = -(-n_events // pool.height)
    frame = (
        pl.concat([pool] * reps)
        .head(n_events)
        .with_columns(
            event_id=pl.format("b{}-{}", pl.int_range(pl.len()), pl.col("event_id")),
            event_time=pl.lit(HOUR, dtype=pl.Datetime("us", "UTC"))
            + pl.duration(microseconds=pl.int_range(pl.len()) * (3_600_000_000 // n_events)),
        )
        .select(list(schemas.RAW_EVENT_SCHEMA))
    )
    sizes = {}
    size = -(-n_events // n_files)
    for fmt in ("parquet", "jsonl"):
        zone = LocalLandingZone(root / fmt)
        total = 0
        for b in range(n_files):
            part = frame.slice(b * size, size)
            data = encode_frame(part, f".{fmt}")
            zone.write_bytes(event_file_key(HOUR, f".{fmt}", new_batch_id(HOUR + timedelta(minutes=b))), data)
            total += len(data)
        sizes[fmt] = total
    return sizes


def measure(root: Path, fmt: str) -> dict[str, float]:
    """Ingest the landed partition of one format in this process; return timings and peak memory."""
    import polars as pl

    from recsys_platform.ingest.ingestion import ingest_files
    from recsys_platform.ingest.landing import LocalLandingZone

    zone = LocalLandingZone(root / fmt)
    files = zone.partition_files(PARTITION)
    items = set(json.loads((root / "items.json").read_text()))
    base_rss = _rss_mib()
    cpu0, t0 = time.process_time(), time.perf_counter()
    result = ingest_files(zone, files, PARTITION, HOUR, known_items=items)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {
        "events": result.stats["rows_in"],
        "valid": result.stats["valid"],
        "quarantined": result.stats["quarantined"] + result.stats["duplicates"],
        "wall_s": wall,
        "cpu_s": cpu,
        "threads": pl.thread_pool_size(),
        "peak_rss_mib": _rss_mib(),
        "rss_before_mib": base_rss,
    }


def main() -> None:
    """Land the data once, measure each format in a subprocess, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--files", type=int, default=12, help="micro-batch files in the hour")
    parser.add_argument("--threads", type=int, default=1, help="POLARS_MAX_THREADS of the ingesting process")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--measure", choices=["parquet", "jsonl"], help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.root, args.measure)))
        return

    root = Path(tempfile.mkdtemp(prefix="recsys-ingest-bench-"))
    try:
        t0 = time.perf_counter()
        sizes = land(root, args.events, args.files, args.seed)
        print(f"landed {args.events:,} events in {args.files} files per format in {time.perf_counter() - t0:.1f}s")
        print(f"load before measuring: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} cores")
        env = {**os.environ, "POLARS_MAX_THREADS": str(args.threads)}
        columns = ("format", "MB", "wall s", "cpu s", "ev/s wall", "ev/cpu-s", "target", "peak RSS MiB")
        widths = (8, 7, 7, 7, 11, 10, 8, 13)
        print(" ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True)))
        for fmt in ("parquet", "jsonl"):
            cmd = [sys.executable, __file__, "--measure", fmt, "--root", str(root)]
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=900)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            assert r["valid"] == args.events, r
            per_cpu = r["events"] / r["cpu_s"]
            cells = (
                fmt,
                f"{sizes[fmt] / 1e6:.0f}",
                f"{r['wall_s']:.2f}",
                f"{r['cpu_s']:.2f}",
                f"{r['events'] / r['wall_s']:,.0f}",
                f"{per_cpu:,.0f}",
                "ok" if per_cpu >= TARGETS[fmt] else "MISS",
                f"{r['peak_rss_mib']:,.0f}",
            )
            print(" ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))
        print(f"polars threads: {args.threads}; load after: {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
