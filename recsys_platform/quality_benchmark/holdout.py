"""Evaluation holdouts of an interactions file: read it in any supported format, split it by a protocol,
and write a part back in the file's own format so that `recsys import` reads it as it read the original.

Formats: MovieLens (GroupLens `u.data` / `ratings.csv`, a RecBole directory or `.inter` file, read with
`recsys_platform.ingest.movielens.load_movielens`) and generic CSV/TSV/Parquet tables with a column mapping.
Every row of the file is one interaction; the split keeps rows whole (a part is a subset of the rows).

Protocols (DESIGN.md section 7):

* ``per-user``: each user's newest 20% of rows by time (ties broken by item id) are held out; users with
  fewer than 5 rows stay wholly in train.
* ``global``: the newest 10% of the rows in time is held out (the cutoff is the 90% quantile of their
  times; the issue's reference figures, EASE 0.214 and recent popularity 0.163 on ml-100k, are of this
  split, while 10% of the time *span* would leave 84 test users); the test users are those with a row
  before the cutoff, and their truth is every row at or after it.
* ``random``: the Microsoft Recommenders protocol, a per-user stratified random 75/25 split with a seed
  (`recsys_platform.ingest.movielens.stratified_split`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from recsys_platform.ingest.movielens import load_movielens, stratified_split

Protocol = Literal["per-user", "global", "random"]
PROTOCOLS: tuple[str, ...] = ("per-user", "global", "random")
FileFormat = Literal["recbole", "udata", "ratings_csv", "table"]

# The columns every part carries besides the file's own (dropped when a part is written back).
USER, ITEM, TIME = "_user", "_item", "_time_s"
INTERNAL = (USER, ITEM, TIME)
PER_USER_TEST_SHARE = 0.2
PER_USER_MIN_ROWS = 5
GLOBAL_TEST_SHARE = 0.1
RANDOM_TRAIN_SHARE = 0.75
RECBOLE_INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


@dataclass(frozen=True)
class TableColumns:
    """Source columns of a generic interactions table (the same names `recsys import` takes)."""

    user_id: str = "user_id"
    item_id: str = "item_id"
    timestamp: str = "timestamp"


@dataclass(frozen=True)
class InteractionsFile:
    """An interactions file as read: its rows (source columns plus `_user`, `_item`, `_time_s`) and format."""

    path: Path
    format: FileFormat
    rows: pl.DataFrame

    @property
    def n_users(self) -> int:
        """Distinct users."""
        return self.rows[USER].n_unique()

    @property
    def n_items(self) -> int:
        """Distinct items."""
        return self.rows[ITEM].n_unique()


@dataclass(frozen=True)
class Holdout:
    """One split: train rows, held-out rows of the test users, and the time the train part ends at."""

    protocol: str
    seed: int | None
    train: pl.DataFrame
    test: pl.DataFrame
    cutoff_s: float  # epoch seconds just after the newest train row (global: the cutoff itself)


def epoch_seconds(times: pl.Series) -> pl.Series:
    """Epoch seconds (float) of datetimes, ISO strings or epoch numbers (values above 1e11 taken as ms)."""
    from recsys_platform.ingest.ingestion import parse_event_times

    if times.dtype == pl.String:
        times = parse_event_times(times)
    if times.dtype == pl.Date:
        times = times.cast(pl.Datetime("us"))
    if isinstance(times.dtype, pl.Datetime):
        return (times.dt.epoch("us") / 1e6).cast(pl.Float64)
    seconds = times.cast(pl.Float64)
    biggest = seconds.abs().max()
    return seconds / 1000.0 if biggest is not None and biggest > 1e11 else seconds


def read_interactions(path: Path, columns: TableColumns | None = None) -> InteractionsFile:
    """Read MovieLens files (when `columns` is None) or a CSV/TSV/Parquet table with those columns."""
    path = Path(path)
    if columns is None:
        ratings = load_movielens(path).ratings
        fmt: FileFormat = _movielens_format(path)
        rows = ratings.with_columns(
            pl.col("user_id").alias(USER),
            pl.col("item_id").alias(ITEM),
            pl.col("timestamp").cast(pl.Float64).alias(TIME),
        )
        return InteractionsFile(path, fmt, rows)
    from recsys_platform.ingest.importer import read_table

    table = read_table(path)
    missing = [c for c in (columns.user_id, columns.item_id, columns.timestamp) if c not in table.columns]
    if missing:
        raise ValueError(f"{path} has no column {', '.join(missing)} (columns: {', '.join(table.columns)})")
    rows = table.with_columns(
        pl.col(columns.user_id).cast(pl.String).alias(USER),
        pl.col(columns.item_id).cast(pl.String).alias(ITEM),
        epoch_seconds(table[columns.timestamp]).alias(TIME),
    )
    unusable = rows.filter(pl.any_horizontal(pl.col(*INTERNAL).is_null())).height
    if unusable:
        raise ValueError(f"{path}: {unusable:,} rows have no user, item or readable time")
    return InteractionsFile(path, "table", rows)


def _movielens_format(path: Path) -> FileFormat:
    if path.is_dir():
        if any(path.glob("*.inter")):
            return "recbole"
        return "udata" if (path / "u.data").exists() else "ratings_csv"
    if path.suffix == ".inter":
        return "recbole"
    return "ratings_csv" if path.name.endswith(".csv") else "udata"


def sample_users(data: InteractionsFile, n_users: int, seed: int = 0) -> InteractionsFile:
    """The rows of a seeded sample of `n_users` users (for quick runs); all of them when there are fewer."""
    users = data.rows[USER].unique().sort()
    if n_users >= users.len():
        return data
    keep = users.sample(n_users, seed=seed)
    return InteractionsFile(data.path, data.format, data.rows.filter(pl.col(USER).is_in(keep.implode())))


def per_user_temporal(
    rows: pl.DataFrame, test_share: float = PER_USER_TEST_SHARE, min_rows: int = PER_USER_MIN_ROWS
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(train, test): each user's newest `test_share` of rows (by time, then item id) held out; users
    with fewer than `min_rows` rows stay wholly in train. A user with `min_rows` or more keeps at
    least one row on each side."""
    ranked = rows.sort(USER, TIME, ITEM, maintain_order=True).with_columns(
        _pos=pl.int_range(pl.len()).over(USER), _n=pl.len().over(USER)
    )
    n_train = (pl.col("_n") * (1.0 - test_share)).round().clip(1, pl.col("_n") - 1)
    is_train = (pl.col("_n") < min_rows) | (pl.col("_pos") < n_train)
    return ranked.filter(is_train).drop("_pos", "_n"), ranked.filter(~is_train).drop("_pos", "_n")


def split(data: InteractionsFile, protocol: str, seed: int | None = None) -> Holdout:
    """Split `data` by `protocol` (see the module docstring); `seed` only matters for ``random``."""
    rows = data.rows
    if protocol == "per-user":
        train, test = per_user_temporal(rows)
        return Holdout(protocol, None, train, test, float(train[TIME].max()) + 1.0)
    if protocol == "global":
        cutoff = float(rows[TIME].quantile(1.0 - GLOBAL_TEST_SHARE, interpolation="lower"))
        train = rows.filter(pl.col(TIME) < cutoff)
        test = rows.filter(pl.col(TIME) >= cutoff).join(train.select(USER).unique(), on=USER, how="semi")
        return Holdout(protocol, None, train, test, cutoff)
    if protocol == "random":
        if seed is None:
            raise ValueError("the random protocol needs a seed")
        train, test = random_stratified(rows, RANDOM_TRAIN_SHARE, seed)
        return Holdout(protocol, seed, train, test, float(train[TIME].max()) + 1.0)
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")


def random_stratified(rows: pl.DataFrame, train_share: float, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(train, test) by `stratified_split` on the rows' users, items and times (whole rows kept)."""
    keyed = rows.select(user_id=pl.col(USER), item_id=pl.col(ITEM), timestamp=pl.col(TIME), _row=pl.int_range(pl.len()))
    train_keys, _ = stratified_split(keyed, ratio=train_share, seed=seed)
    in_train = np.zeros(rows.height, bool)
    in_train[train_keys["_row"].to_numpy()] = True
    mask = pl.Series(in_train)
    return rows.filter(mask), rows.filter(~mask)


def write_part(data: InteractionsFile, part: pl.DataFrame, directory: Path) -> Path:
    """Write `part` (rows of `data`) under `directory` in `data`'s format, keeping the directory and file
    names `recsys import` derives the dataset name from; RecBole's .item/.user files are copied along.
    Returns the path to pass to `recsys import` (`--movielens` for MovieLens formats, else `--interactions`)."""
    source = data.path
    own = part.drop(*INTERNAL)
    if data.format == "recbole":
        inter = source if source.suffix == ".inter" else sorted(source.glob("*.inter"))[0]
        target_dir = directory / inter.parent.name
        target_dir.mkdir(parents=True, exist_ok=True)
        with (target_dir / inter.name).open("w", encoding="utf-8") as handle:
            handle.write(RECBOLE_INTER_HEADER)
            own.select("user_id", "item_id", "rating", "timestamp").write_csv(
                handle, separator="\t", include_header=False
            )
        for side in (inter.with_suffix(".item"), inter.with_suffix(".user")):
            if side.exists():
                shutil.copy(side, target_dir / side.name)
        return target_dir / inter.name if source.suffix == ".inter" else target_dir
    file = source if source.is_file() else source / ("u.data" if data.format == "udata" else "ratings.csv")
    target = directory / file.parent.name / file.name if data.format != "table" else directory / file.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if data.format == "udata":
        own.select("user_id", "item_id", "rating", "timestamp").write_csv(target, separator="\t", include_header=False)
    elif data.format == "ratings_csv":
        own.select(userId="user_id", movieId="item_id", rating="rating", timestamp="timestamp").write_csv(target)
    elif file.suffix.lower() in (".parquet", ".pq"):
        own.write_parquet(target)
    else:
        own.write_csv(target, separator="\t" if file.suffix.lower() == ".tsv" else ",")
    return target
