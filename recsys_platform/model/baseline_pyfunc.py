"""The MLflow pyfunc a baseline model version is: candidate feature rows in, one feature column out.

Imported only when a baseline version is logged or loaded (it imports mlflow)."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd


class ColumnScoreModel(mlflow.pyfunc.PythonModel):
    """Scores each candidate row by one of its features (missing values last)."""

    def __init__(self, feature: str) -> None:
        self.feature = feature

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:  # noqa: ARG002
        """The feature column as float64, NaN as -inf."""
        col = np.asarray(model_input[self.feature], dtype=np.float64)
        return np.where(np.isfinite(col), col, -np.inf)
