"""Implicit-feedback matrix factorisation (iALS, Hu, Koren & Volinsky 2008) on numpy.

Every observed (user, item) pair is a positive with confidence ``1 + alpha``; every other pair a
negative with confidence 1. Alternating exact least-squares solves, one batched ``np.linalg.solve``
per side and sweep, so a MovieLens-100k sized problem (1k x 1.7k, 64 factors) fits in seconds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys_platform.collaborative import InteractionMatrix, _MatrixRecommender, build_interaction_matrix

logger = logging.getLogger(__name__)


@dataclass
class IalsFactors:
    """User and item factor matrices of a fitted iALS model."""

    user_factors: np.ndarray
    item_factors: np.ndarray

    def scores(self) -> np.ndarray:
        """Dense user x item score matrix (float32)."""
        return (self.user_factors @ self.item_factors.T).astype(np.float32)


def _solve_side(matrix: sp.csr_matrix, other: np.ndarray, alpha: float, reg: float) -> np.ndarray:
    """Least-squares factors for every row of ``matrix`` given the other side's fixed factors."""
    n_rows, n_factors = matrix.shape[0], other.shape[1]
    base = other.T @ other + reg * np.eye(n_factors)
    lhs = np.broadcast_to(base, (n_rows, n_factors, n_factors)).copy()
    for row in range(n_rows):
        cols = matrix.indices[matrix.indptr[row] : matrix.indptr[row + 1]]
        if len(cols):
            sub = other[cols]
            lhs[row] += alpha * (sub.T @ sub)
    rhs = (1.0 + alpha) * np.asarray(matrix @ other)
    return np.linalg.solve(lhs, rhs[..., None])[..., 0]


def fit_ials_matrix(
    matrix: sp.csr_matrix,
    factors: int = 64,
    alpha: float = 5.0,
    reg: float = 50.0,
    iterations: int = 8,
    seed: int = 0,
) -> IalsFactors:
    """Fit iALS on a binary user x item CSR matrix; deterministic for a seed."""
    binary = (matrix > 0).astype(np.float64).tocsr()
    rng = np.random.default_rng(seed)
    users = rng.normal(0.0, 0.01, (binary.shape[0], factors))
    items = rng.normal(0.0, 0.01, (binary.shape[1], factors))
    transposed = binary.T.tocsr()
    for _ in range(iterations):
        users = _solve_side(binary, items, alpha, reg)
        items = _solve_side(transposed, users, alpha, reg)
    logger.info("iALS fitted: %d x %d, %d factors, alpha=%g, reg=%g", *binary.shape, factors, alpha, reg)
    return IalsFactors(users.astype(np.float32), items.astype(np.float32))


class IalsModel(_MatrixRecommender):
    """iALS recommender: scores are user-factor . item-factor dot products."""

    def __init__(self, data: InteractionMatrix, factors: IalsFactors):
        self.data = data
        self.factors = factors

    def _score_rows(self, rows: np.ndarray) -> np.ndarray:
        return self.factors.user_factors[rows] @ self.factors.item_factors.T


def fit_ials(
    interactions: pl.DataFrame,
    factors: int = 64,
    alpha: float = 5.0,
    reg: float = 50.0,
    iterations: int = 8,
    seed: int = 0,
) -> IalsModel:
    """Fit iALS on (user_id, item_id) rows; every pair is one implicit positive."""
    data = build_interaction_matrix(interactions, binary=True)
    return IalsModel(data, fit_ials_matrix(data.matrix, factors, alpha, reg, iterations, seed))
