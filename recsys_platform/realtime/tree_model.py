"""Predict with a LightGBM text model in numpy alone, so refresh runs need not import lightgbm.

`import lightgbm` pulls in scikit-learn and pandas (seconds in a fresh run process); a refresh
scores a few hundred rows. This reads the model file LightGBM writes (`Booster.save_model`) and
evaluates its trees with the same decision rules as LightGBM's `Tree::Decision` (numerical
thresholds with missing-value handling, categorical bitsets). Models it cannot represent (linear
trees, several trees per iteration) raise `UnsupportedModelError`; callers then use lightgbm.
Parity with `lightgbm.Booster.predict` is tested.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

_CATEGORICAL = 1
_DEFAULT_LEFT = 2
_MISSING_ZERO = 1
_MISSING_NAN = 2
_ZERO_THRESHOLD = 1e-35


class UnsupportedModelError(ValueError):
    """The model uses a LightGBM feature this evaluator does not implement."""


@dataclass
class _Tree:
    split_feature: np.ndarray
    threshold: np.ndarray
    decision_type: np.ndarray
    left: np.ndarray
    right: np.ndarray
    leaf_value: np.ndarray
    cat_boundaries: np.ndarray
    cat_threshold: np.ndarray


def _array(block: dict[str, str], key: str, dtype: type) -> np.ndarray:
    raw = block.get(key, "").strip()
    return np.array(raw.split(), dtype=dtype) if raw else np.zeros(0, dtype=dtype)


class TreeEnsemble:
    """The trees of a LightGBM model; `predict` returns the raw score (sum of leaf values)."""

    def __init__(self, trees: list[_Tree], feature_names: list[str]) -> None:
        self.trees = trees
        self.feature_names = feature_names

    @classmethod
    def from_text(cls, text: str) -> TreeEnsemble:
        """Parse LightGBM's model text format."""
        header, _, body = text.partition("\nTree=")
        head = dict(line.split("=", 1) for line in header.splitlines() if "=" in line)
        if int(head.get("num_tree_per_iteration", "1")) != 1:
            raise UnsupportedModelError("only one tree per iteration (regression/ranking) is supported")
        trees: list[_Tree] = []
        for chunk in ("Tree=" + body).split("\nTree="):
            chunk = chunk.split("end of trees", 1)[0]
            block = dict(line.split("=", 1) for line in chunk.splitlines() if "=" in line)
            if not block or "num_leaves" not in block:
                continue
            if block.get("is_linear", "0").strip() not in ("0", ""):
                raise UnsupportedModelError("linear trees are not supported")
            num_leaves = int(block["num_leaves"])
            if num_leaves == 1:
                empty = np.zeros(0, np.int64)
                leaf = _array(block, "leaf_value", np.float64)
                trees.append(
                    _Tree(empty, empty.astype(np.float64), empty, empty, empty, leaf, empty, empty.astype(np.uint32))
                )
                continue
            trees.append(
                _Tree(
                    split_feature=_array(block, "split_feature", np.int64),
                    threshold=_array(block, "threshold", np.float64),
                    decision_type=_array(block, "decision_type", np.int64),
                    left=_array(block, "left_child", np.int64),
                    right=_array(block, "right_child", np.int64),
                    leaf_value=_array(block, "leaf_value", np.float64),
                    cat_boundaries=_array(block, "cat_boundaries", np.int64),
                    cat_threshold=_array(block, "cat_threshold", np.uint64).astype(np.uint32),
                )
            )
        return cls(trees, head.get("feature_names", "").split())

    @classmethod
    def from_file(cls, path: str | Path) -> TreeEnsemble:
        """Load a model file written by `Booster.save_model`."""
        return cls.from_text(Path(path).read_text())

    def predict(self, data: np.ndarray) -> np.ndarray:
        """Raw scores for the rows of `data` (features in the model's column order)."""
        x = np.asarray(data, dtype=np.float64)
        out = np.zeros(x.shape[0], dtype=np.float64)
        rows = np.arange(x.shape[0])
        for tree in self.trees:
            if tree.split_feature.size == 0:
                out += tree.leaf_value[0]
                continue
            node = np.zeros(x.shape[0], dtype=np.int64)
            active = node >= 0
            while active.any():
                idx = rows[active]
                n = node[idx]
                fval = x[idx, tree.split_feature[n]]
                go_left = self._decide(tree, n, fval)
                node[idx] = np.where(go_left, tree.left[n], tree.right[n])
                active = node >= 0
            out += tree.leaf_value[~node]
        return out

    @staticmethod
    def _decide(tree: _Tree, n: np.ndarray, fval: np.ndarray) -> np.ndarray:
        dtype = tree.decision_type[n]
        categorical = (dtype & _CATEGORICAL) != 0
        missing = (dtype >> 2) & 3
        default_left = (dtype & _DEFAULT_LEFT) != 0
        isnan = np.isnan(fval)
        # Numerical: NaN counts as 0 unless the split routes NaN; missing values take the default side.
        num_val = np.where(isnan & (missing != _MISSING_NAN), 0.0, fval)
        is_missing = ((missing == _MISSING_ZERO) & (np.abs(num_val) <= _ZERO_THRESHOLD)) | (
            (missing == _MISSING_NAN) & np.isnan(num_val)
        )
        with np.errstate(invalid="ignore"):
            numerical = np.where(is_missing, default_left, num_val <= tree.threshold[n])
        if not categorical.any():
            return numerical
        # Categorical: left when int(value) is in the node's bitset; NaN and negative categories go right.
        cat_idx = np.where(categorical, tree.threshold[n], 0).astype(np.int64)
        ival = np.trunc(np.nan_to_num(fval, nan=-1.0, posinf=2.0**31, neginf=-1.0)).astype(np.int64)  # C++ int cast
        start = (
            tree.cat_boundaries[np.clip(cat_idx, 0, len(tree.cat_boundaries) - 2)] if tree.cat_boundaries.size else 0
        )
        stop = (
            tree.cat_boundaries[np.clip(cat_idx + 1, 1, len(tree.cat_boundaries) - 1)]
            if tree.cat_boundaries.size
            else 0
        )
        word = ival // 32
        valid = (ival >= 0) & (word < (stop - start))
        pos = np.where(valid, start + word, 0)
        bits = tree.cat_threshold[pos] if tree.cat_threshold.size else np.zeros_like(pos, dtype=np.uint32)
        in_set = valid & (((bits >> (ival % 32).astype(np.uint32)) & 1) == 1)
        return np.where(categorical, in_set, numerical)
