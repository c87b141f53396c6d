"""Hidden tastes of the generator's ``tastes="latent"`` mode: factor vectors no table holds.

Each item gets a unit factor vector, partly explained by its content type, topic and narrator
(as genres explain part of a film's audience) and partly its own; each user gets a factor
vector with a latent strength, and a latent hour of day around which their sessions fall. A
user's taste for an item is ``TASTE_SCALE x (user . item)``. None of it is written to a table or
derived from a profile column, so a model can only learn it from behaviour (collaborative
filtering) or, in part, through the metadata it correlates with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

LATENT_DIM = 12
# Shares of an item's factor that its content type, topic and narrator explain; the rest is the
# item's own. About half the variance comes from metadata (0.55^2 + 0.45^2 + 0.25^2 vs 0.75^2).
FACTOR_WEIGHTS = {"content_type": 0.55, "topic": 0.45, "narrator": 0.25, "own": 0.75}
# Weight of taste against shared quality (sd 0.6) and the recency bump. Measured with
# benchmarks/synthetic_tastes.py (3000 users x 21 days, last 5 days held out, EASE l2 200 vs all-time
# popularity, nDCG@10 on new items): 1.6 gave EASE 1.18x popularity (taste barely shows), 2.5 gave
# 1.53-2.09x over seeds 1-8 (too close to 1.5 on some), 3.0 gives 1.77-2.54x over seeds 1-8, 11
# and 42, with EASE at 0.125-0.156 and popularity at 0.053-0.086: a meaningful baseline, clearly beaten.
TASTE_SCALE = 3.0
# Spread (lognormal sigma) of how strongly users follow their taste rather than what is featured.
# At 0.4 a tenth of the users completed nothing and another tenth everything (per-user completion
# rate p10/p90 0.00/1.00); at 0.15 it is 0.10-0.14/0.77-0.80, near the profile mode's 0.18/0.69.
STRENGTH_SPREAD = 0.15
# Items a user weighs per play (drawn by exposure), against 24 of one content type in profile mode;
# 64 or 128 changed the EASE/popularity ratio by less than the seeds do.
CANDIDATES = 32
# Added to every latent utility so completion, bounce and favourite rates (functions of utility)
# match the profile mode's (0.44 / 0.28 / 0.075 of plays at seed 42; latent 0.42-0.47 / 0.28-0.34 /
# 0.074-0.086 over the seeds above). It does not change which item is chosen.
UTILITY_OFFSET = -4.75
# Share of a user's sessions that fall around their habit hour (the rest anywhere in the day).
HABIT_SHARE = 0.7
_BATCH = 1 << 16  # plays scored at a time: (batch x candidates x LATENT_DIM) float32 stays ~100 MB


@dataclass(frozen=True)
class LatentTastes:
    """One user chunk's hidden tastes: internal to the generator, never written to a table."""

    item_factors: np.ndarray  # (n_items, LATENT_DIM), unit rows
    user_factors: np.ndarray  # (n_users, LATENT_DIM)
    habit_hour: np.ndarray  # (n_users,) UTC hour around which a user's sessions fall

    def affinity(self, users: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """TASTE_SCALE x (user . item) for each play's user (n_plays) and candidates (n_plays x c)."""
        out = np.empty(cand.shape, dtype=np.float64)
        for lo in range(0, len(users), _BATCH):
            u = self.user_factors[users[lo : lo + _BATCH]]
            v = self.item_factors[cand[lo : lo + _BATCH]]
            out[lo : lo + _BATCH] = np.einsum("pk,pck->pc", u, v)
        return TASTE_SCALE * out

    def session_hours(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """UTC hour (fractional) of each session of `users`: near the habit hour, or anywhere."""
        near = (self.habit_hour[users] + rng.normal(0.0, 1.5, size=len(users))) % 24.0
        return np.where(rng.random(len(users)) < HABIT_SHARE, near, rng.uniform(0.0, 24.0, size=len(users)))


def item_factors(items: pl.DataFrame, seed: int) -> np.ndarray:
    """Unit factor vectors of the catalog, correlated with content type, topic and narrator."""
    rng = np.random.default_rng([seed, 4])
    total = np.zeros((items.height, LATENT_DIM))
    for column in ("content_type", "topic", "narrator"):
        values, codes = np.unique(items[column].to_numpy(), return_inverse=True)
        centroids = rng.normal(size=(len(values), LATENT_DIM))
        total += FACTOR_WEIGHTS[column] * centroids[codes]
    total += FACTOR_WEIGHTS["own"] * rng.normal(size=total.shape)
    return (total / np.linalg.norm(total, axis=1, keepdims=True)).astype(np.float32)


def draw_latent_tastes(items: pl.DataFrame, n_users: int, seed: int, chunk: int) -> LatentTastes:
    """The hidden tastes of one chunk of `n_users` users (a function of the seed and the chunk only)."""
    rng = np.random.default_rng([seed, 5, chunk])
    # Directions are uniform; the norm (so a user's taste's weight against quality and what is
    # featured) varies mildly. A wide spread (lognormal sigma 0.4) made completion rates 0% for a
    # tenth of the users and 100% for another tenth, as no real app shows.
    direction = rng.normal(size=(n_users, LATENT_DIM))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    strength = rng.lognormal(0.0, STRENGTH_SPREAD, size=(n_users, 1))
    users = (direction * np.sqrt(LATENT_DIM) * strength).astype(np.float32)
    return LatentTastes(item_factors(items, seed), users, rng.uniform(0.0, 24.0, size=n_users))
