"""The ranker's features for given (user, item) pairs, vectorized over integer indices.

`ranking.PointInTime.ranker_frame` generates ~375 candidates per user and joins every feature
table onto them with string keys; at a million users that is hours. The batch scorer only needs
the features of the pairs it re-ranks (the head of the first-stage list), so this module
precomputes the same tables once per run as numpy arrays and sparse matrices and gathers them per
pair. Definitions are those of `candidates.SOURCE_FUNCTIONS` (the global sources are computed by
those very functions) and of `ranker_frame`; `tests/test_batch_scoring.py` checks that the matrix
equals `ranking._matrix(ranker_frame(...))` for every candidate pair.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys_platform import features as feats
from recsys_platform.candidates import (
    CONTENT_FACETS,
    MISSING_RANK,
    SOURCES,
    CandidateContext,
    source_new,
    source_pop,
    source_segment_pop,
    source_time_of_day_pop,
)
from recsys_platform.collaborative import top_k_from_scores
from recsys_platform.first_stage import Catalog, FirstStage, exact_top_k, index_of, pair_matrix
from recsys_platform.ranking import FEATURE_COLUMNS, ITEM_COLUMNS, USER_COLUMNS

logger = logging.getLogger(__name__)

FACETS = dict(CONTENT_FACETS)  # facet -> weight, as `candidates.source_content` sums them
UI_COLUMNS = ("ui_plays", "ui_completed", "ui_favorited", "ui_bounced", "ui_days_since")
UI_FILL = {"ui_plays": 0.0, "ui_completed": 0.0, "ui_favorited": 0.0, "ui_bounced": 0.0, "ui_days_since": 999.0}


def _entries(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n_items: int) -> tuple[np.ndarray, ...]:
    """Ranked entries of top-k lists (rows x k, best first) as (sorted keys row*n_items+col, rank, score)."""
    rank = np.broadcast_to(np.arange(1, cols.shape[1] + 1, dtype=np.int32), cols.shape)
    keep = np.isfinite(vals)
    keys = rows[:, None].astype(np.int64) * n_items + cols
    keys, rank, score = keys[keep], rank[keep], vals[keep].astype(np.float64)
    order = np.argsort(keys)
    return keys[order], rank[order], score[order]


def _find(keys: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position, found) of each query in the sorted `keys` (position is only meaningful where found)."""
    if not len(keys):
        return np.zeros(len(query), np.int64), np.zeros(len(query), bool)
    at = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return at, keys[at] == query


def _codes(values: pl.Series, vocabulary: list) -> np.ndarray:
    return index_of(values, pl.Series(vocabulary, dtype=values.dtype))


@dataclass
class ChunkSources:
    """Per-user sources of one chunk: for each, sorted keys (row in chunk * n_items + item), rank, score."""

    entries: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
    n_items: int

    def lookup(self, name: str, pr: np.ndarray, pi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rank, score) of the pairs in source `name`; MISSING_RANK and 0 where it does not rank them."""
        keys, rank, score = self.entries[name]
        at, hit = _find(keys, pr.astype(np.int64) * self.n_items + pi)
        if not len(keys):
            return np.full(len(at), MISSING_RANK, np.int32), np.zeros(len(at))
        return np.where(hit, rank[at], MISSING_RANK), np.where(hit, score[at], 0.0)


class PairFeatures:
    """Every ranker feature table as of one cutoff, coded on a `Catalog`."""

    def __init__(
        self,
        catalog: Catalog,
        history: pl.DataFrame,
        items: pl.DataFrame,
        users: pl.DataFrame,
        item_features: pl.DataFrame,
        cutoff: datetime,
        n_candidates: int,
        repeat_cap: int,
    ) -> None:
        self.catalog, self.n = catalog, n_candidates
        self.sizes = {"new": max(5, n_candidates // 6), "history": max(5, n_candidates // 3)}
        nu, ni = catalog.n_users, catalog.n_items
        # items, in catalogue order
        it = pl.DataFrame({"item_id": catalog.item_ids}).join(item_features, on="item_id", how="left")
        self.item_matrix = it.select([pl.col(c).cast(pl.Float32) for c in ITEM_COLUMNS]).to_numpy()
        self.item_level = it["item_level"].cast(pl.Float64).to_numpy()
        self.facet_vocab = {f: it[f].drop_nulls().unique().sort().to_list() for f in FACETS}
        self.item_facet = {f: _codes(it[f], v) for f, v in self.facet_vocab.items()}
        languages = sorted(set(it["language"].drop_nulls()) | set(users["language"].drop_nulls()))
        self.item_language = _codes(it["language"], languages)
        # users, in user-table order
        uf = feats.user_features(history, users, items, cutoff)
        ut = pl.DataFrame({"user_id": catalog.user_ids}).join(uf, on="user_id", how="left")
        self.user_matrix = ut.select([pl.col(c).cast(pl.Float32) for c in USER_COLUMNS]).to_numpy()
        self.user_level = ut["user_level_played"].cast(pl.Float64).to_numpy()
        self.user_language = _codes(ut["language"], languages)
        # global candidate sources, by the functions `generate_candidates` uses
        ctx = CandidateContext(cutoff=cutoff, history=history, items=items, users=users, ease=None, affinities={})
        anyone = pl.DataFrame({"user_id": ["\x00"]})
        self.global_sources = {
            name: self._item_table(fn(ctx, anyone, self.sizes.get(name, n_candidates)), name)
            for name, fn in (("pop", source_pop), ("new", source_new))
        }
        seg = feats.user_segments(users).rename({"segment": "group"})
        tod = users.select("user_id", group=pl.col("preferred_daypart"))
        self.group_sources = {
            "seg_pop": self._group_table(ctx, seg, source_segment_pop, "seg_pop"),
            "tod_pop": self._group_table(ctx, tod, source_time_of_day_pop, "tod_pop"),
        }
        # per-user tables as sparse users x codes / users x items matrices
        aff = feats.user_item_affinities(history, items, cutoff)
        self.affinity = {}
        for facet, vocab in self.facet_vocab.items():
            u, c, rest = self._coded(aff[facet], facet, vocab)
            self.affinity[facet] = pair_matrix(u, c, rest[f"aff_{facet}"].to_numpy(), (nu, len(vocab) + 1))
        pos = history.filter(pl.col("weight") > 0).group_by("user_id", "item_id").agg(score=pl.col("weight").sum())
        hu, hi, rest = catalog.coded_pairs(pos)
        self.history = pair_matrix(hu, hi, rest["score"].cast(pl.Float64).to_numpy(), (nu, ni))
        self.released_cols = np.flatnonzero(catalog.released)
        ui = feats.user_item_history(history, cutoff, repeat_cap)
        uu, ui_i, rest = catalog.coded_pairs(ui)
        keys = uu.astype(np.int64) * ni + ui_i
        order = np.argsort(keys, kind="stable")
        self.ui_keys = keys[order]
        self.ui = {c: rest[c].cast(pl.Float64).to_numpy()[order] for c in UI_COLUMNS}
        logger.info("pair features ready: %d users, %d items", nu, ni)

    def _item_table(self, ranked: pl.DataFrame, name: str) -> tuple[np.ndarray, np.ndarray]:
        rank = np.full(self.catalog.n_items, MISSING_RANK, np.int32)
        score = np.zeros(self.catalog.n_items, np.float64)
        i = self.catalog.item_index(ranked["item_id"])
        ok = i >= 0
        rank[i[ok]] = ranked[f"rank_{name}"].to_numpy()[ok]
        score[i[ok]] = ranked[f"score_{name}"].to_numpy()[ok]
        return rank, score

    def _group_table(self, ctx: CandidateContext, groups: pl.DataFrame, fn, name: str):
        """Per-group ranked lists computed by `fn` for one representative user of each group."""
        reps = groups.drop_nulls("group").unique("group", keep="first", maintain_order=True).sort("group")
        vocab = reps["group"].to_list()
        ranked = fn(ctx, reps.select("user_id"), self.n).join(reps, on="user_id")
        g = _codes(ranked["group"], vocab)
        i = self.catalog.item_index(ranked["item_id"])
        rank = np.full((len(vocab) + 1, self.catalog.n_items), MISSING_RANK, np.int32)
        score = np.zeros((len(vocab) + 1, self.catalog.n_items), np.float64)
        ok = i >= 0
        rank[g[ok], i[ok]] = ranked[f"rank_{name}"].to_numpy()[ok]
        score[g[ok], i[ok]] = ranked[f"score_{name}"].to_numpy()[ok]
        user_group = pl.DataFrame({"user_id": self.catalog.user_ids}).join(groups, on="user_id", how="left")
        codes = _codes(user_group["group"], vocab)
        return np.where(codes < 0, len(vocab), codes), rank, score  # last row = no group: nothing ranked

    def _coded(self, frame: pl.DataFrame, facet: str, vocab: list) -> tuple[np.ndarray, np.ndarray, pl.DataFrame]:
        u = self.catalog.user_index(frame["user_id"])
        c = _codes(frame[facet], vocab)
        keep = (u >= 0) & (c >= 0)
        return u[keep], c[keep], frame.filter(pl.Series(keep))

    def chunk_sources(self, fs: FirstStage, rows: np.ndarray, known: np.ndarray, ease: np.ndarray) -> ChunkSources:
        """cf, content and history top lists of the users `rows` (as `candidates.source_*` rank them)."""
        ni = self.catalog.n_items
        entries = {}
        # cf: EASE top-n over EASE's columns, ranked before the released filter (as `source_cf`)
        idx, vals = top_k_from_scores(ease, self.n) if ease.size else (np.zeros((0, 0), np.int64), np.zeros((0, 0)))
        cols = fs.ease_col[idx] if idx.size else idx
        vals = np.where(self.catalog.released[cols], vals, -np.inf) if idx.size else vals
        entries["cf"] = _entries(np.flatnonzero(known), cols, vals, ni)
        # content: affinity shares by facet, released items the user has any facet affinity for
        content = None
        for facet, weight in FACETS.items():
            dense = self.affinity[facet][rows].toarray()
            part = dense[:, self.item_facet[facet]] * weight  # code -1 = the zero column at the end
            content = part if content is None else content + part
        content = np.round(content, 12)  # as `source_content`: equal sums reached in another order tie exactly
        content[:, ~self.catalog.released] = 0.0
        content[content <= 0] = -np.inf
        idx, vals = exact_top_k(content, self.n)
        entries["content"] = _entries(np.arange(len(rows)), idx, vals, ni)
        # history: the user's own positive items by summed weight, best `sizes["history"]`
        hist = self.history[rows]
        counts = np.diff(hist.indptr)
        r = np.repeat(np.arange(len(rows)), counts)
        order = np.lexsort((hist.indices, -hist.data, r))
        pos = np.arange(len(order)) - np.repeat(hist.indptr[:-1], counts)
        keep = pos < self.sizes["history"]
        sel = order[keep]
        keys = r[sel].astype(np.int64) * ni + hist.indices[sel]
        o = np.argsort(keys)
        entries["history"] = (keys[o], (pos[keep] + 1).astype(np.int32)[o], hist.data[sel].astype(np.float64)[o])
        return ChunkSources(entries, ni)

    def matrix(self, src: ChunkSources, rows: np.ndarray, pr: np.ndarray, pi: np.ndarray) -> np.ndarray:
        """Feature matrix (float32, FEATURE_COLUMNS order) of the pairs (rows[pr], pi)."""
        gu = rows[pr]
        cols: dict[str, np.ndarray] = {}
        for name in SOURCES:
            if name in self.global_sources:
                r, s = self.global_sources[name]
                cols[f"rank_{name}"], cols[f"score_{name}"] = r[pi], s[pi]
            elif name in self.group_sources:
                codes, r, s = self.group_sources[name]
                g = codes[gu]
                cols[f"rank_{name}"], cols[f"score_{name}"] = r[g, pi], s[g, pi]
            else:
                cols[f"rank_{name}"], cols[f"score_{name}"] = src.lookup(name, pr, pi)
        for k, c in enumerate(ITEM_COLUMNS):
            cols[c] = self.item_matrix[pi, k]
        for k, c in enumerate(USER_COLUMNS):
            cols[c] = self.user_matrix[gu, k]
        for facet in FACETS:
            cols[f"aff_{facet}"] = self._lookup(self.affinity[facet], gu, self.item_facet[facet][pi])
        at, hit = _find(self.ui_keys, gu.astype(np.int64) * self.catalog.n_items + pi)
        for c in UI_COLUMNS:
            cols[c] = np.where(hit, self.ui[c][at], UI_FILL[c]) if len(self.ui_keys) else np.full(len(at), UI_FILL[c])
        cols["level_gap"] = self.item_level[pi] - self.user_level[gu]
        il, ul = self.item_language[pi], self.user_language[gu]
        cols["language_match"] = np.where((il < 0) | (ul < 0), np.nan, (il == ul).astype(np.float64))
        cols["n_sources"] = sum((cols[f"rank_{s}"] < MISSING_RANK).astype(np.int64) for s in SOURCES)
        out = np.empty((len(pr), len(FEATURE_COLUMNS)), np.float32)
        for k, c in enumerate(FEATURE_COLUMNS):
            out[:, k] = cols[c]
        return out

    @staticmethod
    def _lookup(matrix: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """matrix[rows, cols] element-wise (0 where absent or cols == -1)."""
        cols = np.where(cols < 0, matrix.shape[1] - 1, cols)
        return np.asarray(matrix[rows, cols]).ravel().astype(np.float64)
