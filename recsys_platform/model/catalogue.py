"""Item metadata and user facts coded on a model's vocabulary: facets, durations, release dates, the kids rule.

Every column is optional: an imported dataset without narrators or durations gets empty facets
and NaN features (LightGBM treats them as missing), not an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys_platform import schemas
from recsys_platform.model.history import DAY_S, Vocabulary
from recsys_platform.model.text import encode, item_texts

# Item text vectors with at most this share of non-zero cells are multiplied as sparse rows (`sparse_item_vectors`).
SPARSE_TEXT_SHARE = 0.05

FACETS: tuple[str, ...] = ("topic", "narrator", "content_type")


@dataclass
class Facet:
    """One categorical item column: a code per item (-1: none) and the items x values one-hot matrix."""

    codes: np.ndarray
    onehot: sp.csr_matrix

    @classmethod
    def of(cls, values: pl.Series) -> Facet:
        """Code a string column (nulls get -1 and no one-hot entry)."""
        vocab = values.drop_nulls().unique().sort()
        codes = (
            pl.DataFrame({"v": values})
            .join(
                pl.DataFrame({"v": vocab, "c": np.arange(vocab.len(), dtype=np.int64)}),
                on="v",
                how="left",
                maintain_order="left",
            )["c"]
            .fill_null(-1)
            .to_numpy()
        )
        has = codes >= 0
        onehot = sp.csr_matrix(
            (np.ones(int(has.sum()), np.float32), (np.flatnonzero(has), codes[has])),
            shape=(len(codes), max(vocab.len(), 1)),
        )
        return cls(codes, onehot)


@dataclass
class Catalogue:
    """Items and users of a vocabulary with the metadata models and rules read."""

    vocab: Vocabulary
    facets: dict[str, Facet]
    duration_min: np.ndarray  # per item, NaN when unknown
    level: np.ndarray  # per item: index in schemas.LEVELS, NaN when unknown
    type_code: np.ndarray  # per item: index in schemas.CONTENT_TYPES, NaN when unknown
    release_s: np.ndarray  # per item: release date as epoch seconds, NaN when unknown
    kids: np.ndarray  # per item: kids content
    family: np.ndarray  # per user: household with kids (the only users who get kids content)
    utc_offset_h: np.ndarray  # per user: hours from UTC to their local time (0 when unknown)
    texts: list[str]  # per item: what the text encoder embeds (title, content type, topic)
    _vectors: dict = field(default_factory=dict, repr=False, compare=False)

    def item_vectors(self, encoder: str) -> np.ndarray:
        """float32 (items, dim) unit text vectors of the items (`model.text`), encoded once per catalogue."""
        if encoder not in self._vectors:
            self._vectors[encoder] = encode(self.texts, encoder)
        return self._vectors[encoder]

    def sparse_item_vectors(self, encoder: str) -> sp.csr_matrix | None:
        """`item_vectors` as a sparse matrix when at most SPARSE_TEXT_SHARE of its cells are non-zero (hashed words),
        else None (dense embeddings); once per catalogue."""
        key = ("sparse", encoder)
        if key not in self._vectors:
            dense = self.item_vectors(encoder)
            nonzero = np.count_nonzero(dense)
            self._vectors[key] = sp.csr_matrix(dense) if nonzero <= SPARSE_TEXT_SHARE * max(dense.size, 1) else None
        return self._vectors[key]

    @classmethod
    def build(cls, vocab: Vocabulary, items: pl.DataFrame, users: pl.DataFrame) -> Catalogue:
        """Align the items and users tables (ITEM_SCHEMA / USER_SCHEMA columns, any subset) with `vocab`."""
        it = pl.DataFrame({"item_id": vocab.item_ids}).join(
            schemas.conform(items, schemas.ITEM_SCHEMA).unique("item_id", keep="last"),
            on="item_id",
            how="left",
            maintain_order="left",
        )
        us = pl.DataFrame({"user_id": vocab.user_ids}).join(
            schemas.conform(users, schemas.USER_SCHEMA).unique("user_id", keep="last"),
            on="user_id",
            how="left",
            maintain_order="left",
        )
        level = it["level"].replace_strict(
            list(schemas.LEVELS), list(range(len(schemas.LEVELS))), default=None, return_dtype=pl.Float64
        )
        ctype = it["content_type"].replace_strict(
            list(schemas.CONTENT_TYPES), list(range(len(schemas.CONTENT_TYPES))), default=None, return_dtype=pl.Float64
        )
        release = it["release_date"].cast(pl.Datetime("us")).dt.epoch("us").cast(pl.Float64) / 1e6
        return cls(
            vocab=vocab,
            facets={f: Facet.of(it[f]) for f in FACETS},
            duration_min=(it["duration_seconds"].cast(pl.Float64) / 60.0).fill_null(np.nan).to_numpy(),
            level=level.fill_null(np.nan).to_numpy(),
            type_code=ctype.fill_null(np.nan).to_numpy(),
            release_s=release.fill_null(np.nan).to_numpy(),
            kids=it["is_kids"].fill_null(False).to_numpy(),
            family=(us["household_type"] == "family_with_kids").fill_null(False).to_numpy(),
            utc_offset_h=_offsets(us),
            texts=item_texts(it["title"].to_list(), it["content_type"].to_list(), it["topic"].to_list()),
        )

    def with_users(self, vocab: Vocabulary, users: pl.DataFrame) -> Catalogue:
        """The same items for another set of users (`vocab` must hold the same items)."""
        us = pl.DataFrame({"user_id": vocab.user_ids}).join(
            schemas.conform(users, schemas.USER_SCHEMA).unique("user_id", keep="last"),
            on="user_id",
            how="left",
            maintain_order="left",
        )
        family = (us["household_type"] == "family_with_kids").fill_null(False).to_numpy()
        return Catalogue(
            vocab,
            self.facets,
            self.duration_min,
            self.level,
            self.type_code,
            self.release_s,
            self.kids,
            family,
            _offsets(us),
            self.texts,
            self._vectors,
        )

    def local_hour(self, rows: np.ndarray, epoch_s: np.ndarray) -> np.ndarray:
        """Local hour (0-23, float) of each time for the users of global rows `rows` (NaN times stay NaN)."""
        return np.mod(np.floor(epoch_s / 3600.0) + self.utc_offset_h[rows], 24.0)

    def released(self, cutoff_s: float | np.ndarray) -> np.ndarray:
        """Items released on or before the cutoff's date (unknown release dates count as released); for an
        array of cutoffs (one per user of a block), a cutoffs x items mask."""
        cut = np.asarray(cutoff_s, np.float64)
        day = cut - np.mod(cut, DAY_S)  # midnight UTC of the cutoff's date
        return ~(self.release_s > day[..., None]) if day.ndim else ~(self.release_s > day)

    def blocked_kids(self, rows: np.ndarray) -> np.ndarray:
        """block rows x items: kids items for users whose household has no kids."""
        return np.outer(~self.family[rows], self.kids)


def _offsets(users: pl.DataFrame) -> np.ndarray:
    return users["utc_offset_hours"].cast(pl.Float64).fill_null(0.0).to_numpy()
