"""The ranker bound to the active slot, cached per version in-process and as a local model file.

Importing mlflow (and lightgbm, which imports scikit-learn and pandas) costs seconds, and every
Dagster run is a fresh process. The first load of a version goes through the MLflow registry and
saves the booster as a LightGBM text file under `cache_dir` (a registered version never changes);
every load then evaluates that file with `tree_model.TreeEnsemble` (numpy only, same predictions).
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_LOADED: dict[tuple[str, str], Any] = {}
_LOCK = threading.Lock()


def _cache_file(cache_dir: Path, model_name: str, version: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in model_name)
    return cache_dir / f"{safe}-v{version}.txt"


def load_model_version(tracking_uri: str, model_name: str, version: str, cache_dir: Path | None) -> Any:
    """The LightGBM booster of a registered version (in-process cache, then file cache, then MLflow)."""
    key = (model_name, version)
    with _LOCK:
        if key in _LOADED:
            return _LOADED[key]
        booster = None
        path = _cache_file(cache_dir, model_name, version) if cache_dir is not None else None
        if path is not None and path.exists():
            booster = _from_file(path)
            logger.info("loaded %s v%s from the local model cache %s", model_name, version, path)
        if booster is None:
            from recsys_platform.registry import load_ranker

            booster, _ = load_ranker(tracking_uri, version, model_name)
            logger.info("loaded %s v%s from the MLflow registry", model_name, version)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
                booster.save_model(str(tmp))
                os.replace(tmp, path)
                booster = _from_file(path)
        _LOADED[key] = booster
        return booster


def _from_file(path: Path) -> Any:
    """A numpy evaluator of the model file (no lightgbm import), or a lightgbm Booster if unsupported."""
    from recsys_platform.realtime.tree_model import TreeEnsemble, UnsupportedModelError

    try:
        return TreeEnsemble.from_file(path)
    except UnsupportedModelError as exc:
        import lightgbm as lgb

        logger.info("model %s needs lightgbm to predict: %s", path, exc)
        return lgb.Booster(model_file=str(path))


def clear_loaded_models() -> None:
    """Forget the in-process cache (the file cache stays)."""
    with _LOCK:
        _LOADED.clear()
