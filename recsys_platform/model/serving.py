"""The champion's fitted recommender for the batch and near-real-time paths: the saved fit when it matches."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

import polars as pl

from recsys_platform.model import registry
from recsys_platform.model.params import ModelParams
from recsys_platform.model.recommender import Recommender, fit_serving
from recsys_platform.model.state import load_state, state_url

logger = logging.getLogger(__name__)


def serving_recommender(
    interactions: pl.DataFrame | Callable[[], pl.DataFrame] | None,
    items: pl.DataFrame,
    users: pl.DataFrame,
    cutoff: datetime,
    version: str,
    tracking_uri: str,
    model_name: str,
    lake_url: str,
    endpoint_url: str | None = None,
    lightgbm: bool = False,
    signals: pl.DataFrame | None = None,
) -> tuple[Recommender, str]:
    """(recommender, version) of model `version`: the fit the last `recommendations` run saved when it was for
    this version, else the version's scorer and params with every source fitted here on `interactions`.
    `lightgbm`: a saved ranker predicts with LightGBM itself (batch scoring) instead of the numpy evaluator;
    `signals`: the session signals a fit here reads (a saved fit holds none: callers pass theirs to `rescore`)."""
    saved = load_state(state_url(lake_url), endpoint_url, lightgbm)
    if saved is not None and saved[0] == version:
        logger.info("using the saved serving fit of model %s", version)
        return saved[1], version
    if interactions is None:
        raise LookupError(f"no saved serving fit for model {version} and no interactions to fit one")
    if callable(interactions):
        interactions = interactions()
    scorer, params, version = registry.load_scorer(tracking_uri, version, model_name)
    logger.info("fitting the sources of model %s (the saved fit is for %s)", version, saved[0] if saved else "none")
    return fit_serving(interactions, items, users, cutoff, ModelParams.from_dict(params), scorer, signals), version
