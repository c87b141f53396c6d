"""Compiled ranker inference: a LightGBM ranker compiled to native code with lleaves (LLVM).

`lightgbm.Booster.predict` walks every tree for every row in a generic interpreter; lleaves turns
the model's trees into one native function (the same decisions: numerical thresholds, missing
values, categorical bitsets). Measured by `benchmarks/ranker_predict.py` (parity with
`Booster.predict` to 1e-12 and the speed of each, single thread); the figures are in its docstring.

An object file is specific to the CPU it was compiled for (lleaves targets the host), so it is
cached under a key of the model text, the host CPU and the lleaves version: in a local cache
directory, and beside the model in MLflow (`compiled/<key>.o`, logged by `registry.log_ranker`) for
processes on the same kind of machine. A miss compiles (about 1 s for 100 trees). When lleaves is
not installed, or cannot compile a model, callers keep the Booster (`compile_ranker` returns None).
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

ARTIFACT_DIR = "compiled"


def default_cache_dir() -> Path:
    """Where compiled rankers are cached for this user (one object file per model, CPU and lleaves version): under
    the user's own cache folder, never a shared temporary one, since the object files are loaded as native code."""
    return Path.home() / ".cache" / "recsys-platform" / "compiled-rankers"


def cache_key(model_text: str) -> str | None:
    """The cache key of a model compiled on this host, or None when lleaves is not installed."""
    try:
        from importlib.metadata import version

        import llvmlite.binding as llvm
    except ImportError:
        return None
    host = llvm.get_host_cpu_name()
    digest = hashlib.sha256(f"{model_text}\0{host}\0{version('lleaves')}\0{version('llvmlite')}".encode())
    return digest.hexdigest()[:24]


PREDICT_ROWS = 2048


@dataclass
class CompiledRanker:
    """A compiled LightGBM model with the scorer interface (`predict(features) -> scores`) and the model text
    (`model_to_string`), so a serving state saves and reloads it like a Booster; `object_file` is its cached
    native code."""

    model: Any  # lleaves.Model
    text: str
    object_file: Path
    threads: int = 1

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Raw scores of feature rows in `candidates.FEATURES` order (float64), as `Booster.predict` gives.

        The compiled code reads float64 rows: on one thread they are converted and scored PREDICT_ROWS at a time,
        so each slice is read back from cache (a 1000-user block's 163k x 56 features as one float64 copy was
        73 MB, and the conversion plus predict took 100 ms against 83 ms in slices)."""
        if not len(features):
            return np.zeros(0)
        if self.threads != 1:
            x = np.ascontiguousarray(features, dtype=np.float64)
            return np.asarray(self.model.predict(x, n_jobs=self.threads), dtype=np.float64)
        out = np.empty(len(features))
        for start in range(0, len(features), PREDICT_ROWS):
            part = np.ascontiguousarray(features[start : start + PREDICT_ROWS], dtype=np.float64)
            out[start : start + len(part)] = self.model.predict(part, n_jobs=1)
        return out

    def model_to_string(self) -> str:
        """The LightGBM model text it was compiled from."""
        return self.text


def compile_ranker(
    model_text: str,
    cache_dir: Path | None = None,
    threads: int = 1,
    fetch: Callable[[str, Path], None] | None = None,
) -> CompiledRanker | None:
    """The model compiled for this host: from the cache when it holds the object file; else `fetch(name, path)`
    may put it there (the registry downloads it from MLflow); else compiled and cached atomically. None when
    lleaves is missing or fails on the model."""
    key = cache_key(model_text)
    if key is None:
        return None
    import lleaves

    cache = cache_dir or default_cache_dir()
    try:
        cache.mkdir(mode=0o700, parents=True, exist_ok=True)
        text_file, obj = cache / f"{key}.txt", cache / f"{key}.o"
        if not text_file.exists():
            _write_atomically(text_file, model_text.encode())
        if not obj.exists() and fetch is not None:
            _fetch(fetch, obj)
        model = lleaves.Model(model_file=str(text_file))
        if obj.exists():
            model.compile(cache=str(obj))
        else:  # compile into a private file, then publish it whole: a concurrent reader never sees half of it
            tmp = cache / f".{key}.{uuid.uuid4().hex}.o"
            model.compile(cache=str(tmp))
            os.replace(tmp, obj)
        return CompiledRanker(model, model_text, obj, threads)
    except Exception as exc:  # noqa: BLE001 - any compiler failure falls back to the Booster
        logger.warning("could not compile the ranker with lleaves (%s): predicting with LightGBM", exc)
        return None


def _fetch(fetch: Callable[[str, Path], None], obj: Path) -> None:
    """Let `fetch` deliver the object file into a private name, then publish it whole; a miss is not an error."""
    tmp = obj.with_name(f".{obj.stem}.{uuid.uuid4().hex}.o")
    try:
        fetch(obj.name, tmp)
        if tmp.exists():
            os.replace(tmp, obj)
    except Exception as exc:  # noqa: BLE001 - another CPU's object, or none logged: compile here instead
        logger.debug("no compiled ranker %s to fetch: %s", obj.name, exc)
    finally:
        tmp.unlink(missing_ok=True)


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
