"""The compiled ranker (lleaves): the same scores as Booster.predict, cached per host, logged beside the model in
MLflow, and what the registry and the batch serving state hand out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys_platform.model import compiled, registry
from recsys_platform.model.candidates import FEATURES
from recsys_platform.model.ranker import train_ranker


@pytest.fixture(scope="module")
def booster():
    """A LambdaRank model on feature rows with missing values, trained by the product's trainer."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6000, len(FEATURES))).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan
    y = ((np.nan_to_num(x[:, 0]) + 0.5 * np.nan_to_num(x[:, 5]) + rng.normal(0, 0.5, len(x))) > 0.8).astype(int)
    model, facts = train_ranker(x, y, np.repeat(np.arange(300), 20), seed=1)
    assert facts["best_iteration"] > 5
    return model


def _rows(n: int, seed: int = 9) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURES)))
    x[rng.random(x.shape) < 0.15] = np.nan
    x[rng.random(x.shape) < 0.02] = -np.inf  # a source with nothing to say
    return x.astype(np.float32)


def test_the_compiled_ranker_scores_like_lightgbm_and_is_cached(booster, tmp_path: Path) -> None:
    text = booster.model_to_string()
    model = compiled.compile_ranker(text, tmp_path)
    assert isinstance(model, compiled.CompiledRanker) and model.model_to_string() == text
    x = _rows(5000)
    np.testing.assert_allclose(model.predict(x), booster.predict(x.astype(np.float64)), rtol=0, atol=1e-10)
    assert model.predict(x[:0]).shape == (0,)
    # 5000 rows are scored in slices of PREDICT_ROWS (the last one partial): the same scores from the column-major
    # blocks `candidate_block` builds, and from one call on two threads
    assert len(x) > 2 * compiled.PREDICT_ROWS and len(x) % compiled.PREDICT_ROWS
    np.testing.assert_array_equal(model.predict(np.asfortranarray(x)), model.predict(x))
    two = compiled.CompiledRanker(model.model, text, model.object_file, threads=2)
    np.testing.assert_array_equal(two.predict(x), model.predict(x))
    key = compiled.cache_key(text)
    objects = list(tmp_path.glob("*.o"))
    assert [p.name for p in objects] == [f"{key}.o"]  # one object file per model, CPU and lleaves version
    stamp = objects[0].stat().st_mtime_ns
    again = compiled.compile_ranker(text, tmp_path)  # loaded from the cache, not compiled again
    assert objects[0].stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again.predict(x), model.predict(x))
    assert compiled.cache_key(text + " ") != key


def test_without_lleaves_the_booster_is_kept(booster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compiled, "cache_key", lambda text: None)  # what an ImportError of llvmlite gives
    assert compiled.compile_ranker(booster.model_to_string(), tmp_path) is None
    assert registry.compiled_scorer(booster) is booster


def test_a_registered_ranker_is_served_compiled_from_its_logged_object(booster, tmp_path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setattr(compiled, "default_cache_dir", lambda: cache)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    example = pl.DataFrame(_rows(20), schema=list(FEATURES), orient="row")
    ref = registry.log_ranker(tracking, str(tmp_path / "art"), "compiled-test", booster, example, {}, {}, {})
    key = compiled.cache_key(booster.model_to_string())
    logged = list((tmp_path / "art").rglob(f"{compiled.ARTIFACT_DIR}/{key}.o"))
    assert len(logged) == 1  # beside the model in MLflow
    for p in cache.glob("*"):  # a clean machine of the same kind: the object comes from MLflow
        p.unlink()
    scorer, _, version = registry.load_scorer(tracking, ref.version)
    assert version == ref.version and isinstance(scorer, compiled.CompiledRanker)
    assert (cache / f"{key}.o").read_bytes() == logged[0].read_bytes()
    x = _rows(300, seed=4)
    np.testing.assert_allclose(scorer.predict(x), booster.predict(x.astype(np.float64)), rtol=0, atol=1e-10)
