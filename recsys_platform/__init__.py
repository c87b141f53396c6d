"""recsys-platform core library: plain Python on polars, duckdb and lightgbm (no Dagster here)."""

import os

# LightGBM's OpenMP threads busy-wait by default; on a 2-core machine shared with the Dagster
# daemon, the API and other runs that spin-waiting made training ~10x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
