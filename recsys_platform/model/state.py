"""The fitted serving state (sources, item facts, params, scorer) saved beside the lake for the refresh path.

`recommendations` fits every source on all the history for the champion; the near-real-time refresh
re-scores a few users every few seconds and must not refit them. So the fit is saved once per run
(without the per-user history, which the refresh rebuilds from the touched users' own events) and
loaded by each refresh. A pickle: it is written and read only by this project's own code.
"""

from __future__ import annotations

import logging
import os
import pickle
import uuid
from dataclasses import replace
from pathlib import Path

from recsys_platform.model.recommender import Recommender

logger = logging.getLogger(__name__)

STATE_FILE = "serving_state.pkl"


def state_url(lake_url: str) -> str:
    """Where the serving state of a lake lives."""
    return f"{lake_url.rstrip('/')}/{STATE_FILE}"


def _remote(url: str, endpoint_url: str | None):
    from upath import UPath

    from recsys_platform.deploy_profile import fsspec_s3_options

    return UPath(url, **fsspec_s3_options(endpoint_url))


def save_state(rec: Recommender, version: str, url: str, endpoint_url: str | None = None) -> None:
    """Write `rec` (minus its per-user history) for model `version` to `url`, atomically."""
    scorer = rec.scorer
    stored = ("lightgbm", scorer.model_to_string()) if hasattr(scorer, "model_to_string") else ("object", scorer)
    empty = rec.history.take(rec.history.user < 0)
    empty.signals = None  # everyone's searches and readings: a refresh reads its own users' (`rescore`)
    light = replace(rec, history=empty, scorer=None)
    payload = pickle.dumps(
        {"version": version, "recommender": light, "scorer": stored}, protocol=pickle.HIGHEST_PROTOCOL
    )
    if "://" in url:
        _remote(url, endpoint_url).write_bytes(payload)  # an object store put is atomic
    else:
        path = Path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(payload)
        os.replace(tmp, path)
    logger.info("saved the serving state of model %s (%.1f MB) to %s", version, len(payload) / 2**20, url)


def load_state(url: str, endpoint_url: str | None = None, lightgbm: bool = False) -> tuple[str, Recommender] | None:
    """(model version, recommender without per-user history) saved at `url`, or None when there is none.

    A ranker predicts with the numpy evaluator (no lightgbm or lleaves import, so refresh runs start fast), or,
    with `lightgbm` (where many rows are scored), compiled (`model.compiled`, else a Booster). Batch blocks of
    160,596 rows: numpy 5.1 s, Booster 1.17 s, compiled 0.19 s; a fresh process scoring 50 users: numpy 0.12 s to
    start + 0.18 s, compiled 0.58 s + 0.01 s (`benchmarks/ranker_predict.py`)."""
    if "://" in url:
        path = _remote(url, endpoint_url)
        if not path.exists():
            return None
        data = path.read_bytes()
    else:
        if not Path(url).exists():
            return None
        data = Path(url).read_bytes()
    payload = pickle.loads(data)  # noqa: S301 - written by save_state of this project
    kind, stored = payload["scorer"]
    scorer = _tree_model(stored, lightgbm) if kind == "lightgbm" else stored
    return payload["version"], payload["recommender"].with_scorer(scorer)


def _tree_model(text: str, native: bool = False):
    """A numpy evaluator of a LightGBM model text (no lightgbm import: refresh runs start fast), or, when `native`
    (many rows) or when the evaluator cannot represent the model, the model compiled for this host
    (`model.compiled`), else a Booster."""
    from recsys_platform.realtime.tree_model import TreeEnsemble, UnsupportedModelError

    if native:
        from recsys_platform.model.compiled import compile_ranker

        compiled = compile_ranker(text)
        if compiled is not None:
            return compiled
    else:
        try:
            return TreeEnsemble.from_text(text)
        except UnsupportedModelError as exc:
            logger.info("the ranker needs lightgbm to predict: %s", exc)
    import lightgbm as lgb

    return lgb.Booster(model_str=text)
