"""MovieLens data: loaders for RecBole / GroupLens files, a reproducible fetch, and the stratified split
of the Microsoft Recommenders protocol (the quality benchmark runs the product on these)."""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

logger = logging.getLogger(__name__)

RECBOLE_VERSION = "1.2.1"
RECBOLE_DATASET_PREFIX = "recbole/dataset_example/"
RATING_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
_RECBOLE_TYPES = {"token": pl.String, "float": pl.Float64, "token_seq": pl.String, "float_seq": pl.String}


@dataclass(frozen=True)
class MovieLensData:
    """Ratings [user_id, item_id, rating, timestamp] plus optional item and user side tables."""

    ratings: pl.DataFrame
    items: pl.DataFrame | None = None
    users: pl.DataFrame | None = None


def read_recbole_atomic(path: Path) -> pl.DataFrame:
    """Read one RecBole atomic file (tab-separated, header ``name:type``) with the types stripped."""
    with path.open(encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split("\t")
    names, types = zip(*(field.split(":", 1) for field in header), strict=True)
    schema = {name: _RECBOLE_TYPES.get(kind, pl.String) for name, kind in zip(names, types, strict=True)}
    frame = pl.read_csv(
        path,
        separator="\t",
        has_header=False,
        skip_rows=1,
        new_columns=list(names),
        schema_overrides=schema,
        quote_char=None,
        encoding="utf8-lossy",
    )
    seq_cols = [n for n, t in zip(names, types, strict=True) if t == "token_seq" and n != "movie_title"]
    return frame.with_columns(pl.col(c).str.split(" ") for c in seq_cols)


def _normalise_ratings(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(
        pl.col("user_id").cast(pl.String),
        pl.col("item_id").cast(pl.String),
        pl.col("rating").cast(pl.Float64),
        pl.col("timestamp").cast(pl.Float64).cast(pl.Int64),
    )


def load_recbole(directory: Path, name: str | None = None) -> MovieLensData:
    """Load ``<name>.inter`` (+ ``.item`` with genres list and year, + ``.user``) from a RecBole directory."""
    directory = Path(directory)
    if name is None:
        inter = sorted(directory.glob("*.inter"))
        if not inter:
            raise FileNotFoundError(f"no RecBole .inter file in {directory}")
        name = inter[0].stem
    ratings = _normalise_ratings(read_recbole_atomic(directory / f"{name}.inter"))
    items = users = None
    if (directory / f"{name}.item").exists():
        raw = read_recbole_atomic(directory / f"{name}.item")
        items = raw.rename({"class": "genres"} if "class" in raw.columns else {}).with_columns(
            pl.col("release_year").cast(pl.Int32, strict=False) if "release_year" in raw.columns else []
        )
    if (directory / f"{name}.user").exists():
        users = read_recbole_atomic(directory / f"{name}.user")
        if "age" in users.columns:
            users = users.with_columns(pl.col("age").cast(pl.Int32, strict=False))
    return MovieLensData(ratings=ratings, items=items, users=users)


def load_grouplens_udata(path: Path) -> pl.DataFrame:
    """Load GroupLens ``u.data`` (tab-separated user item rating timestamp, no header)."""
    frame = pl.read_csv(path, separator="\t", has_header=False, new_columns=list(RATING_COLUMNS))
    return _normalise_ratings(frame)


def load_ratings_csv(path: Path) -> pl.DataFrame:
    """Load GroupLens ``ratings.csv`` (userId,movieId,rating,timestamp with header)."""
    frame = pl.read_csv(path).rename({"userId": "user_id", "movieId": "item_id"})
    return _normalise_ratings(frame)


def load_movielens(path: Path) -> MovieLensData:
    """Load MovieLens from a RecBole directory, a ``u.data`` or ``ratings.csv`` file, or their directory."""
    path = Path(path)
    if path.is_dir():
        if any(path.glob("*.inter")):
            return load_recbole(path)
        for candidate in ("u.data", "ratings.csv"):
            if (path / candidate).exists():
                return load_movielens(path / candidate)
        raise FileNotFoundError(f"no MovieLens files (*.inter, u.data, ratings.csv) in {path}")
    if path.suffix == ".inter":
        return load_recbole(path.parent, path.stem)
    if path.name.endswith(".csv"):
        return MovieLensData(ratings=load_ratings_csv(path))
    return MovieLensData(ratings=load_grouplens_udata(path))


def extract_dataset_from_wheel(wheel: Path, cache_dir: Path, dataset: str = "ml-100k") -> Path:
    """Extract ``recbole/dataset_example/<dataset>/*`` from a RecBole wheel into ``cache_dir/<dataset>``."""
    prefix = f"{RECBOLE_DATASET_PREFIX}{dataset}/"
    target = Path(cache_dir) / dataset
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist() if m.startswith(prefix) and not m.endswith("/")]
        if not members:
            raise FileNotFoundError(f"{wheel.name} has no {prefix}* files")
        staging = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{dataset}-"))
        try:
            for member in members:
                out = staging / Path(member).name
                with archive.open(member) as src, out.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)  # atomic: a half-extracted directory never looks complete
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("extracted %d files of %s into %s", len(members), dataset, target)
    return target


def fetch_recbole_ml100k(cache_dir: Path) -> Path:
    """Return a directory with RecBole's ml-100k atomic files, extracting them from the recbole wheel once."""
    cache_dir = Path(cache_dir)
    target = cache_dir / "ml-100k"
    if (target / "ml-100k.inter").exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        # pip resolves the wheel through the configured index and checks its hash; nothing is installed.
        cmd = [sys.executable, "-m", "pip", "download", f"recbole=={RECBOLE_VERSION}", "--no-deps",
               "--only-binary=:all:", "--quiet", "-d", tmp]  # fmt: skip
        subprocess.run(cmd, check=True)
        wheels = sorted(Path(tmp).glob("recbole-*.whl"))
        if not wheels:
            raise FileNotFoundError(f"pip download produced no recbole wheel in {tmp}")
        logger.info("downloaded %s (sha256 %s)", wheels[0].name, _sha256(wheels[0]))
        return extract_dataset_from_wheel(wheels[0], cache_dir, "ml-100k")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stratified_split(ratings: pl.DataFrame, ratio: float = 0.75, seed: int = 42) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per-user random split: each user's rows shuffled with ``seed``, the first round(ratio*n) go to train.

    Same semantics as Recommenders' ``python_stratified_split``; deterministic for a seed whatever
    the input row order.
    """
    ordered = ratings.sort("user_id", "item_id", "timestamp")
    keys = np.random.default_rng(seed).random(ordered.height)
    ranked = ordered.with_columns(_key=pl.Series(keys)).with_columns(
        _pos=pl.col("_key").rank("ordinal").over("user_id"),
        _cut=(pl.len().over("user_id") * ratio).round(),
    )
    is_train = pl.col("_pos") <= pl.col("_cut")
    drop = ["_key", "_pos", "_cut"]
    return ranked.filter(is_train).drop(drop), ranked.filter(~is_train).drop(drop)
